"""Scaled-down moondream checkpoints with every real tensor name (docs/architecture.md §1.5), made by the tests.

Weights are random but decisive: sharpened q/k so attention is far from uniform, and an LM head whose top-1 logit
stands clear of the rest, so a structural mistake moves the answer and numerical noise does not.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from safetensors.numpy import save_file

from moondream_cpp import spec
from vocab import gpt2_vocab

# CodeGen/phi-1.5 add runs of spaces (31..2) and tabs (9..2) after <|endoftext|>: ids 50257..50294
WHITESPACE_TOKENS = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]


def phi_tokenizer_json(vocab_gguf: Path | None = None) -> dict:
    """A phi-1.5-like tokenizer.json: the real GPT-2 vocabulary and merges plus CodeGen's whitespace tokens."""
    r = GGUFReader(vocab_gguf or gpt2_vocab())
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    vocab = {t: i for i, t in enumerate(tokens) if t != spec.BOS_TOKEN}
    added = [dict(id=50256, content=spec.BOS_TOKEN, single_word=False, lstrip=False, rstrip=False, normalized=False,
                  special=True)]
    added += [dict(id=50257 + i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=True,
                   special=False) for i, t in enumerate(WHITESPACE_TOKENS)]
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=True)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                      fuse_unk=False, byte_fallback=False, vocab=vocab, merges=merges),
    }


def make_checkpoint(out: Path, layout: str = "2024-04-02", seed: int = 0, v_embd: int = 128, v_layers: int = 3,
                    v_heads: int = 4, image_size: int = 112, t_embd: int = 256, t_layers: int = 2, t_heads: int = 4,
                    sharpen: float = 2.5, v_sharpen: float = 1.5, n_candidates: int = 512, logit_scale: float = 1.0,
                    tokenizer: dict | None = None, dtype=np.float16) -> Path:
    """Write config.json, model.safetensors and tokenizer.json of a small moondream in the real HF layout."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or phi_tokenizer_json()
    n_real = max([*tok["model"]["vocab"].values(), *(a["id"] for a in tok["added_tokens"])]) + 1
    n_vocab = -(-n_real // 64) * 64  # padded to a multiple of 64 like phi
    patch = 14
    n_pos = (image_size // patch) ** 2
    # the vision MLP like SigLIP's 4304 = 1152 * 3.75 - 16: a multiple of 16 but not of 32, so the converter's
    # padding is exercised (drawn 3.75x wide, then cut, so every other tensor keeps its random values)
    v_draw, t_ff = int(v_embd * 3.75), 4 * t_embd
    v_ff = v_draw - 16

    def lin(o, i, scale=1.0):
        return rng.normal(0, scale / np.sqrt(i), (o, i)), rng.normal(0, 0.02, o)

    w = {}

    def put(prefix, o, i, scale=1.0):
        w[prefix + ".weight"], w[prefix + ".bias"] = lin(o, i, scale)

    def norm(prefix, d):
        w[prefix + ".weight"] = 1.0 + rng.normal(0, 0.1, d)
        w[prefix + ".bias"] = rng.normal(0, 0.05, d)

    V = spec.VISION_PREFIX
    put(V + "patch_embed.linear", v_embd, 3 * patch * patch, 2.0)
    w[V + "pos_embed"] = rng.normal(0, 0.5, (1, n_pos, v_embd))
    for i in range(v_layers):
        b = f"{V}blocks.{i}."
        norm(b + "norm1", v_embd)
        qkv, qkv_b = lin(3 * v_embd, v_embd)
        qkv[: 2 * v_embd] *= v_sharpen
        w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"] = qkv, qkv_b
        put(b + "attn.proj", v_embd, v_embd)
        norm(b + "norm2", v_embd)
        put(b + "mlp.fc1", v_draw, v_embd, 2.0)
        put(b + "mlp.fc2", v_embd, v_draw)
        for name, cut in (("fc1.weight", np.s_[:v_ff]), ("fc1.bias", np.s_[:v_ff]), ("fc2.weight", np.s_[:, :v_ff])):
            w[b + "mlp." + name] = w[b + "mlp." + name][cut]
    norm(V + "norm", v_embd)
    put(spec.PROJECTION_PREFIX + "fc1", 4 * t_embd, v_embd, 2.0)
    put(spec.PROJECTION_PREFIX + "fc2", t_embd, 4 * t_embd)

    w["text_model.transformer.embd.wte.weight"] = rng.normal(0, 1.0, (n_vocab, t_embd))
    for i in range(t_layers):
        b = f"text_model.transformer.h.{i}."
        norm(b + "ln", t_embd)
        qkv, qkv_b = lin(3 * t_embd, t_embd)
        qkv[: 2 * t_embd] *= sharpen
        w[b + "mixer.Wqkv.weight"], w[b + "mixer.Wqkv.bias"] = qkv, qkv_b
        put(b + "mixer.out_proj", t_embd, t_embd)
        put(b + "mlp.fc1", t_ff, t_embd, 2.0)
        put(b + "mlp.fc2", t_embd, t_ff)
    norm("text_model.lm_head.ln", t_embd)
    # LM head: a few hundred ordinary tokens carry large, well separated logits; the rest (BOS/EOS, pads) stay far below
    head = rng.normal(0, 0.05, (n_vocab, t_embd))
    bias = np.full(n_vocab, -30.0)
    pool = np.arange(256, min(50000, n_real)) if n_real > 1000 else np.arange(n_real - 1)  # ordinary tokens only
    n_candidates = min(n_candidates, len(pool))
    cand = rng.choice(pool, n_candidates, replace=False)
    head[cand] = rng.normal(0, logit_scale, (n_candidates, t_embd))
    bias[cand] = rng.normal(0, 1.0, n_candidates)
    w["text_model.lm_head.linear.weight"], w["text_model.lm_head.linear.bias"] = head, bias

    save_file({k: np.ascontiguousarray(v, dtype=dtype) for k, v in w.items()}, str(out / "model.safetensors"))
    if layout == "moondream1":  # phi-msft style config, as the 2024-02-06 release
        text_cfg = dict(model_type="phi-msft", n_embd=t_embd, n_head=t_heads, n_layer=t_layers, n_inner=None,
                        rotary_dim=min(32, t_embd // t_heads), n_positions=2048, layer_norm_epsilon=1e-5,
                        vocab_size=n_vocab)
        config = dict(_name_or_path="vikhyatk/moondream1", model_type="moondream1", phi_config=text_cfg)
    else:  # HF Phi style config, as moondream2 2024-03-05 .. 2024-04-02
        text_cfg = dict(model_type="phi", hidden_size=t_embd, num_attention_heads=t_heads,
                        num_hidden_layers=t_layers, intermediate_size=t_ff, partial_rotary_factor=0.5,
                        max_position_embeddings=2048, layer_norm_eps=1e-5, vocab_size=n_vocab)
        config = dict(model_type="moondream1", phi_config=text_cfg, moondream_revision=layout)
    config["vision_config"] = dict(num_heads=v_heads)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    return out


def byte_tokenizer_json() -> dict:
    """The smallest GPT-2 style tokenizer: the 256 byte symbols and <|endoftext|>, no merges."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["\u0120t"] = len(vocab)  # one merge ("Ġ t"): llama.cpp's BPE needs at least one
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=True)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [dict(id=len(vocab), content=spec.BOS_TOKEN, single_word=False, lstrip=False, rstrip=False,
                              normalized=False, special=True)],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                      fuse_unk=False, byte_fallback=False, vocab=vocab, merges=["\u0120 t"]),
    }
