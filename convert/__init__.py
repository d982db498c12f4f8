"""HF moondream checkpoint -> GGUF pair: the phi2 text model and the clip "mlp" mmproj (docs/architecture.md §6; the
2025 family: §9)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gguf import GGUFValueType as T
from gguf import LlamaFileType

from moondream_cpp import gguf_check, spec
from moondream_cpp.errors import CheckpointError
from moondream_cpp.outputs import writable_dir

from . import files2025
from .checkpoint import Checkpoint, load_checkpoint
from .checkpoint2025 import checkpoint_is_2025, load_checkpoint_2025
from .checkpoint_dims import valid_name
from .gguf_out import OutTensor, atomic_path, phi2_keys, scratch_path, write_gguf
from .passthrough import restore_f32
from .quantize import MMPROJ_TYPES, TEXT_TYPES, quantize
from .tokenizer import read_vocab, vocab_keys
from .tower import plain_tensors, tower_tensors

_FILE_TYPE = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16}  # what our writer writes itself


def text_tensors(ck: Checkpoint, kind: str) -> list[OutTensor]:
    return plain_tensors(ck.tensors, dict(spec.TEXT_TENSORS) | spec.expand(spec.TEXT_BLOCK_TENSORS, ck.text.n_layer),
                         kind)


def text_keys(ck: Checkpoint, kind: str) -> list[tuple]:
    t, r = ck.text, ck.revision
    vocab = read_vocab(ck.path, t.n_vocab)
    return [
        *phi2_keys(ck.name, _FILE_TYPE[kind], t),
        *vocab_keys(vocab),
        (spec.MD_REVISION, r.name, T.STRING, None),
        (spec.MD_IMAGE_MARKERS, r.image_markers, T.BOOL, None),
        (spec.MD_ANSWER_PREFIX, r.answer_prefix, T.STRING, None),
        (spec.MD_STOP_RULE, r.stop_rule, T.STRING, None),
        (spec.MD_VISION_GELU, r.vision_gelu, T.STRING, None),
        (spec.MD_VISION_EPS, r.vision_eps, T.FLOAT32, None),
        (spec.MD_MAX_NEW_TOKENS, r.max_new_tokens, T.UINT32, None),
        (spec.MD_SOURCE, str(ck.path.resolve().name), T.STRING, None),
        ("tokenizer.chat_template", spec.chat_template(r), T.STRING, None),  # for llama.cpp's own tools
    ]


def mmproj_tensors(ck: Checkpoint, kind: str) -> list[OutTensor]:
    return tower_tensors(ck.tensors, ck.vision, spec.VISION_TENSORS, spec.VISION_BLOCK_TENSORS, kind)


def mmproj_keys(ck: Checkpoint, kind: str) -> list[tuple]:
    v = ck.vision
    return [
        ("general.name", ck.name, T.STRING, None),
        ("general.description", f"image encoder for {ck.name}", T.STRING, None),
        ("general.file_type", _FILE_TYPE[kind], T.UINT32, None),
        ("clip.has_text_encoder", False, T.BOOL, None),
        ("clip.has_vision_encoder", True, T.BOOL, None),
        ("clip.has_llava_projector", True, T.BOOL, None),
        ("clip.projector_type", "mlp", T.STRING, None),
        ("clip.use_gelu", True, T.BOOL, None),
        ("clip.vision.image_size", v.image_size, T.UINT32, None),
        ("clip.vision.patch_size", v.patch_size, T.UINT32, None),
        ("clip.vision.embedding_length", v.n_embd, T.UINT32, None),
        ("clip.vision.feed_forward_length", spec.padded_ff(v.n_ff), T.UINT32, None),
        ("clip.vision.projection_dim", v.proj_out, T.UINT32, None),
        ("clip.vision.attention.head_count", v.n_head, T.UINT32, None),
        ("clip.vision.attention.layer_norm_epsilon", ck.revision.vision_eps, T.FLOAT32, None),
        ("clip.vision.block_count", v.n_layer + 1, T.UINT32, None),
        ("clip.vision.image_mean", [0.5, 0.5, 0.5], T.ARRAY, T.FLOAT32),
        ("clip.vision.image_std", [0.5, 0.5, 0.5], T.ARRAY, T.FLOAT32),
    ]


@dataclass
class Converted:
    text: Path
    mmproj: Path


def _verify(path: Path, kind: str, expected: list[OutTensor]) -> None:
    """Read the written file back: keys and their types, tensor set, shapes (before it gets its final name)."""
    f = gguf_check.check_text(path).file if kind == "text" else gguf_check.check_mmproj(path).file
    def squeeze(shape):  # llama.cpp's quantizer drops leading size-1 dims ([1, 729, 1152] -> [729, 1152])
        shape = tuple(shape)
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        return shape

    want = {t.name: squeeze(t.shape) for t in expected}
    got = {n: squeeze(s) for n, (s, _) in f.tensors.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise CheckpointError(f"verification of {path.name} failed: tensors differ from the checkpoint, e.g. {diff}")


Progress = Callable[[str, int, "int | None"], None]  # (what, done, total or None when unknown)


def _write_one(final: Path, kind_name: str, arch: str, keys, tensors, qtype: str, on_tensor,
               on_progress: Progress | None, keep_f32: Callable[[], dict] | None = None) -> Path:
    """keep_f32: the tensors (name -> f32 array) that must stay f32 whatever llama.cpp's quantizer makes of them."""
    done = [0]

    def tick(name):
        done[0] += 1
        if on_tensor:
            on_tensor(name)
        if on_progress:
            on_progress(f"writing {final.name}", done[0], len(tensors))

    with atomic_path(final) as tmp:
        if qtype in ("f32", "f16"):
            write_gguf(tmp, arch, keys, tensors, tick)
        else:
            with scratch_path(final) as inter:  # the unquantized intermediate is never published
                write_gguf(inter, arch, keys, tensors, tick)
                if on_progress:
                    on_progress(f"quantizing {final.name} ({qtype})", 0, None)
                if keep_f32 is None:
                    quantize(inter, tmp, qtype)
                else:
                    with scratch_path(final) as quantized:
                        quantize(inter, quantized, qtype)
                        restore_f32(quantized, tmp, keep_f32())
        if on_progress:
            on_progress(f"verifying {final.name}", 0, None)
        _verify(tmp, kind_name, tensors)
    return final


def convert(checkpoint_dir: str | Path, out_dir: str | Path, text_type: str = "f16", mmproj_type: str = "f16",
            revision: str | None = None, name: str | None = None, tokenizer: str | Path | None = None,
            on_tensor: Callable[[str], None] | None = None, on_progress: Progress | None = None) -> Converted:
    """Convert an HF moondream checkpoint directory to `<name>-text-<type>.gguf` + `<name>-mmproj-<type>.gguf`.
    A 2025 checkpoint needs `revision` (one of spec2025.REVISIONS_2025); `tokenizer`: the tokenizer.json to use
    instead of the one the revision reads by default (06-21: <checkpoint>/spec2025.STARMIE_IN_CHECKPOINT)."""
    if text_type not in TEXT_TYPES:
        raise CheckpointError(f"unknown text type {text_type!r}; choose one of {', '.join(TEXT_TYPES)}")
    if mmproj_type not in MMPROJ_TYPES:
        raise CheckpointError(f"unknown mmproj type {mmproj_type!r}; choose one of {', '.join(MMPROJ_TYPES)}")
    if name is not None and not valid_name(name):
        raise CheckpointError(f"--name {name[:60]!r} is not a plain file name stem (letters, digits, '.', '_', '-', "
                              "'+')")
    is_2025 = checkpoint_is_2025(checkpoint_dir)
    if is_2025:
        ck = load_checkpoint_2025(checkpoint_dir, revision, tokenizer)
    elif tokenizer is not None:
        raise CheckpointError("--tokenizer is for 2025 checkpoints; a 2024 checkpoint's own tokenizer.json is used")
    else:
        ck = load_checkpoint(checkpoint_dir, revision)
    out_dir = writable_dir(out_dir, "-o/--out-dir")
    name = name or ck.name
    # bf16 is made from f32 (never via f16, which would round twice)
    base_t = "f32" if text_type in ("f32", "bf16") else "f16"
    base_m = "f32" if mmproj_type in ("f32", "bf16") else "f16"
    if is_2025:
        parts = (files2025.text_keys(ck, _FILE_TYPE[base_t]), files2025.text_tensors(ck, base_t),
                 files2025.mmproj_keys(ck, _FILE_TYPE[base_m]), files2025.mmproj_tensors(ck, base_m))
        keep_f32 = lambda: files2025.passthrough_arrays(ck)  # noqa: E731
    else:
        parts = (text_keys(ck, base_t), text_tensors(ck, base_t), mmproj_keys(ck, base_m), mmproj_tensors(ck, base_m))
        keep_f32 = None
    text = _write_one(out_dir / f"{name}-text-{text_type}.gguf", "text", spec.ARCH_TEXT, parts[0], parts[1],
                      text_type, on_tensor, on_progress)
    mmproj = _write_one(out_dir / f"{name}-mmproj-{mmproj_type}.gguf", "mmproj", spec.ARCH_MMPROJ, parts[2],
                        parts[3], mmproj_type, on_tensor, on_progress, keep_f32)
    return Converted(text, mmproj)
