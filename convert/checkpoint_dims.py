"""A checkpoint's dimensions, from its tensors' shapes and config.json, and the check that every tensor has the shape
they give: the converter writes only what llama.cpp can run (gguf_rules), and never trusts config.json's types."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from moondream_cpp import spec
from moondream_cpp.errors import CheckpointError

V, P = spec.VISION_PREFIX, spec.PROJECTION_PREFIX
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


@dataclass(frozen=True)
class TextDims:
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_vocab: int
    rotary_dim: int
    n_ctx: int
    eps: float


@dataclass(frozen=True)
class VisionDims:
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    patch_size: int
    image_size: int
    n_patches: int
    proj_hidden: int
    proj_out: int


def valid_name(name) -> bool:
    """A plain file-name stem: no separator, no '..', nothing a shell or a file system treats specially."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and ".." not in name


def _config_value(cfg: dict, keys: tuple[str, ...], default):
    for k in keys:
        if cfg.get(k) is not None:
            return k, cfg[k]
    return keys[0], default


def config_int(cfg: dict, keys: tuple[str, ...], default: int) -> int:
    """The first of `keys` that config.json sets, as an integer (32 and 32.0 alike); anything else is refused."""
    key, value = _config_value(cfg, keys, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"config.json: {key} is {str(value)[:40]!r}, not a whole number")
    return value


def _config_float(cfg: dict, keys: tuple[str, ...], default: float) -> float:
    key, value = _config_value(cfg, keys, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"config.json: {key} is {str(value)[:40]!r}, not a number")
    return float(value)


def _shape(tensors, name: str, ndim: int) -> tuple[int, ...]:
    shape = tensors.shape(name)
    if len(shape) != ndim:
        raise CheckpointError(f"checkpoint tensor {name} has shape {shape}; a moondream checkpoint's has {ndim} "
                              "dimensions")
    return shape


def text_dims(tensors, tcfg: dict, n_layer: int) -> TextDims:
    n_vocab, n_embd = _shape(tensors, "text_model.transformer.embd.wte.weight", 2)
    n_head = config_int(tcfg, ("n_head", "num_attention_heads"), 32)
    head = n_embd // n_head if n_head > 0 else 0
    if tcfg.get("rotary_dim") is not None:
        rotary = config_int(tcfg, ("rotary_dim",), 0)
    elif tcfg.get("partial_rotary_factor") is not None:
        rotary = int(_config_float(tcfg, ("partial_rotary_factor",), 0.5) * head)  # as HF's Phi computes it
    else:
        rotary = min(32, head)
    return TextDims(n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                    n_ff=_shape(tensors, "text_model.transformer.h.0.mlp.fc1.weight", 2)[0], n_vocab=n_vocab,
                    rotary_dim=rotary, n_ctx=config_int(tcfg, ("n_positions", "max_position_embeddings"), 2048),
                    eps=_config_float(tcfg, ("layer_norm_epsilon", "layer_norm_eps"), spec.TEXT_EPS))


def vision_dims(tensors, n_head: int, n_layer: int) -> VisionDims:
    v_embd, patch_in = _shape(tensors, V + "patch_embed.linear.weight", 2)
    patch_size = int(round(math.sqrt(patch_in / 3)))
    n_patches = _shape(tensors, V + "pos_embed", 3)[1]
    grid = int(round(math.sqrt(n_patches)))
    if 3 * patch_size * patch_size != patch_in or grid * grid != n_patches or patch_size == 0:
        raise CheckpointError(f"unexpected vision shapes: patch embedding {(v_embd, patch_in)}, {n_patches} positions")
    return VisionDims(n_embd=v_embd, n_layer=n_layer, n_head=n_head,
                      n_ff=_shape(tensors, V + "blocks.0.mlp.fc1.weight", 2)[0], patch_size=patch_size,
                      image_size=grid * patch_size, n_patches=n_patches,
                      proj_hidden=_shape(tensors, P + "fc1.weight", 2)[0],
                      proj_out=_shape(tensors, P + "fc2.weight", 2)[0])


def _expected_shapes(t: TextDims, v: VisionDims) -> dict[str, tuple[int, ...]]:
    def linear(name, rows, cols):
        return {f"{name}.weight": (rows, cols), f"{name}.bias": (rows,)}

    def norm(name, width):
        return {f"{name}.weight": (width,), f"{name}.bias": (width,)}

    out = {"text_model.transformer.embd.wte.weight": (t.n_vocab, t.n_embd), **norm("text_model.lm_head.ln", t.n_embd),
           **linear("text_model.lm_head.linear", t.n_vocab, t.n_embd)}
    for i in range(t.n_layer):
        b = f"text_model.transformer.h.{i}."
        out |= norm(b + "ln", t.n_embd) | linear(b + "mixer.Wqkv", 3 * t.n_embd, t.n_embd)
        out |= linear(b + "mixer.out_proj", t.n_embd, t.n_embd) | linear(b + "mlp.fc1", t.n_ff, t.n_embd)
        out |= linear(b + "mlp.fc2", t.n_embd, t.n_ff)
    out |= linear(V + "patch_embed.linear", v.n_embd, 3 * v.patch_size ** 2) | norm(V + "norm", v.n_embd)
    out |= {V + "pos_embed": (1, v.n_patches, v.n_embd)}
    for i in range(v.n_layer):
        b = f"{V}blocks.{i}."
        out |= norm(b + "norm1", v.n_embd) | norm(b + "norm2", v.n_embd)
        out |= linear(b + "attn.qkv", 3 * v.n_embd, v.n_embd) | linear(b + "attn.proj", v.n_embd, v.n_embd)
        out |= linear(b + "mlp.fc1", v.n_ff, v.n_embd) | linear(b + "mlp.fc2", v.n_embd, v.n_ff)
    return out | linear(P + "fc1", v.proj_hidden, v.n_embd) | linear(P + "fc2", t.n_embd, v.proj_hidden)


def check_shapes(tensors, text: TextDims, vision: VisionDims) -> None:
    """Every tensor has the shape the dimensions give (the converter slices and reshapes by them)."""
    for name, want in _expected_shapes(text, vision).items():
        got = tensors.shape(name)
        if got != want:
            raise CheckpointError(f"checkpoint tensor {name} has shape {got}, expected {want} from the model's other "
                                  "tensors: the checkpoint is inconsistent")
