"""What a 2025 checkpoint becomes (docs/architecture.md §9): the phi2 text GGUF with our 2025 keys and its tokenizer,
and the clip mmproj: the vision tower mapped as 2024's, the pass-through projector, the 2304-wide projector
(md.proj.*) and the region head (md.region.*) as extra tensors the runtime reads with numpy."""
from __future__ import annotations

import numpy as np
from gguf import GGUFValueType as T

from moondream_cpp import spec, spec2025
from moondream_cpp.errors import CheckpointError

from . import passthrough
from .checkpoint2025 import Checkpoint2025
from .gguf_out import OutTensor, phi2_keys
from .tokenizer import read_vocab, vocab_keys
from .tokenizer_starmie import read_starmie
from .tower import plain_tensors, tower_tensors


def text_tensors(ck: Checkpoint2025, kind: str) -> list[OutTensor]:
    names = dict(spec2025.TEXT_TENSORS) | spec.expand(spec2025.TEXT_BLOCK_TENSORS, ck.text.n_layer)
    return plain_tensors(ck.tensors, names, kind)


def tokenizer_keys(ck: Checkpoint2025) -> list[tuple]:
    rev, n_vocab = ck.revision, ck.text.n_vocab
    if rev.tokenizer == "starmie":
        vocab, text = read_starmie(ck.tokenizer, n_vocab, rev.bos)
        return [*vocab_keys(vocab, pre="default"), (spec2025.MD_TOKENIZER_JSON, text, T.STRING, None)]
    vocab = read_vocab(ck.path, n_vocab, ck.tokenizer)
    if vocab.bos_id != rev.bos:
        raise CheckpointError(f"{ck.tokenizer}: {spec.BOS_TOKEN} has id {vocab.bos_id}, but revision {rev.name} "
                              f"uses {rev.bos}: it is not this revision's tokenizer")
    return vocab_keys(vocab)


def text_keys(ck: Checkpoint2025, file_type) -> list[tuple]:
    t, r = ck.text, ck.revision
    return [
        *phi2_keys(ck.name, file_type, t),
        *tokenizer_keys(ck),
        (spec.MD_REVISION, r.name, T.STRING, None),
        (spec2025.MD_FAMILY, r.family, T.STRING, None),
        (spec2025.MD_TOKENIZER_KIND, r.tokenizer, T.STRING, None),
        (spec2025.MD_PREFIX_ROWS, ck.dims.prefix_rows, T.UINT32, None),
        # the 2024 keys the runtime and the checks read: templates are token ids now (spec2025), answers end at EOS
        (spec.MD_IMAGE_MARKERS, False, T.BOOL, None),
        (spec.MD_STOP_RULE, "eos", T.STRING, None),
        (spec.MD_VISION_GELU, "tanh", T.STRING, None),
        (spec.MD_VISION_EPS, ck.text.eps, T.FLOAT32, None),
        (spec.MD_MAX_NEW_TOKENS, r.max_tokens, T.UINT32, None),
        (spec.MD_SOURCE, str(ck.path.resolve().name), T.STRING, None),
    ]


def passthrough_arrays(ck: Checkpoint2025) -> dict[str, np.ndarray]:
    return passthrough.tensors(ck.tensors.get("model.vision.post_ln.weight"),
                               ck.tensors.get("model.vision.post_ln.bias"), ck.text.n_embd)


def mmproj_tensors(ck: Checkpoint2025, kind: str) -> list[OutTensor]:
    arrays = passthrough_arrays(ck)
    mm = [OutTensor(name, a.shape, np.float32, lambda a=a: a) for name, a in arrays.items()]
    extra = plain_tensors(ck.tensors, spec2025.PROJECTOR_TENSORS | spec2025.REGION_TENSORS, kind)
    tower = tower_tensors(ck.tensors, ck.vision, spec2025.VISION_TENSORS, spec2025.VISION_BLOCK_TENSORS, kind)
    return tower + mm + extra


def mmproj_keys(ck: Checkpoint2025, file_type) -> list[tuple]:
    v, r = ck.vision, ck.revision
    return [
        ("general.name", ck.name, T.STRING, None),
        ("general.description", f"image encoder for {ck.name} (moondream2 {r.name}; features pass through)",
         T.STRING, None),
        ("general.file_type", file_type, T.UINT32, None),
        ("clip.has_text_encoder", False, T.BOOL, None),
        ("clip.has_vision_encoder", True, T.BOOL, None),
        ("clip.has_llava_projector", True, T.BOOL, None),
        ("clip.projector_type", "mlp", T.STRING, None),
        ("clip.use_gelu", True, T.BOOL, None),
        ("clip.vision.image_size", v.image_size, T.UINT32, None),
        ("clip.vision.patch_size", v.patch_size, T.UINT32, None),
        ("clip.vision.embedding_length", v.n_embd, T.UINT32, None),
        ("clip.vision.feed_forward_length", spec.padded_ff(v.n_ff), T.UINT32, None),
        ("clip.vision.projection_dim", ck.text.n_embd, T.UINT32, None),
        ("clip.vision.attention.head_count", v.n_head, T.UINT32, None),
        ("clip.vision.attention.layer_norm_epsilon", ck.text.eps, T.FLOAT32, None),
        ("clip.vision.block_count", v.n_layer + 1, T.UINT32, None),
        ("clip.vision.image_mean", [0.5, 0.5, 0.5], T.ARRAY, T.FLOAT32),
        ("clip.vision.image_std", [0.5, 0.5, 0.5], T.ARRAY, T.FLOAT32),
        (spec2025.MD_FAMILY, r.family, T.STRING, None),
        (spec.MD_REVISION, r.name, T.STRING, None),
        (spec2025.MD_MAX_CROPS, ck.dims.max_crops, T.UINT32, None),
        (spec2025.MD_OVERLAP_MARGIN, ck.dims.overlap_margin, T.UINT32, None),
        (spec2025.MD_FEATURE_LENGTH, v.n_embd, T.UINT32, None),
        (spec2025.MD_PASSTHROUGH, True, T.BOOL, None),
    ]
