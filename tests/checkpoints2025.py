"""Scaled-down 2025 moondream2 checkpoints in the real HF layout (every `model.*` tensor name of spec2025's tables),
made by the tests, and a deterministic stand-in for the 06-21 tokenizer (moondream/starmie-v1).

Weights are random but decisive, like tests/checkpoints.py: sharpened q/k so attention is far from uniform, strong
patch and position embeddings so different crops give clearly different features, and an LM head where a few hundred
ordinary tokens carry large, well separated logits while BOS/EOS/pads stay far below. f16 noise then does not flip a
greedy answer, and a structural mistake (mask, crop order, pooling) moves the logits clearly.

The vision tower keeps crop 378, patch 14 and 27 layers, so the pooled grid (crop // patch = 27) and the layer count
still coincide as upstream's code assumes; only the widths shrink.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from checkpoints import phi_tokenizer_json
from moondream_cpp import spec2025

# upstream's MoondreamConfig key names (moondream/torch/config.py), scaled down; region dim and the projector's
# output follow the text width
DIMS_2025 = {
    "text": dict(dim=80, ff_dim=320, n_layers=2, vocab_size=51200, max_context=2048, n_heads=4, n_kv_heads=4,
                 prefix_attn=spec2025.PREFIX_ROWS),
    "vision": dict(enc_dim=72, enc_patch_size=spec2025.PATCH_SIZE, enc_n_layers=27, enc_ff_dim=200, enc_n_heads=4,
                   proj_out_dim=80, crop_size=spec2025.CROP_SIZE, in_channels=3, max_crops=spec2025.MAX_CROPS,
                   overlap_margin=spec2025.OVERLAP_MARGIN, proj_inner_dim=184),
    "region": dict(dim=80, coord_feat_dim=32, coord_out_dim=1024, size_feat_dim=64, size_out_dim=2048, inner_dim=96),
}
N_STARMIE_SPECIALS = 10
STARMIE_SPECIALS = ["<|endoftext|>", "<|prompt|>", "<|/prompt|>", "<|answer|>", "<|thinking|>", "<|coord|>",
                    "<|size|>", "<|start_ground_points|>", "<|reserved_8|>", "<|end_ground|>"]


def scaled_dims(**overrides) -> dict:
    """DIMS_2025 with `<section>_<key>=value` overrides (e.g. vision_enc_n_layers=3, text_dim=96); region dim and the
    projector's output width always equal the text width."""
    dims = {s: dict(d) for s, d in DIMS_2025.items()}
    for name, value in overrides.items():
        section, _, key = name.partition("_")
        if section not in dims or key not in dims[section]:
            raise TypeError(f"unknown dimension {name!r}: use <text|vision|region>_<upstream key>")
        dims[section][key] = value
    dims["region"]["dim"] = dims["vision"]["proj_out_dim"] = dims["text"]["dim"]
    if dims["text"]["dim"] < dims["vision"]["enc_dim"]:
        raise ValueError("the text width must be >= the vision width (the mmproj pads features to the text width)")
    return dims


def make_checkpoint_2025(out: Path, revision: str = "2025-04-14", seed: int = 0, dtype: str = "f16",
                         with_starmie: bool = True, sharpen: float = 2.5, v_sharpen: float = 1.5,
                         n_candidates: int = 512, logit_scale: float = 1.0, **dims) -> Path:
    """Write config.json, model.safetensors and tokenizer.json (the checkpoint's GPT-2 one) of a small 2025 moondream2.

    For 2025-06-21 the starmie stand-in also goes to <out>/spec2025.STARMIE_IN_CHECKPOINT (where `pull` puts it)
    unless `with_starmie` is False. `dims` are `<section>_<key>` overrides of DIMS_2025."""
    rev = spec2025.REVISIONS_2025[revision]
    d = scaled_dims(**dims)
    T, Vd, R = d["text"], d["vision"], d["region"]
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rev.tokenizer == "starmie":
        if with_starmie:
            make_starmie_tokenizer((out / spec2025.STARMIE_IN_CHECKPOINT).parent)
        # candidates: merged tokens of the stand-in (after its specials and 256 byte symbols)
        pool = np.arange(N_STARMIE_SPECIALS + 256, starmie_vocab_size())
    else:
        pool = np.arange(256, 50000)  # ordinary GPT-2 tokens: no bytes, no <|endoftext|>, no CodeGen whitespace
    w: dict[str, np.ndarray] = {}

    def lin(prefix, o, i, scale=1.0):
        w[prefix + ".weight"] = rng.normal(0, scale / np.sqrt(i), (o, i))
        w[prefix + ".bias"] = rng.normal(0, 0.02, o)

    def norm(prefix, n):
        w[prefix + ".weight"] = 1.0 + rng.normal(0, 0.1, n)
        w[prefix + ".bias"] = rng.normal(0, 0.05, n)

    def sharpened_qkv(prefix, n, factor):
        lin(prefix, 3 * n, n)
        w[prefix + ".weight"][: 2 * n] *= factor  # q and k rows: peaked attention

    # vision tower
    V, p, ve = "model.vision.", Vd["enc_patch_size"], Vd["enc_dim"]
    n_patches = (Vd["crop_size"] // p) ** 2
    lin(V + "patch_emb", ve, Vd["in_channels"] * p * p, 2.0)
    w[V + "pos_emb"] = rng.normal(0, 0.5, (1, n_patches, ve))
    for i in range(Vd["enc_n_layers"]):
        b = f"{V}blocks.{i}."
        norm(b + "ln1", ve)
        sharpened_qkv(b + "attn.qkv", ve, v_sharpen)
        lin(b + "attn.proj", ve, ve)
        norm(b + "ln2", ve)
        lin(b + "mlp.fc1", Vd["enc_ff_dim"], ve, 2.0)
        lin(b + "mlp.fc2", ve, Vd["enc_ff_dim"])
    norm(V + "post_ln", ve)
    lin(V + "proj_mlp.fc1", Vd["proj_inner_dim"], 2 * ve, 2.0)
    lin(V + "proj_mlp.fc2", Vd["proj_out_dim"], Vd["proj_inner_dim"])

    # text model
    X, td, n_vocab = "model.text.", T["dim"], T["vocab_size"]
    w[X + "wte"] = rng.normal(0, 1.0, (n_vocab, td))
    for i in range(T["n_layers"]):
        b = f"{X}blocks.{i}."
        norm(b + "ln", td)
        sharpened_qkv(b + "attn.qkv", td, sharpen)
        lin(b + "attn.proj", td, td)
        lin(b + "mlp.fc1", T["ff_dim"], td, 2.0)
        lin(b + "mlp.fc2", td, T["ff_dim"])
    norm(X + "post_ln", td)
    head = rng.normal(0, 0.05, (n_vocab, td))
    bias = np.full(n_vocab, -30.0)
    cand = rng.choice(pool, min(n_candidates, len(pool)), replace=False)
    head[cand] = rng.normal(0, logit_scale, (len(cand), td))
    bias[cand] = rng.normal(0, 1.0, len(cand))
    w[X + "lm_head.weight"], w[X + "lm_head.bias"] = head, bias

    # region head (Fourier features: cos and sin halves, so the feature matrices are half as wide)
    G = "model.region."
    w[G + "coord_features"] = rng.normal(0, 1.0, (1, R["coord_feat_dim"] // 2))
    lin(G + "coord_encoder", R["dim"], R["coord_feat_dim"])
    lin(G + "coord_decoder.fc1", R["inner_dim"], R["dim"], 2.0)
    lin(G + "coord_decoder.fc2", R["coord_out_dim"], R["inner_dim"], 4.0)
    w[G + "size_features"] = rng.normal(0, 1.0, (2, R["size_feat_dim"] // 2))
    lin(G + "size_encoder", R["dim"], R["size_feat_dim"])
    lin(G + "size_decoder.fc1", R["inner_dim"], R["dim"], 2.0)
    lin(G + "size_decoder.fc2", R["size_out_dim"], R["inner_dim"], 4.0)

    _save(w, out / "model.safetensors", dtype)
    config = {
        "architectures": ["HfMoondream"],
        "auto_map": {"AutoConfig": "hf_moondream.HfConfig", "AutoModelForCausalLM": "hf_moondream.HfMoondream"},
        "config": d,
        "model_type": "moondream1",
        "torch_dtype": {"f16": "float16", "bf16": "bfloat16"}[dtype],
        "transformers_version": "4.44.0",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    # every 2025 repo still carries the 2024 GPT-2 tokenizer.json (06-21's is a leftover it does not use)
    (out / spec2025.TOKENIZER_FILE).write_text(_gpt2_tokenizer_text())
    return out


@functools.lru_cache(maxsize=1)
def _gpt2_tokenizer_text() -> str:
    return json.dumps(phi_tokenizer_json(), ensure_ascii=False)  # reading the vocabulary GGUF takes seconds


def _save(w: dict, path: Path, dtype: str) -> None:
    if dtype == "f16":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v, dtype=np.float16) for k, v in w.items()}, str(path))
    elif dtype == "bf16":
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(torch.bfloat16)
                   for k, v in w.items()}, str(path))
    else:
        raise ValueError(f"dtype must be 'f16' or 'bf16', not {dtype!r}")


# ---------------------------------------------------------------------------------------------------------------
# The starmie stand-in: byte-level BPE trained on a fixed corpus, specials at ids 0..9 as starmie has them.

_WORDS = """a an the this that these those one two three four five six seven eight nine ten some many few all no
is are was were be been being has have had do does did can could will would should may might must
and or but not with without of in on at to from by for over under above below between behind near far inside
outside up down left right top bottom middle center front back side corner edge next around through across
image picture photo scene view shows showing contains there here it its he she they them his her their we you
man woman person people child children boy girl baby dog dogs cat cats bird birds horse cow sheep car cars bus
truck bicycle bike motorcycle train plane boat ship street road sidewalk building buildings house window door
wall roof sky cloud clouds sun tree trees grass field flower flowers water river lake sea ocean beach sand snow
mountain hill rock stone table chair sofa bed desk lamp book books cup glass bottle plate bowl food pizza cake
sandwich apple banana orange fruit vegetable phone computer laptop screen keyboard mouse clock sign light
shirt hat jacket dress shoes bag umbrella ball kite frisbee skateboard surfboard racket bench fence pole
red green blue yellow white black brown gray grey pink purple orange dark bright large small big little tall
short long wide narrow old young new happy sitting standing walking running playing holding looking wearing
riding eating drinking smiling lying flying parked open closed empty full wooden metal plastic round square
what where who which how why when many much color colour number count answer question caption describe detect
point object objects thing things area part piece group pair row line several other another each every both
very quite rather just only also even still again already always never often sometimes usually together
""".split()
_PUNCT = [".", ",", "?", "!", ":", ";", "'s", " -", " (", ")", "\n", "\n\n"]


def _starmie_corpus(n_lines: int = 3000) -> list[str]:
    """Sentences drawn with a fixed linear congruential generator: the same corpus on every platform and version."""
    state, lines = 12345, []

    def nxt(n):
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        return (state >> 33) % n

    for _ in range(n_lines):
        words = [_WORDS[nxt(len(_WORDS))] for _ in range(3 + nxt(12))]
        if nxt(3) == 0:
            words[0] = words[0].capitalize()
        if nxt(5) == 0:
            words.insert(nxt(len(words)), str(nxt(2000)))
        lines.append(" ".join(words) + _PUNCT[nxt(len(_PUNCT))])
    return lines


def starmie_tokenizer_json(vocab_size: int = 3000) -> str:
    """The stand-in's tokenizer.json text (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=STARMIE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_starmie_corpus(), trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=1)
def _starmie_text() -> str:
    return starmie_tokenizer_json()


def starmie_vocab_size() -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_starmie_text()).get_vocab_size(with_added_tokens=True)


def make_starmie_tokenizer(out_dir: Path) -> Path:
    """Write the stand-in as <out_dir>/tokenizer.json and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec2025.TOKENIZER_FILE
    path.write_text(_starmie_text())
    return path
