"""Seeded mutations of a GGUF header (scripts/gguf_bytes.py): keys' values and types, added and dropped keys, counts,
type codes and lengths, tensor shapes, types, offsets and names, consistent and inconsistent alike.

`mutate(rng, g, arch)` changes `g` in place and says what it did, in a line that reproduces by seed.
"""
from __future__ import annotations

import math
import random

from gguf import GGML_QUANT_SIZES
from gguf import GGUFValueType as T

from gguf_bytes import GGUF, KV, SCALAR, Raw, Tensor, nbytes

INTS = [0, 1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 64, 127, 128, 255, 256, 511, 512, 1024, 4096, 65535, 65536,
        2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -1]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-12, 1e-6, 1e30, -1e30, 3.4e38, math.inf, -math.inf, math.nan]
STRINGS = ["", "bogus", "mlp", "linear", "yarn", "none", "longrope", "gpt2", "llama", "bert", "phi-2", "default",
           "eos", "end_marker", "2024-03-13", "Answer: ", "x" * 10000]
# keys llama.cpp reads under an architecture's name (src/llama-arch.cpp, a sample) and mtmd reads for clip
ARCH_KEYS = ["expert_count", "expert_used_count", "expert_group_count", "nextn_predict_layers", "vocab_size",
             "embedding_length_out", "attention.key_length", "attention.value_length", "attention.causal",
             "attention.sliding_window", "attention.max_alibi_bias", "attention.clamp_kqv", "pooling_type",
             "rope.scaling.type", "rope.scaling.factor", "rope.scaling.attn_factor", "rope.scale_linear",
             "rope.scaling.original_context_length", "rope.dimension_sections", "rope.freq_base_swa",
             "logit_scale", "attention.layer_norm_rms_epsilon", "use_parallel_residual", "leading_dense_block_count"]
CLIP_KEYS = ["clip.has_audio_encoder", "clip.has_minicpmv_projector", "clip.minicpmv_version", "clip.use_silu",
             "clip.vision.feature_layer", "clip.vision.image_grid_pinpoints", "clip.vision.mm_patch_merge_type",
             "clip.vision.spatial_merge_size", "clip.vision.n_wa_pattern", "clip.vision.attention.head_count_kv",
             "clip.vision.projector.scale_factor", "clip.vision.embedding_head_length", "clip.audio.embedding_length",
             "clip.vision.projector_type", "clip.has_gen_audio_encoder"]
OTHER_KEYS = [("general.alignment", T.UINT32), ("tokenizer.ggml.scores", T.ARRAY), ("split.count", T.UINT16),
              ("tokenizer.ggml.padding_token_id", T.UINT32), ("tokenizer.ggml.add_space_prefix", T.BOOL),
              ("tokenizer.ggml.token_type_count", T.UINT32), ("general.file_type", T.UINT32)]
TYPES = [t for t in T if t != T.ARRAY]


def _number(rng: random.Random, vtype: int, old=None):
    if vtype in (T.FLOAT32, T.FLOAT64):
        pool = FLOATS + ([old * 2, -old, old + 1] if isinstance(old, float) and math.isfinite(old) else [])
        return rng.choice(pool)
    if vtype == T.BOOL:
        return rng.choice([True, False, Raw(bytes([rng.choice([2, 255])]))])
    pool = INTS + ([old + 1, old - 1, old * 2, old // 2, old * 100] if isinstance(old, int) else [])
    return rng.choice(pool)


def _scalar(rng: random.Random, vtype: int, old=None):
    if vtype == T.STRING:
        pool = STRINGS + ([old + "x", old[:-1], old.upper()] if isinstance(old, str) and old else [])
        return rng.choice(pool + [Raw(b"\x05\x00\x00\x00\x00\x00\x00\x00\xff\xfe\x80ab")])  # not UTF-8
    return _number(rng, vtype, old)


def _array(rng: random.Random, kv: KV) -> str:
    items = list(kv.value)
    how = rng.choice(["empty", "shorter", "longer", "one", "one", "duplicate", "element type", "huge count"])
    if how == "empty":
        items = []
    elif how == "shorter" and items:
        items = items[: rng.randrange(len(items))]
    elif how == "longer":
        items = items + items[: rng.randint(1, 3)] if items else [_scalar(rng, kv.sub)]
    elif how == "one" and items:
        i = rng.randrange(len(items))
        items[i] = _scalar(rng, kv.sub, items[i])
        how = f"item {i} = {_show(items[i])}"
    elif how == "duplicate" and len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        items[i] = items[j]
        how = f"item {i} = item {j}"
    elif how == "element type":
        kv.sub = rng.choice(list(T) + [13, 255])
        if kv.sub not in SCALAR and kv.sub != T.STRING:  # arrays of arrays, unknown codes: 3 items of 8 bytes
            kv.value = Raw(int(kv.sub).to_bytes(4, "little") + (3).to_bytes(8, "little") + bytes(24))
            return f"array of element type {kv.sub}"
        items = [_scalar(rng, kv.sub) for _ in range(min(len(items), 4) or 1)]
        how = f"element type {T(kv.sub).name}"
    elif how == "huge count":
        kv.value = Raw(int(kv.sub).to_bytes(4, "little") + rng.choice([2**31, 2**40, 2**64 - 1]).to_bytes(8, "little"))
        return "array count huge"
    kv.value = items
    return f"array {how} ({len(items)} items)"


def _show(v) -> str:
    s = repr(v)
    return s if len(s) < 40 else s[:37] + "..."


def m_value(rng, g: GGUF, arch) -> str:
    kv = rng.choice(g.kvs)
    if kv.vtype == T.ARRAY:
        return f"{kv.key}: {_array(rng, kv)}"
    kv.value = _scalar(rng, kv.vtype, kv.value)
    return f"{kv.key} = {_show(kv.value)}"


def m_type(rng, g: GGUF, arch) -> str:
    kv = rng.choice(g.kvs)
    vtype = rng.choice(TYPES)
    kv.vtype, kv.sub = vtype, None
    kv.value = _scalar(rng, vtype, None)
    return f"{kv.key} as {T(vtype).name} = {_show(kv.value)}"


def m_add_key(rng, g: GGUF, arch) -> str:
    if arch == "clip":
        key, vtype = rng.choice(CLIP_KEYS), rng.choice([T.BOOL, T.UINT32, T.INT32, T.UINT8, T.STRING, T.ARRAY])
    elif rng.random() < 0.7:
        key, vtype = f"{arch}.{rng.choice(ARCH_KEYS)}", rng.choice([T.UINT32, T.UINT32, T.FLOAT32, T.STRING, T.BOOL])
    else:
        key, vtype = rng.choice(OTHER_KEYS)
    if vtype == T.ARRAY:
        sub = rng.choice([T.INT32, T.FLOAT32, T.UINT32])
        value = [_number(rng, sub) for _ in range(rng.choice([0, 1, 2, 3, 5]))]
        g.set(key, vtype, value, sub)
        return f"add {key} = {T(sub).name}{_show(value)}"
    value = _scalar(rng, vtype)
    g.set(key, vtype, value)
    return f"add {key} as {T(vtype).name} = {_show(value)}"


def m_drop_key(rng, g: GGUF, arch) -> str:
    kv = g.kvs.pop(rng.randrange(len(g.kvs)))
    return f"drop {kv.key}"


def m_structure(rng, g: GGUF, arch) -> str:
    how = rng.choice(["n_kv", "n_tensors", "value type", "string length", "key length", "version", "duplicate key",
                      "empty key", "cut", "trailing bytes", "alignment"])
    if how in ("n_kv", "n_tensors"):
        n = len(g.kvs) if how == "n_kv" else len(g.tensors)
        setattr(g, how, rng.choice([0, n - 1, n + 1, 2**31, 2**63, 2**64 - 1]))
        return f"{how} = {getattr(g, how)}"
    if how == "value type":
        kv = rng.choice(g.kvs)
        kv.vtype = rng.choice([13, 14, 99, 2**31])
        kv.value = Raw(bytes(8))
        return f"{kv.key} of value type {kv.vtype}"
    if how == "string length":
        kv = rng.choice([kv for kv in g.kvs if kv.vtype == T.STRING])
        kv.value = Raw(rng.choice([2**31, 2**40, 2**64 - 1, 10**8]).to_bytes(8, "little") + b"abc")
        return f"{kv.key}: string length huge"
    if how == "key length":
        kv = rng.choice(g.kvs)
        kv.key = Raw(rng.choice([2**32, 2**63, 10**9]).to_bytes(8, "little") + b"key")
        return "a key's length huge"
    if how == "version":
        g.version = rng.choice([0, 1, 2, 4, 2**31, 2**32 - 1])
        return f"version {g.version}"
    if how == "duplicate key":
        kv = rng.choice(g.kvs)
        g.kvs.append(KV(kv.key, kv.vtype, kv.value, kv.sub))
        return f"{kv.key} twice"
    if how == "empty key":
        g.kvs.append(KV("", T.UINT32, 1))
        return "an empty key"
    if how == "cut":
        g.cut = rng.randrange(len(g.data) // 2 + 4096)
        return f"file cut at byte {g.cut}"
    if how == "trailing bytes":
        g.tail = bytes(rng.randrange(1, 100))
        return f"{len(g.tail)} bytes after the data"
    value = rng.choice([0, 1, 3, 8, 16, 64, 4096, 2**31])
    vtype = rng.choice([T.UINT32, T.UINT32, T.UINT64, T.INT32])
    g.set("general.alignment", vtype, value)
    if rng.random() < 0.5:
        g.relayout()
        return f"general.alignment = {value} as {T(vtype).name}, laid out for it"
    return f"general.alignment = {value} as {T(vtype).name}"


def m_tensor(rng, g: GGUF, arch) -> str:
    t = rng.choice(g.tensors)
    how = rng.choice(["dim", "dim", "dims", "type", "type", "offset", "rename", "drop", "copy"])
    consistent = rng.random() < 0.5  # laid out again for the change, so only the change itself is wrong
    contents = g.tensor_bytes()
    if how == "dim":
        i = rng.randrange(len(t.ne))
        t.ne[i] = rng.choice([0, 1, t.ne[i] - 1, t.ne[i] + 1, t.ne[i] * 2, max(1, t.ne[i] // 2), 2**31, 2**62])
        what = f"{t.name} ne[{i}] = {t.ne[i]}"
    elif how == "dims":
        t.ne = t.ne + [1] if rng.random() < 0.5 and len(t.ne) < 5 else (t.ne[:-1] or [1, 1, 1, 1, 1])
        what = f"{t.name} shape {t.ne}"
    elif how == "type":
        t.ttype = rng.choice(list(range(43)) + [43, 99, 2**31])
        what = f"{t.name} of type {t.ttype}"
    elif how == "offset":
        t.offset = rng.choice([0, t.offset + 32, max(0, t.offset - 32), t.offset + 1, 2**40, 2**64 - 1])
        return f"{t.name} at offset {t.offset}"
    elif how == "rename":
        t.name = rng.choice(["v.class_embd", "v.pre_ln.weight", "blk.99.ffn_up.weight", "unknown", "x" * 70,
                             rng.choice(g.tensors).name, "mm.1.weight", "blk.0.attn_q.weight", "output.weight"])
        contents[t.name] = contents.get(t.name, b"")
        what = f"a tensor renamed {t.name[:40]}"
    elif how == "drop":
        g.tensors.remove(t)
        what = f"drop {t.name}"
    else:
        g.tensors.insert(rng.randrange(len(g.tensors) + 1), Tensor(t.name, list(t.ne), t.ttype, t.offset))
        what = f"{t.name} twice"
    if consistent and nbytes(t.ne, t.ttype) < 1 << 26:
        g.relayout(contents)
        what += ", laid out for it"
    return what


def m_fewer_blocks(rng, g: GGUF, arch) -> str:
    """A consistent smaller model: one block fewer, its tensors gone (should load and answer)."""
    key = "phi2.block_count" if arch == "phi2" else "clip.vision.block_count"
    kv = g.kv(key)
    if kv is None or not isinstance(kv.value, int) or kv.value < 2:
        return m_value(rng, g, arch)
    kv.value -= 1
    prefix = f"blk.{kv.value}." if arch == "phi2" else f"v.blk.{kv.value}."
    contents = g.tensor_bytes()
    g.tensors = [t for t in g.tensors if not str(t.name).startswith(prefix)]
    g.relayout(contents)
    return f"{key} = {kv.value}, its last block's tensors dropped"


def m_retype_consistently(rng, g: GGUF, arch) -> str:
    """A tensor stored in another type, laid out for it (bytes of random content)."""
    t = rng.choice(g.tensors)
    types = [q for q in GGML_QUANT_SIZES if t.ne and t.ne[0] % GGML_QUANT_SIZES[q][0] == 0]
    t.ttype = int(rng.choice(types))
    contents = g.tensor_bytes()
    contents[t.name] = rng.randbytes(nbytes(t.ne, t.ttype))
    g.relayout(contents)
    return f"{t.name} stored as {t.ttype} (random bytes)"


MUTATIONS = [m_value] * 4 + [m_type, m_add_key, m_add_key, m_drop_key, m_structure, m_tensor, m_tensor,
                             m_fewer_blocks, m_retype_consistently]


def mutate(rng: random.Random, g: GGUF, arch: str) -> str:
    return rng.choice(MUTATIONS)(rng, g, arch)
