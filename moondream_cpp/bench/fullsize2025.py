"""A 2025 moondream2 checkpoint with random weights in the real HF layout (every `model.*` name of spec2025's
tables, shapes from the converter's own table), for speed and memory measurements (speed does not depend on weight
values). Full size by default: config.json's "config" is empty, as upstream's is, so its MoondreamConfig defaults
apply (1,927,335,408 parameters, 3.9 GB of f16). Written one tensor at a time, so making it takes little memory."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..convert.dims2025 import dims_from_config, expected_shapes
from .fullsize import byte_bpe_tokenizer

REVISION = "2025-04-14"  # the newest revision with the GPT-2 tokenizer: no starmie download needed


def tensor_shapes(sections: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor's shape (torch order) for config.json's "config" `sections` (None: full size)."""
    return expected_shapes(dims_from_config({"config": sections or {}}))


def _values(name: str, shape: tuple[int, ...], rng) -> np.ndarray:
    """LayerNorm weights 1, biases 0, matrices N(0, 1/fan_in): activations stay in range through every layer."""
    if name.endswith(("ln.weight", "ln1.weight", "ln2.weight")):
        return np.ones(shape, np.float16)
    if len(shape) == 1:
        return np.zeros(shape, np.float16)
    fan_in = shape[-1]
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float16)


def write_checkpoint(out: Path, sections: dict | None = None, seed: int = 0) -> Path:
    """config.json, model.safetensors (f16, streamed: one tensor in memory at a time) and tokenizer.json (a GPT-2
    shaped byte-level BPE, <|endoftext|> = 50256, as the GPT-2 revisions use) of a random 2025 moondream2."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(sections)
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
    config = {"architectures": ["HfMoondream"], "model_type": "moondream1", "torch_dtype": "float16",
              "transformers_version": "4.44.0", "config": sections or {}}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "tokenizer.json").write_text(json.dumps(byte_bpe_tokenizer(), ensure_ascii=False))
    return out


def n_params(sections: dict | None = None) -> int:
    return sum(int(np.prod(s)) for s in tensor_shapes(sections).values())


def load_weights(path: Path, dtype) -> dict:
    """model.safetensors (F16) as torch tensors of `dtype`, read one tensor at a time with plain reads: the peak is
    the model at `dtype`, not that plus a second copy or a mapped file (which would count in the process's RSS)."""
    import torch

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] != "F16":
                raise ValueError(f"{path}: {name} is {entry['dtype']}; the bench's checkpoints are F16")
            a, b = entry["data_offsets"]
            f.seek(base + a)
            values = np.frombuffer(f.read(b - a), np.float16).reshape(entry["shape"])
            out[name] = torch.from_numpy(values.copy()).to(dtype)
    return out
