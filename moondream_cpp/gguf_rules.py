"""The values llama.cpp 0.3.36 accepts for a moondream pair, beyond their types: what the converter may write and what
gguf_check lets through. llama.cpp aborts the whole process (GGML_ASSERT) on many values it reads without a check:
a block count of 0 or over 512 (LLAMA_MAX_LAYERS), an expert count without experts in use, an unknown RoPE scaling
type, a head length other than width / heads, odd RoPE dimensions or more than a head holds (at the first decode),
a negative or NaN norm epsilon, vision heads that do not divide the width (at the first image).

Each function answers with what is wrong, in a sentence, or None; callers name the file (or checkpoint) around it.
"""
from __future__ import annotations

import json
import math
from typing import Mapping

from . import spec, spec2025

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS (src/llama-hparams.h); mtmd runs any count but moondream has 24..28
MAX_WIDTH = 1 << 16  # far above moondream's (2048 text, 1152 vision), far below an int32 overflow in shapes
MAX_CONTEXT = 1 << 20
MAX_IMAGE = 8192  # clip.cpp's own limit on clip.vision.image_size
MAX_PREFIX_CHARS = 64  # moondream.prompt.answer_prefix: "Answer:" and friends, never a prompt of its own
STOP_RULES = ("eos", "end_marker")
VISION_GELUS = ("erf", "tanh")
TOKENIZER_MODEL = "gpt2"  # moondream's tokenizer is GPT-2 byte-level BPE, and the runtime relies on it


def _eps(eps) -> str | None:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps < 1:
        return f"layer norm epsilon {eps!r} is not a small positive number"
    return None


def _count(name: str, value, low: int = 1, high: int = MAX_WIDTH) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{name} is {value!r}, not between {low} and {high}"
    return None


def text_dims_problem(*, n_embd, n_head, n_head_kv, n_layer, n_ff, n_rot, n_ctx, eps) -> str | None:
    """The phi2 dimensions llama.cpp builds the text model from (keys phi2.*)."""
    problem = (_count("the block count", n_layer, 1, MAX_LAYERS) or _count("the width", n_embd)
               or _count("the head count", n_head) or _count("the feed-forward width", n_ff, 1, 4 * MAX_WIDTH)
               or _count("the context length", n_ctx, 1, MAX_CONTEXT) or _eps(eps))
    if problem:
        return problem
    if n_embd % n_head:
        return f"the width {n_embd} is not a multiple of the {n_head} heads"
    if n_head_kv != n_head:
        return f"{n_head_kv} key/value heads for {n_head} heads (moondream's Phi has one per head)"
    head = n_embd // n_head
    if isinstance(n_rot, bool) or not isinstance(n_rot, int) or n_rot < 2 or n_rot % 2 or n_rot > head:
        return f"{n_rot!r} rotary dimensions: RoPE needs an even count from 2 to the head size ({head})"
    return None


def vision_dims_problem(*, n_embd, n_head, n_ff, n_layer, image_size, patch_size, eps) -> str | None:
    """The clip dimensions mtmd builds the vision tower from (keys clip.vision.*)."""
    problem = (_count("the vision block count", n_layer, 1, MAX_LAYERS) or _count("the vision width", n_embd)
               or _count("the vision head count", n_head) or _count("the vision MLP width", n_ff, 1, 4 * MAX_WIDTH)
               or _count("the patch size", patch_size, 1, MAX_IMAGE)
               or _count("the image size", image_size, 1, MAX_IMAGE)
               or _eps(eps))
    if problem:
        return problem
    if n_embd % n_head:
        return f"the vision width {n_embd} is not a multiple of the {n_head} heads"
    if image_size % patch_size:
        return f"the image size {image_size} is not a multiple of the patch size {patch_size}"
    return None


def unknown_keys(keys: Mapping, arch: str, known: Mapping) -> list[str]:
    """Keys of the architecture's own namespace (phi2.*, clip.*) that are not in our table: llama.cpp reads many
    more of them than we write (experts, RoPE scaling, sliding windows, audio encoders...) and acts on them, some
    by aborting. And split.*: a split model makes llama.cpp load more files, named after this one, that nobody
    checked. Keys of other namespaces it does not read for these architectures, or reads with a check."""
    return [k for k in keys if (k.startswith(arch + ".") and k not in known) or k.startswith("split.")]


def text_keys_problem(keys: Mapping, n_vocab: int) -> str | None:
    """The text file's other values: RoPE base, tokenizer, and our moondream.* keys."""
    base = keys.get("phi2.rope.freq_base", spec.ROPE_BASE)
    if not math.isfinite(base) or base <= 0:
        return f"phi2.rope.freq_base is {base!r}, not a positive number"
    if keys.get("tokenizer.ggml.model") != TOKENIZER_MODEL:
        return f"tokenizer.ggml.model is {keys.get('tokenizer.ggml.model')!r}; moondream's tokenizer is 'gpt2'"
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if key not in keys:
            return f"{key} is missing"
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"):
        if key in keys and not 0 <= keys[key] < n_vocab:
            return f"{key} is {keys[key]}, outside the {n_vocab}-token vocabulary"
    tokens = keys["tokenizer.ggml.tokens"]
    # llama.cpp names an empty token [EMPTY_<id>], then asserts that every token text is unique
    if len({t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)}) != len(tokens):
        return "the tokenizer lists a token twice"
    types = keys.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        return f"{len(types)} token types for {len(tokens)} tokens"
    if types is not None and len(types) and (min(types) < 0 or max(types) > 6):
        return "a token type is not one of llama.cpp's (0-6)"
    return _moondream_keys_problem(keys)


def _moondream_keys_problem(keys: Mapping) -> str | None:
    if keys.get(spec.MD_STOP_RULE, STOP_RULES[0]) not in STOP_RULES:
        return f"{spec.MD_STOP_RULE} is {keys[spec.MD_STOP_RULE]!r}, not one of {', '.join(STOP_RULES)}"
    if keys.get(spec.MD_VISION_GELU, VISION_GELUS[0]) not in VISION_GELUS:
        return f"{spec.MD_VISION_GELU} is {keys[spec.MD_VISION_GELU]!r}, not one of {', '.join(VISION_GELUS)}"
    if len(keys.get(spec.MD_ANSWER_PREFIX, "")) > MAX_PREFIX_CHARS:
        return f"{spec.MD_ANSWER_PREFIX} is longer than {MAX_PREFIX_CHARS} characters"
    if spec.MD_VISION_EPS in keys and _eps(keys[spec.MD_VISION_EPS]):
        return f"{spec.MD_VISION_EPS}: {_eps(keys[spec.MD_VISION_EPS])}"
    if spec.MD_MAX_NEW_TOKENS in keys:
        return _count(spec.MD_MAX_NEW_TOKENS, keys[spec.MD_MAX_NEW_TOKENS], 1, MAX_CONTEXT)
    return None


def mmproj_keys_problem(keys: Mapping, n_layer: int) -> str | None:
    """The mmproj's other values: projector, activation, normalisation, feature layers."""
    if keys["clip.projector_type"] != "mlp":
        return f"projector type {keys['clip.projector_type']!r}; moondream needs 'mlp'"
    if keys.get("clip.has_vision_encoder") is not True:
        return "it has no vision encoder (clip.has_vision_encoder is not true)"
    if keys.get("clip.use_gelu") and keys.get("clip.use_silu"):
        return "clip.use_gelu and clip.use_silu are both true"
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        values = [float(v) for v in keys[key]]
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            return f"{key} is {values[:6]}, not three numbers (one per colour)"
        if key.endswith("std") and min(values) <= 0:
            return f"{key} is {values}: a deviation must be positive"
    layers = keys.get("clip.vision.feature_layer")
    if layers is not None and any(not 0 < int(v) <= n_layer for v in layers):
        return f"clip.vision.feature_layer {list(layers)[:6]} names blocks outside 1..{n_layer}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The 2025 family (docs/architecture.md §9): keys the runtime reads to tokenize, prompt and tile like upstream.
FAMILIES = ("2024", "2025")
MAX_CROPS = 64  # upstream uses 12; more would make one image cost minutes, whatever a file says
MAX_CROP_SIZE = 1024  # pixels a crop side (upstream: 378); each crop is one tower pass, its pixels held per crop
MAX_GRID = 64  # patches a crop side (upstream: 27): the image takes grid² prefix rows, and attention is quadratic
MAX_TOKENIZER_JSON = 64 << 20  # starmie's tokenizer.json is a few MB


def family_problem(keys: Mapping) -> str | None:
    family = keys.get(spec2025.MD_FAMILY, FAMILIES[0])
    if family not in FAMILIES:
        return f"{spec2025.MD_FAMILY} is {str(family)[:20]!r}, not one of {', '.join(FAMILIES)}"
    return None


def _revision_2025(keys: Mapping) -> tuple[str | None, "spec2025.Revision2025 | None"]:
    name = keys.get(spec.MD_REVISION)
    if name not in spec2025.REVISIONS_2025:
        return (f"{spec.MD_REVISION} is {str(name)[:40]!r}, not a 2025 revision this moondream-cpp knows "
                f"({', '.join(spec2025.REVISIONS_2025)}): convert the checkpoint again, or update moondream-cpp"), None
    return None, spec2025.REVISIONS_2025[name]


def tokenizer_json_problem(text) -> str | None:
    """The stored starmie tokenizer.json: a JSON object with a "model" object, as the tokenizers library needs."""
    if not isinstance(text, str) or not text:
        return f"{spec2025.MD_TOKENIZER_JSON} is missing or empty"
    if len(text) > MAX_TOKENIZER_JSON:
        return f"{spec2025.MD_TOKENIZER_JSON} is larger than {MAX_TOKENIZER_JSON >> 20} MB"
    try:
        tj = json.loads(text)
    except ValueError as e:
        return f"{spec2025.MD_TOKENIZER_JSON} is not valid JSON ({str(e)[:80]})"
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        return f"{spec2025.MD_TOKENIZER_JSON} is not a tokenizer.json (no \"model\" object)"
    return None


def text_2025_problem(keys: Mapping, n_vocab: int, n_ctx: int) -> str | None:
    """A 2025 text file's own keys: its revision, tokenizer and prefix."""
    problem, rev = _revision_2025(keys)
    if problem:
        return problem
    kind = keys.get(spec2025.MD_TOKENIZER_KIND)
    if kind != rev.tokenizer:
        return f"{spec2025.MD_TOKENIZER_KIND} is {str(kind)[:20]!r}, but revision {rev.name} uses {rev.tokenizer!r}"
    if kind == "starmie":
        problem = tokenizer_json_problem(keys.get(spec2025.MD_TOKENIZER_JSON))
        if problem:
            return problem
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if keys.get(key) != rev.bos:
            return f"{key} is {keys.get(key)!r}, but revision {rev.name} uses {rev.bos}"
    ids = [i for c in rev.captions.values() for i in c] + [i for t in (rev.query, rev.detect, rev.point)
                                                            for i in (*t.before, *t.after)]
    if max(ids) >= n_vocab:
        return f"its {n_vocab}-token vocabulary cannot hold revision {rev.name}'s prompt token {max(ids)}"
    rows = keys.get(spec2025.MD_PREFIX_ROWS)
    return _count(spec2025.MD_PREFIX_ROWS, rows, 2, max(2, n_ctx - 1))


def mmproj_2025_problem(keys: Mapping, width: int, crop_size: int, patch_size: int) -> str | None:
    """A 2025 mmproj's own keys: revision, the pass-through promise, and its crop geometry."""
    problem, _ = _revision_2025(keys)
    if problem:
        return problem
    if keys.get(spec2025.MD_PASSTHROUGH) is not True:
        return (f"{spec2025.MD_PASSTHROUGH} is not true: moondream-cpp reads a 2025 mmproj only with the pass-through "
                "projector it converts")
    if keys.get(spec2025.MD_FEATURE_LENGTH) != width:
        return f"{spec2025.MD_FEATURE_LENGTH} is {keys.get(spec2025.MD_FEATURE_LENGTH)!r}, not the vision width {width}"
    return crop_geometry_problem(crop_size=crop_size, patch_size=patch_size,
                                 margin=keys.get(spec2025.MD_OVERLAP_MARGIN),
                                 max_crops=keys.get(spec2025.MD_MAX_CROPS), names=_MMPROJ_GEOMETRY_NAMES)


# how the messages name each value: config.json's words, or the mmproj's keys
_GEOMETRY_NAMES = {"crop": "the crop size", "patch": "the patch size", "margin": "", "max_crops": "max_crops"}
_MMPROJ_GEOMETRY_NAMES = {"crop": "clip.vision.image_size (the crop size)", "patch": "clip.vision.patch_size",
                          "margin": spec2025.MD_OVERLAP_MARGIN, "max_crops": spec2025.MD_MAX_CROPS}


def crop_geometry_problem(*, crop_size, patch_size, margin, max_crops, names: Mapping = _GEOMETRY_NAMES) \
        -> str | None:
    """A 2025 model's crop geometry (config.json's vision section, or its mmproj's keys): whole patches in a crop of
    bounded size, margins that leave each local crop a window (2 * margin < grid), 1..MAX_CROPS local crops. The
    runtime cuts images by these values (crops.CropGeometry): any size that passes here, not only upstream's 378."""
    problem = (_count(names["crop"], crop_size, 1, MAX_CROP_SIZE)
               or _count(names["patch"], patch_size, 1, max(1, crop_size)))
    if problem:
        return problem
    if crop_size % patch_size:
        return f"{names['crop']} {crop_size} is not a multiple of {names['patch']} {patch_size}"
    grid = crop_size // patch_size
    if grid > MAX_GRID:
        return (f"{names['crop']} {crop_size} in patches of {patch_size} makes a {grid}x{grid} grid, over "
                f"{MAX_GRID} a side")
    if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= 2 * margin < grid:
        key = f" ({names['margin']})" if names["margin"] else ""
        return (f"an overlap margin of {margin!r} patches{key} in a {grid}-patch crop, which takes a margin of "
                f"0..{(grid - 1) // 2}")
    return _count(names["max_crops"], max_crops, 1, MAX_CROPS)
