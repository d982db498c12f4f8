"""A full-size moondream1-shaped HF checkpoint with random weights, for speed and memory measurements (speed does
not depend on weight values). Every tensor has its real name and shape (docs/architecture.md §1.5); the file is
streamed to disk one tensor at a time, so making 3.7 GB of fp16 takes little memory."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .. import spec

VISION = dict(width=1152, blocks=27, heads=16, ff=4304, image=378, patch=14)
TEXT = dict(width=2048, layers=24, heads=32, ff=8192, vocab=51200, ctx=2048)


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    v, t = VISION, TEXT
    V, P = spec.VISION_PREFIX, spec.PROJECTION_PREFIX
    d, n_pos = v["width"], (v["image"] // v["patch"]) ** 2
    out = {V + "patch_embed.linear.weight": (d, 3 * v["patch"] ** 2), V + "patch_embed.linear.bias": (d,),
           V + "pos_embed": (1, n_pos, d)}
    for i in range(v["blocks"]):
        b = f"{V}blocks.{i}."
        out.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                    b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                    b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (v["ff"], d),
                    b + "mlp.fc1.bias": (v["ff"],), b + "mlp.fc2.weight": (d, v["ff"]), b + "mlp.fc2.bias": (d,)})
    out.update({V + "norm.weight": (d,), V + "norm.bias": (d,), P + "fc1.weight": (4 * t["width"], d),
                P + "fc1.bias": (4 * t["width"],), P + "fc2.weight": (t["width"], 4 * t["width"]),
                P + "fc2.bias": (t["width"],)})
    w = t["width"]
    out["text_model.transformer.embd.wte.weight"] = (t["vocab"], w)
    for i in range(t["layers"]):
        b = f"text_model.transformer.h.{i}."
        out.update({b + "ln.weight": (w,), b + "ln.bias": (w,), b + "mixer.Wqkv.weight": (3 * w, w),
                    b + "mixer.Wqkv.bias": (3 * w,), b + "mixer.out_proj.weight": (w, w),
                    b + "mixer.out_proj.bias": (w,),
                    b + "mlp.fc1.weight": (t["ff"], w), b + "mlp.fc1.bias": (t["ff"],),
                    b + "mlp.fc2.weight": (w, t["ff"]), b + "mlp.fc2.bias": (w,)})
    out.update({"text_model.lm_head.ln.weight": (w,), "text_model.lm_head.ln.bias": (w,),
                "text_model.lm_head.linear.weight": (t["vocab"], w), "text_model.lm_head.linear.bias": (t["vocab"],)})
    return out


def _values(name: str, shape: tuple[int, ...], rng) -> np.ndarray:
    if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "ln.weight")):
        return np.ones(shape, np.float16)
    if len(shape) == 1:
        return np.zeros(shape, np.float16)
    fan_in = shape[-1]
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float16)


def byte_bpe_tokenizer(n_merges: int = 50000) -> dict:
    """A GPT-2-shaped byte-level BPE (256 byte symbols, n_merges two-symbol merges, <|endoftext|> = 50256)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    for a in alphabet:
        for b in alphabet:
            if len(merges) == n_merges:
                break
            vocab[a + b] = len(vocab)
            merges.append(f"{a} {b}")
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=True)
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [dict(id=len(vocab), content=spec.BOS_TOKEN, single_word=False, lstrip=False,
                                  rstrip=False, normalized=False, special=True)],
            "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
            "model": dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                          fuse_unk=False, byte_fallback=False, vocab=vocab, merges=merges)}


def write_checkpoint(out: Path, seed: int = 0) -> Path:
    """config.json, model.safetensors (fp16, streamed) and tokenizer.json of a random full-size moondream1."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes()
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    tmp = out / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in shapes.items():
            f.write(_values(name, shape, rng).tobytes())
    tmp.replace(out / "model.safetensors")
    t = TEXT
    config = {"model_type": "moondream1", "moondream_revision": "moondream1",
              "phi_config": {"model_type": "phi-msft", "n_embd": t["width"], "n_head": t["heads"],
                             "n_layer": t["layers"], "n_inner": None, "rotary_dim": 32, "n_positions": t["ctx"],
                             "layer_norm_epsilon": 1e-5, "vocab_size": t["vocab"]},
              "vision_config": {"num_heads": VISION["heads"]}}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "tokenizer.json").write_text(json.dumps(byte_bpe_tokenizer(), ensure_ascii=False))
    return out


def n_params() -> int:
    return sum(int(np.prod(s)) for s in tensor_shapes().values())
