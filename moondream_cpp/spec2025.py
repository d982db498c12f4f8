"""The one table of facts about the 2025 moondream2 family (2025-01-09 .. 2025-06-21): revisions, prompt templates as
token ids, sampling, checkpoint tensor names and our GGUF names and keys. docs/architecture.md §9 explains them.

The 2025 checkpoints differ from 2024's in everything around the same two networks: multi-crop vision reconstructed
and pooled into a 2304-wide projector, prefix attention (BOS + the image rows attend both ways), templates given as
token ids, and a region head (detect/point). config.json does not say the revision: the converter is told it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gguf import GGUFValueType as T

# ---------------------------------------------------------------------------------------------------------------
# Vision geometry (upstream config defaults; the test checkpoints keep crop 378 and patch 14, so the grid is 27).
CROP_SIZE = 378
PATCH_SIZE = 14
MAX_CROPS = 12  # upstream's default; --max-crops lowers it (a departure from the reference, documented)
OVERLAP_MARGIN = 4  # patches cut from each inner side of a local crop
# the prefix evaluated with bidirectional attention: BOS + one row per patch of the pooled grid
PREFIX_ROWS = 1 + (CROP_SIZE // PATCH_SIZE) ** 2

# ---------------------------------------------------------------------------------------------------------------
# Revisions. Templates are token ids, as upstream writes them; `text` goes where the user's words go.

GPT2_CAPTIONS = {"short": (198, 198, 16438, 8305, 25), "normal": (198, 198, 24334, 1159, 25),
                 "long": (198, 198, 14617, 8305, 25)}  # "\n\nShort caption:", "\n\nCaption:", "\n\nLong caption:"
STARMIE_CAPTIONS = {"short": (1, 32708, 2, 12492, 3), "normal": (1, 32708, 2, 6382, 3),
                    "long": (1, 32708, 2, 4059, 3)}


@dataclass(frozen=True)
class Template:
    """ids before the user's text, then the text (with a leading space when `space`), then ids after."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    space: bool


@dataclass(frozen=True)
class Revision2025:
    name: str
    tokenizer: str  # "gpt2": the checkpoint's own GPT-2/CodeGen BPE; "starmie": moondream/starmie-v1 (tokenizers)
    bos: int
    eos: int
    captions: dict  # length -> ids (the whole prompt after the image prefix)
    query: Template
    detect: Template
    point: Template
    temperature: float  # query/caption sampling defaults; detect/point are always greedy
    top_p: float
    max_tokens: int
    size_bins: str  # "linear": bin/1024; "log2": 2^(10*bin/1023 - 10)
    masked: tuple[int, ...] = ()  # logits forced to -inf at every answer step
    max_objects: int = 50
    family: str = field(default="2025", init=False)


def _gpt2(name, space, temperature, top_p, max_tokens, bins, lengths):
    return Revision2025(
        name, "gpt2", 50256, 50256, {k: GPT2_CAPTIONS[k] for k in lengths},
        Template((198, 198, 24361, 25), (198, 198, 33706, 25), space),  # "\n\nQuestion:" q "\n\nAnswer:"
        Template((198, 198, 47504, 25), (628,), space),  # "\n\nDetect:" obj "\n\n"
        Template((198, 198, 12727, 25), (628,), space),  # "\n\nPoint:" obj "\n\n"
        temperature, top_p, max_tokens, bins)


REVISIONS_2025 = {
    r.name: r
    for r in [
        _gpt2("2025-01-09", False, 0.0, 1.0, 512, "linear", ("short", "normal")),
        _gpt2("2025-03-27", True, 0.0, 1.0, 768, "log2", ("short", "normal", "long")),
        _gpt2("2025-04-14", True, 0.5, 0.3, 768, "log2", ("short", "normal", "long")),
        # 06-21: the answer token 3 appears twice after a question (upstream appends [3] to a list ending in 3, and
        # the model was trained so); answers never emit it (masked)
        Revision2025("2025-06-21", "starmie", 0, 0, dict(STARMIE_CAPTIONS),
                     Template((1, 15381, 2), (3, 3), False),
                     Template((1, 7235, 476, 2), (3,), True),
                     Template((1, 2581, 2), (3,), True),
                     0.5, 0.3, 768, "log2", masked=(3,)),
    ]
}
NEWEST_2025 = "2025-06-21"
STARMIE_REPO = "moondream/starmie-v1"  # the 06-21 tokenizer's hub repo (not in the model repo)
TOKENIZER_FILE = "tokenizer.json"
# where `pull` puts the starmie tokenizer.json inside a downloaded 06-21 checkpoint, and the converter looks for it
# (the checkpoint's own tokenizer.json is the 2024 GPT-2 one, left over in the repo)
STARMIE_IN_CHECKPOINT = "starmie-v1/tokenizer.json"

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint tensor names (HfMoondream keeps the network in `model`). "{i}" is a block index.
TEXT_TENSORS = {
    "model.text.wte": "token_embd.weight",
    "model.text.post_ln.weight": "output_norm.weight",
    "model.text.post_ln.bias": "output_norm.bias",
    "model.text.lm_head.weight": "output.weight",
    "model.text.lm_head.bias": "output.bias",
}
TEXT_BLOCK_TENSORS = {
    "model.text.blocks.{i}.ln.weight": "blk.{i}.attn_norm.weight",
    "model.text.blocks.{i}.ln.bias": "blk.{i}.attn_norm.bias",
    "model.text.blocks.{i}.attn.qkv.weight": "blk.{i}.attn_qkv.weight",
    "model.text.blocks.{i}.attn.qkv.bias": "blk.{i}.attn_qkv.bias",
    "model.text.blocks.{i}.attn.proj.weight": "blk.{i}.attn_output.weight",
    "model.text.blocks.{i}.attn.proj.bias": "blk.{i}.attn_output.bias",
    "model.text.blocks.{i}.mlp.fc1.weight": "blk.{i}.ffn_up.weight",
    "model.text.blocks.{i}.mlp.fc1.bias": "blk.{i}.ffn_up.bias",
    "model.text.blocks.{i}.mlp.fc2.weight": "blk.{i}.ffn_down.weight",
    "model.text.blocks.{i}.mlp.fc2.bias": "blk.{i}.ffn_down.bias",
}
# the vision tower goes to the same clip names as 2024's (spec.VISION_TENSORS): fc1/fc2 under clip's legacy names
VISION_TENSORS = {
    "model.vision.patch_emb.weight": "v.patch_embd.weight",
    "model.vision.patch_emb.bias": "v.patch_embd.bias",
    "model.vision.pos_emb": "v.position_embd.weight",
    "model.vision.post_ln.weight": "v.post_ln.weight",
    "model.vision.post_ln.bias": "v.post_ln.bias",
}
VISION_BLOCK_TENSORS = {
    "model.vision.blocks.{i}.ln1.weight": "v.blk.{i}.ln1.weight",
    "model.vision.blocks.{i}.ln1.bias": "v.blk.{i}.ln1.bias",
    "model.vision.blocks.{i}.attn.qkv.weight": ("v.blk.{i}.attn_q.weight", "v.blk.{i}.attn_k.weight",
                                                "v.blk.{i}.attn_v.weight"),
    "model.vision.blocks.{i}.attn.qkv.bias": ("v.blk.{i}.attn_q.bias", "v.blk.{i}.attn_k.bias",
                                              "v.blk.{i}.attn_v.bias"),
    "model.vision.blocks.{i}.attn.proj.weight": "v.blk.{i}.attn_out.weight",
    "model.vision.blocks.{i}.attn.proj.bias": "v.blk.{i}.attn_out.bias",
    "model.vision.blocks.{i}.ln2.weight": "v.blk.{i}.ln2.weight",
    "model.vision.blocks.{i}.ln2.bias": "v.blk.{i}.ln2.bias",
    "model.vision.blocks.{i}.mlp.fc1.weight": "v.blk.{i}.ffn_down.weight",
    "model.vision.blocks.{i}.mlp.fc1.bias": "v.blk.{i}.ffn_down.bias",
    "model.vision.blocks.{i}.mlp.fc2.weight": "v.blk.{i}.ffn_up.weight",
    "model.vision.blocks.{i}.mlp.fc2.bias": "v.blk.{i}.ffn_up.bias",
}
# Stored in the mmproj beside clip's tensors (clip loads only the names it asks for); the runtime reads them.
PROJECTOR_TENSORS = {
    "model.vision.proj_mlp.fc1.weight": "md.proj.fc1.weight",
    "model.vision.proj_mlp.fc1.bias": "md.proj.fc1.bias",
    "model.vision.proj_mlp.fc2.weight": "md.proj.fc2.weight",
    "model.vision.proj_mlp.fc2.bias": "md.proj.fc2.bias",
}
REGION_TENSORS = {
    "model.region.coord_features": "md.region.coord_features",
    "model.region.coord_encoder.weight": "md.region.coord_encoder.weight",
    "model.region.coord_encoder.bias": "md.region.coord_encoder.bias",
    "model.region.coord_decoder.fc1.weight": "md.region.coord_decoder.fc1.weight",
    "model.region.coord_decoder.fc1.bias": "md.region.coord_decoder.fc1.bias",
    "model.region.coord_decoder.fc2.weight": "md.region.coord_decoder.fc2.weight",
    "model.region.coord_decoder.fc2.bias": "md.region.coord_decoder.fc2.bias",
    "model.region.size_features": "md.region.size_features",
    "model.region.size_encoder.weight": "md.region.size_encoder.weight",
    "model.region.size_encoder.bias": "md.region.size_encoder.bias",
    "model.region.size_decoder.fc1.weight": "md.region.size_decoder.fc1.weight",
    "model.region.size_decoder.fc1.bias": "md.region.size_decoder.fc1.bias",
    "model.region.size_decoder.fc2.weight": "md.region.size_decoder.fc2.weight",
    "model.region.size_decoder.fc2.bias": "md.region.size_decoder.fc2.bias",
}
# clip's "mlp" projector, set up to hand out the vision features unchanged (docs/architecture.md §9.2): mm.0 = I with
# a per-channel bias that lifts every value past 10, where GELU is the identity in every ggml backend, mm.2 = [I; 0]
# with the bias taken off again; both f32 so no rounding to f16 happens on the way
PASSTHROUGH_TENSORS = ("mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias")

# ---------------------------------------------------------------------------------------------------------------
# Our GGUF keys for the 2025 family (the 2024 keys of spec.py stay as they are).
MD_FAMILY = "moondream.family"  # "2025" (absent in 2024 files)
MD_TOKENIZER_KIND = "moondream.tokenizer.kind"  # "gpt2" or "starmie"
MD_TOKENIZER_JSON = "moondream.tokenizer.json"  # starmie: the whole tokenizer.json (the tokenizers library reads it)
MD_PREFIX_ROWS = "moondream.prefix_attention_rows"  # 730: BOS + the image rows, evaluated non-causally
MD_MAX_CROPS = "moondream.vision.max_crops"
MD_OVERLAP_MARGIN = "moondream.vision.overlap_margin"
MD_FEATURE_LENGTH = "moondream.vision.feature_length"  # the tower's width: the mmproj's output rows carry it first
MD_PASSTHROUGH = "moondream.vision.passthrough"  # True: mm.0/mm.2 hand out features, md.proj.* projects
TEXT_KEYS_2025 = {MD_FAMILY: T.STRING, MD_TOKENIZER_KIND: T.STRING, MD_TOKENIZER_JSON: T.STRING,
                  MD_PREFIX_ROWS: T.UINT32}
MMPROJ_KEYS_2025 = {MD_FAMILY: T.STRING, "moondream.revision": T.STRING, MD_MAX_CROPS: T.UINT32,
                    MD_OVERLAP_MARGIN: T.UINT32, MD_FEATURE_LENGTH: T.UINT32, MD_PASSTHROUGH: T.BOOL}


def query_ids(rev: Revision2025, text_ids, template: Template | None = None) -> list[int]:
    """The prompt after the image prefix: the template around the user's token ids (tokenized with the template's
    leading-space rule by the caller: see `template_text`)."""
    t = template or rev.query
    return [*t.before, *text_ids, *t.after]


def template_text(template: Template, text: str) -> str:
    return " " + text if template.space else text
