"""The one table of facts about moondream checkpoints: revisions, prompt formats, stop rules, names, GGUF keys.

Every other module reads names and formats from here; docs/architecture.md explains them (§1-§6).
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGUFValueType as T

from .errors import MoondreamError

BOS_TOKEN = "<|endoftext|>"
IMAGE_MARKERS = ("<image>", "</image>")  # BPE text around the image, early revisions (docs/architecture.md §4.2)
END_MARKER = "<END>"  # early revisions end answers with this text (docs/architecture.md §5, P8)
QUESTION_FORMAT = "Question: {question}\n\n"
TURN_FORMAT = "Question: {question}\n\nAnswer: {answer}\n\n"  # one past turn of chat history (MD@948fa7f)
CAPTION_QUESTIONS = {  # moondream1/2 of 2024 have no caption head: captions are questions
    "short": "Describe this image in one sentence.",
    "normal": "Describe this image.",
}


def caption_question(length: str, what: str = "caption length") -> str:
    """The question that asks for a caption of `length`; the one place that checks a caption length (`what`: how the
    caller's user names the setting, e.g. "--length")."""
    if length not in CAPTION_QUESTIONS:
        raise MoondreamError(f"{what} must be one of {', '.join(CAPTION_QUESTIONS)}, not {length!r}"
                             + ("; the 2024 models have no long captions" if length == "long" else ""))
    return CAPTION_QUESTIONS[length]


def chat_template(rev: "Revision") -> str:
    """A Jinja chat template (tokenizer.chat_template) that renders OpenAI messages as this revision was trained, for
    llama.cpp's own llama-server / llama-mtmd-cli: the image first (wherever the client put it), the earlier turns as
    history, then the question. llama.cpp replaces an image part by a media marker "<__media...__>" inside the
    content text; BOS comes from the tokenizer (add_bos_token), not from the template."""
    before, after = (IMAGE_MARKERS if rev.image_markers else ("", ""))
    return (
        "{%- set ns = namespace(img='', hist='', q='') -%}"
        "{%- for m in messages -%}"
        "{%- set c = m['content'] if m['content'] is string else '' -%}"
        "{%- if '<__media' in c -%}"
        "{%- set rest = c.split('<__media')[1] -%}"
        "{%- set ns.img = '<__media' ~ rest.split('__>')[0] ~ '__>' -%}"
        "{%- set c = c.split('<__media')[0] ~ rest.split('__>')[1] -%}"
        "{%- endif -%}"
        "{%- if m['role'] == 'user' -%}{%- set ns.q = (ns.q ~ ' ' ~ c) | trim -%}"
        "{%- elif m['role'] == 'assistant' -%}"
        "{%- set ns.hist = ns.hist ~ 'Question: ' ~ ns.q ~ '\n\nAnswer: ' ~ (c | trim) ~ '\n\n' -%}"
        "{%- set ns.q = '' -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{before}{{{{ ns.img }}}}{after}\n\n{{{{ ns.hist }}}}Question: {{{{ ns.q }}}}\n\n{rev.answer_prefix}"
    )


@dataclass(frozen=True)
class Revision:
    """What a given checkpoint revision was trained with (docs/architecture.md §2, §4, §5)."""

    name: str
    image_markers: bool  # "<image>" ... "</image>" around the image embeddings
    answer_prefix: str  # "Answer: " (trailing space) or "Answer:"
    stop_rule: str  # "end_marker": stop on any token of "<END>"; "eos": stop on <|endoftext|>
    vision_gelu: str  # "erf" (timm nn.GELU) or "tanh"
    vision_eps: float
    max_new_tokens: int


REVISIONS = {
    r.name: r
    for r in [
        Revision("moondream1", True, "Answer: ", "end_marker", "erf", 1e-6, 256),
        Revision("2024-03-04", True, "Answer: ", "end_marker", "erf", 1e-6, 256),
        Revision("2024-03-06", True, "Answer: ", "end_marker", "erf", 1e-6, 512),
        Revision("2024-03-13", False, "Answer:", "end_marker", "erf", 1e-6, 512),
        Revision("2024-04-02", False, "Answer:", "eos", "tanh", 1e-5, 512),
        Revision("2024-05-08", False, "Answer:", "eos", "tanh", 1e-5, 512),
    ]
}
# Files without our metadata (the published vikhyatk/moondream2 GGUF pair) use the 2024-04 prompt format.
DEFAULT_REVISION = "2024-04-02"
TEXT_EPS = 1e-5
ROPE_BASE = 10000.0

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint tensor names (docs/architecture.md §1.5). "{i}" is a block index.
VISION_PREFIX = "vision_encoder.encoder.model.visual."
PROJECTION_PREFIX = "vision_encoder.projection.mlp."
# Layouts llama.cpp cannot run faithfully, with the reason given to the user.
REFUSED_TENSORS = {
    "vision_encoder.model.projection.mlp1.fc1.weight": "the January-2024 moondream1 projector (mlp1 -> LayerNorm -> "
    "x + mlp2(x)) has no llama.cpp equivalent",
    "vision_encoder.projection.mlp1.fc1.weight": "the January-2024 moondream1 projector (mlp1 -> LayerNorm -> "
    "x + mlp2(x)) has no llama.cpp equivalent",
}

# HF name -> GGUF name, text model (arch phi2, docs/architecture.md §6.1)
TEXT_TENSORS = {
    "text_model.transformer.embd.wte.weight": "token_embd.weight",
    "text_model.lm_head.ln.weight": "output_norm.weight",
    "text_model.lm_head.ln.bias": "output_norm.bias",
    "text_model.lm_head.linear.weight": "output.weight",
    "text_model.lm_head.linear.bias": "output.bias",
}
TEXT_BLOCK_TENSORS = {
    "text_model.transformer.h.{i}.ln.weight": "blk.{i}.attn_norm.weight",
    "text_model.transformer.h.{i}.ln.bias": "blk.{i}.attn_norm.bias",
    "text_model.transformer.h.{i}.mixer.Wqkv.weight": "blk.{i}.attn_qkv.weight",
    "text_model.transformer.h.{i}.mixer.Wqkv.bias": "blk.{i}.attn_qkv.bias",
    "text_model.transformer.h.{i}.mixer.out_proj.weight": "blk.{i}.attn_output.weight",
    "text_model.transformer.h.{i}.mixer.out_proj.bias": "blk.{i}.attn_output.bias",
    "text_model.transformer.h.{i}.mlp.fc1.weight": "blk.{i}.ffn_up.weight",
    "text_model.transformer.h.{i}.mlp.fc1.bias": "blk.{i}.ffn_up.bias",
    "text_model.transformer.h.{i}.mlp.fc2.weight": "blk.{i}.ffn_down.weight",
    "text_model.transformer.h.{i}.mlp.fc2.bias": "blk.{i}.ffn_down.bias",
}

# HF name -> GGUF name, vision tower + projector (arch clip, projector "mlp", docs/architecture.md §6.3).
# qkv is split into thirds; fc1/fc2 use clip's legacy names (ffn_down = FIRST fc), which every mtmd build reads.
VISION_TENSORS = {
    VISION_PREFIX + "patch_embed.linear.weight": "v.patch_embd.weight",
    VISION_PREFIX + "patch_embed.linear.bias": "v.patch_embd.bias",
    VISION_PREFIX + "pos_embed": "v.position_embd.weight",
    VISION_PREFIX + "norm.weight": "v.post_ln.weight",
    VISION_PREFIX + "norm.bias": "v.post_ln.bias",
    PROJECTION_PREFIX + "fc1.weight": "mm.0.weight",
    PROJECTION_PREFIX + "fc1.bias": "mm.0.bias",
    PROJECTION_PREFIX + "fc2.weight": "mm.2.weight",
    PROJECTION_PREFIX + "fc2.bias": "mm.2.bias",
}
VISION_BLOCK_TENSORS = {
    VISION_PREFIX + "blocks.{i}.norm1.weight": "v.blk.{i}.ln1.weight",
    VISION_PREFIX + "blocks.{i}.norm1.bias": "v.blk.{i}.ln1.bias",
    VISION_PREFIX + "blocks.{i}.attn.qkv.weight": ("v.blk.{i}.attn_q.weight", "v.blk.{i}.attn_k.weight",
                                                   "v.blk.{i}.attn_v.weight"),
    VISION_PREFIX + "blocks.{i}.attn.qkv.bias": ("v.blk.{i}.attn_q.bias", "v.blk.{i}.attn_k.bias",
                                                 "v.blk.{i}.attn_v.bias"),
    VISION_PREFIX + "blocks.{i}.attn.proj.weight": "v.blk.{i}.attn_out.weight",
    VISION_PREFIX + "blocks.{i}.attn.proj.bias": "v.blk.{i}.attn_out.bias",
    VISION_PREFIX + "blocks.{i}.norm2.weight": "v.blk.{i}.ln2.weight",
    VISION_PREFIX + "blocks.{i}.norm2.bias": "v.blk.{i}.ln2.bias",
    VISION_PREFIX + "blocks.{i}.mlp.fc1.weight": "v.blk.{i}.ffn_down.weight",
    VISION_PREFIX + "blocks.{i}.mlp.fc1.bias": "v.blk.{i}.ffn_down.bias",
    VISION_PREFIX + "blocks.{i}.mlp.fc2.weight": "v.blk.{i}.ffn_up.weight",
    VISION_PREFIX + "blocks.{i}.mlp.fc2.bias": "v.blk.{i}.ffn_up.bias",
}


# SigLIP's MLP is 4304 wide, a multiple of 16 but not of 32: its fc2 rows could take no 32-block quant (q8_0 kept
# them f16) and ggml's fast bf16 matmul (llamafile's, 32 columns a step) skipped them for a slow dot product loop.
# The mmproj pads the width with zero rows of fc1 (bias 0, GELU(0) = 0) and zero columns of fc2: the same outputs.
VISION_FF_MULTIPLE = 32


def padded_ff(n_ff: int) -> int:
    return -(-n_ff // VISION_FF_MULTIPLE) * VISION_FF_MULTIPLE


def expand(table: dict, n_blocks: int) -> dict:
    """Per-block table -> concrete names for blocks 0..n_blocks-1."""
    out = {}
    for i in range(n_blocks):
        for hf, gg in table.items():
            out[hf.format(i=i)] = tuple(g.format(i=i) for g in gg) if isinstance(gg, tuple) else gg.format(i=i)
    return out


# ---------------------------------------------------------------------------------------------------------------
# GGUF metadata keys and the exact type llama.cpp reads each with (a wrong type aborts the process in clip).
ARCH_TEXT = "phi2"
ARCH_MMPROJ = "clip"
TEXT_KEYS = {
    "general.architecture": T.STRING,
    "general.name": T.STRING,
    "general.file_type": T.UINT32,
    "phi2.context_length": T.UINT32,
    "phi2.embedding_length": T.UINT32,
    "phi2.feed_forward_length": T.UINT32,
    "phi2.block_count": T.UINT32,
    "phi2.attention.head_count": T.UINT32,
    "phi2.attention.head_count_kv": T.UINT32,
    "phi2.attention.layer_norm_epsilon": T.FLOAT32,
    "phi2.rope.dimension_count": T.UINT32,
    "phi2.rope.freq_base": T.FLOAT32,
    "tokenizer.ggml.model": T.STRING,
    "tokenizer.ggml.pre": T.STRING,
    "tokenizer.ggml.tokens": T.ARRAY,
    "tokenizer.ggml.token_type": T.ARRAY,
    "tokenizer.ggml.merges": T.ARRAY,
    "tokenizer.ggml.bos_token_id": T.UINT32,
    "tokenizer.ggml.eos_token_id": T.UINT32,
    "tokenizer.ggml.unknown_token_id": T.UINT32,
    "tokenizer.ggml.add_bos_token": T.BOOL,
    "tokenizer.ggml.add_eos_token": T.BOOL,
    "tokenizer.chat_template": T.STRING,
}
# Keys every text file must have (the published file lacks tokenizer.ggml.pre and our moondream.* keys).
TEXT_REQUIRED = ["general.architecture", "phi2.context_length", "phi2.embedding_length", "phi2.feed_forward_length",
                 "phi2.block_count", "phi2.attention.head_count", "phi2.rope.dimension_count",
                 "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"]

MMPROJ_KEYS = {
    "general.architecture": T.STRING,
    "general.name": T.STRING,
    "general.description": T.STRING,
    "general.file_type": T.UINT32,
    "clip.has_text_encoder": T.BOOL,
    "clip.has_vision_encoder": T.BOOL,
    "clip.has_llava_projector": T.BOOL,
    "clip.projector_type": T.STRING,
    "clip.use_gelu": T.BOOL,
    "clip.use_silu": T.BOOL,
    "clip.vision.image_size": T.UINT32,
    "clip.vision.patch_size": T.UINT32,
    "clip.vision.embedding_length": T.UINT32,
    "clip.vision.feed_forward_length": T.UINT32,
    "clip.vision.projection_dim": T.UINT32,
    "clip.vision.attention.head_count": T.UINT32,
    "clip.vision.attention.layer_norm_epsilon": T.FLOAT32,
    "clip.vision.block_count": T.UINT32,
    "clip.vision.image_mean": T.ARRAY,
    "clip.vision.image_std": T.ARRAY,
    "clip.vision.feature_layer": T.ARRAY,
}
MMPROJ_REQUIRED = ["general.architecture", "clip.has_vision_encoder", "clip.projector_type", "clip.vision.image_size",
                   "clip.vision.patch_size", "clip.vision.embedding_length", "clip.vision.feed_forward_length",
                   "clip.vision.projection_dim", "clip.vision.attention.head_count",
                   "clip.vision.attention.layer_norm_epsilon", "clip.vision.block_count",
                   "clip.vision.image_mean", "clip.vision.image_std"]

# Our own keys in the text file: what the runtime needs to prompt and stop like the source revision.
MD_REVISION = "moondream.revision"
MD_IMAGE_MARKERS = "moondream.prompt.image_markers"
MD_ANSWER_PREFIX = "moondream.prompt.answer_prefix"
MD_STOP_RULE = "moondream.stop_rule"
MD_VISION_GELU = "moondream.vision.gelu"
MD_VISION_EPS = "moondream.vision.layer_norm_epsilon"
MD_MAX_NEW_TOKENS = "moondream.max_new_tokens"
MD_SOURCE = "moondream.source"
MOONDREAM_KEYS = {
    MD_REVISION: T.STRING,
    MD_IMAGE_MARKERS: T.BOOL,
    MD_ANSWER_PREFIX: T.STRING,
    MD_STOP_RULE: T.STRING,
    MD_VISION_GELU: T.STRING,
    MD_VISION_EPS: T.FLOAT32,
    MD_MAX_NEW_TOKENS: T.UINT32,
    MD_SOURCE: T.STRING,
}
TEXT_KEYS.update(MOONDREAM_KEYS)


def revision_of_file(rev: Revision, keys: dict) -> Revision:
    """The revision a GGUF file states in our metadata keys; they win over the table (`rev`: the table's entry)."""
    if MD_IMAGE_MARKERS not in keys:
        return rev
    return Revision(rev.name, bool(keys[MD_IMAGE_MARKERS]), keys.get(MD_ANSWER_PREFIX, rev.answer_prefix),
                    keys.get(MD_STOP_RULE, rev.stop_rule), keys.get(MD_VISION_GELU, rev.vision_gelu), rev.vision_eps,
                    int(keys.get(MD_MAX_NEW_TOKENS, rev.max_new_tokens)))
