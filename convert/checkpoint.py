"""Read an HF moondream checkpoint directory lazily: config, revision, dimensions and memory-mapped tensors."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moondream_cpp import spec
from moondream_cpp.errors import CheckpointError

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class SafetensorsFiles:
    """Tensors of one or more .safetensors shards, each a read-only np.memmap view (nothing is read up front)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, str, list[int], int, int]] = {}
        for f in files:
            with open(f, "rb") as fh:
                raw = fh.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{f} is not a safetensors file (too short)")
                (n,) = struct.unpack("<Q", raw)
                if n > 100_000_000 or n > f.stat().st_size - 8:
                    raise CheckpointError(f"{f} is not a valid safetensors file (bad header length)")
                try:
                    header = json.loads(fh.read(n))
                except ValueError as e:
                    raise CheckpointError(f"{f} has a corrupt safetensors header: {e}") from None
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in _ST_DTYPES:
                    raise CheckpointError(f"{f}: tensor {name} has unsupported dtype {info['dtype']}")
                start, end = info["data_offsets"]
                if base + end > f.stat().st_size:
                    raise CheckpointError(f"{f} is truncated: tensor {name} ends past the end of the file")
                self._where[name] = (f, info["dtype"], info["shape"], base + start, end - start)

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][2])

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (a fresh array; the memmap view is dropped right after)."""
        shape = self.shape(name)
        return self.get_rows(name, 0, shape[0] if shape else 1).reshape(shape)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the tensor's first dimension as float32, flat; only those bytes are mapped and read."""
        path, dtype, shape, offset, nbytes = self._where[name]
        row = math.prod(shape[1:]) if len(shape) > 1 else 1
        item = np.dtype(_ST_DTYPES[dtype]).itemsize
        count = (stop - start) * row
        if count == 0:
            return np.zeros(0, np.float32)
        raw = np.memmap(path, dtype=_ST_DTYPES[dtype], mode="r", offset=offset + start * row * item, shape=(count,))
        if dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        del raw
        return out


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


@dataclass
class Checkpoint:
    path: Path
    config: dict
    tensors: SafetensorsFiles
    revision: spec.Revision
    text: TextDims
    vision: VisionDims

    @property
    def name(self) -> str:
        return self.config.get("moondream_name") or self.path.resolve().name


def _shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({path / f for f in weight_map.values()})
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(f"{path} holds PyTorch pickle weights (.bin/.pt); moondream-cpp reads only safetensors "
                              "checkpoints (the moondream1 2024-02-06 and moondream2 2024 releases are safetensors).")
    raise CheckpointError(f"no model.safetensors in {path}: point to an HF moondream checkpoint directory")


def _text_config(config: dict) -> dict:
    for key in ("text_config", "phi_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return {}


def detect_revision(config: dict, override: str | None = None) -> spec.Revision:
    """The checkpoint's revision: the caller's choice, our config key, or what config.json proves; never a guess."""
    choices = ", ".join(spec.REVISIONS)
    name = override or config.get("moondream_revision")
    if name is None:
        if isinstance(config.get("text_config"), dict):
            name = "2024-05-08"  # phi_config was renamed text_config in MD@3346cd7, just before 2024-05-08
        elif "moondream1" in str(config.get("_name_or_path", "")):
            name = "moondream1"
    if name is None:
        raise CheckpointError("cannot tell which moondream revision this checkpoint is (its config.json does not say). "
                              f"Pass --revision, one of: {choices}")
    if name not in spec.REVISIONS:
        raise CheckpointError(f"unknown revision {name!r}; known revisions: {choices}")
    return spec.REVISIONS[name]


def _check_names(names: set[str], n_vision: int, n_text: int) -> None:
    expected = set(spec.TEXT_TENSORS) | set(spec.VISION_TENSORS)
    expected |= set(spec.expand(spec.TEXT_BLOCK_TENSORS, n_text))
    expected |= set(spec.expand(spec.VISION_BLOCK_TENSORS, n_vision))
    missing = sorted(expected - names)
    unknown = sorted(names - expected)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}: "
                              "it is incomplete or not a moondream checkpoint")
    if unknown:
        raise CheckpointError(f"checkpoint has {len(unknown)} tensor(s) moondream-cpp does not know, e.g. "
                              f"{unknown[:3]}: converting would silently drop them, so it refuses")


def _count_blocks(names: set[str], prefix: str) -> int:
    n = 0
    while any(s.startswith(f"{prefix}{n}.") for s in names):
        n += 1
    return n


def load_checkpoint(path: str | Path, revision: str | None = None) -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory: point to an HF moondream checkpoint directory")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"no config.json in {path}: is this an HF moondream checkpoint directory?")
    try:
        config = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    tensors = SafetensorsFiles(_shards(path))
    names = set(tensors.names())
    for bad, why in spec.REFUSED_TENSORS.items():
        if bad in names:
            raise CheckpointError(f"this checkpoint uses {why}; use the 2024-02-06 moondream1 or a 2024-03..05 "
                                  "moondream2 release")
    if any(n.startswith("vision_encoder.model.") or n.startswith("text_model.model.") for n in names):
        raise CheckpointError("this is the January-2024 moondream1 layout (vision_encoder.model.*), whose projector "
                              "llama.cpp cannot run; use the 2024-02-06 moondream1 release")
    if not names & set(spec.VISION_TENSORS):
        raise CheckpointError("no moondream vision tensors in this checkpoint (expected names like "
                              f"{next(iter(spec.VISION_TENSORS))}); later moondream2 formats are not supported")
    rev = detect_revision(config, revision)

    n_vision = _count_blocks(names, spec.VISION_PREFIX + "blocks.")
    n_text = _count_blocks(names, "text_model.transformer.h.")
    # multi-crop revisions (>= 2024-05-20) feed the projector 2 x vision width
    fc1_name = spec.PROJECTION_PREFIX + "fc1.weight"
    fc1 = tensors.shape(fc1_name) if fc1_name in names else None
    patch = tensors.shape(spec.VISION_PREFIX + "patch_embed.linear.weight")
    if fc1 is not None and fc1[1] == 2 * patch[0]:
        raise CheckpointError("this is a multi-crop moondream2 revision (2024-05-20 or later, projector input "
                              f"{fc1[1]} = 2 x {patch[0]}); a single llama.cpp mmproj cannot run it. "
                              "Use the 2024-05-08 or an earlier revision")
    _check_names(names, n_vision, n_text)

    v_embd, patch_in = patch
    patch_size = int(round(math.sqrt(patch_in / 3)))
    n_patches = tensors.shape(spec.VISION_PREFIX + "pos_embed")[-2]
    grid = int(round(math.sqrt(n_patches)))
    if 3 * patch_size * patch_size != patch_in or grid * grid != n_patches:
        raise CheckpointError(f"unexpected vision shapes: patch embedding {patch}, {n_patches} positions")
    vcfg = config.get("vision_config", {}) or {}
    vision = VisionDims(
        n_embd=v_embd,
        n_layer=n_vision,
        n_head=int(vcfg.get("num_heads", 16)),
        n_ff=tensors.shape(spec.VISION_PREFIX + "blocks.0.mlp.fc1.weight")[0],
        patch_size=patch_size,
        image_size=grid * patch_size,
        n_patches=n_patches,
        proj_hidden=fc1[0],
        proj_out=tensors.shape(spec.PROJECTION_PREFIX + "fc2.weight")[0],
    )
    if v_embd % vision.n_head:
        raise CheckpointError(f"vision width {v_embd} is not divisible by {vision.n_head} heads")

    tcfg = _text_config(config)
    n_vocab, n_embd = tensors.shape("text_model.transformer.embd.wte.weight")
    n_head = int(tcfg.get("n_head", tcfg.get("num_attention_heads", 32)))
    if n_embd % n_head:
        raise CheckpointError(f"text width {n_embd} is not divisible by {n_head} heads (config.json)")
    head_dim = n_embd // n_head
    if "rotary_dim" in tcfg:
        rotary = int(tcfg["rotary_dim"])
    elif "partial_rotary_factor" in tcfg:
        rotary = int(float(tcfg["partial_rotary_factor"]) * head_dim)
    else:
        rotary = min(32, head_dim)
    text = TextDims(
        n_embd=n_embd,
        n_layer=n_text,
        n_head=n_head,
        n_ff=tensors.shape("text_model.transformer.h.0.mlp.fc1.weight")[0],
        n_vocab=n_vocab,
        rotary_dim=rotary,
        n_ctx=int(tcfg.get("n_positions", tcfg.get("max_position_embeddings", 2048))),
        eps=float(tcfg.get("layer_norm_epsilon", tcfg.get("layer_norm_eps", spec.TEXT_EPS))),
    )
    if vision.proj_out != text.n_embd:
        raise CheckpointError(f"projector output width {vision.proj_out} != text width {text.n_embd}")
    return Checkpoint(path, config, tensors, rev, text, vision)
