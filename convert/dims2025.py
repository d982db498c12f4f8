"""A 2025 checkpoint's dimensions: config.json's "config" dict (upstream's MoondreamConfig sections text / vision /
region, whose missing keys take upstream's full-size defaults), checked against every tensor's shape and against what
llama.cpp and the pass-through mmproj can run (docs/architecture.md §9)."""
from __future__ import annotations

from dataclasses import dataclass

from moondream_cpp import gguf_rules, spec, spec2025
from moondream_cpp.errors import CheckpointError
from moondream_cpp.gguf_check import MIN_QUESTION_POSITIONS

from .checkpoint_dims import TextDims, VisionDims, config_int

# upstream's MoondreamConfig defaults (config.py of 2025-01-09 .. 2025-06-21): the full-size model
TEXT_DEFAULTS = dict(dim=2048, ff_dim=8192, n_layers=24, vocab_size=51200, max_context=2048, n_heads=32,
                     n_kv_heads=32, prefix_attn=spec2025.PREFIX_ROWS)
VISION_DEFAULTS = dict(enc_dim=1152, enc_patch_size=spec2025.PATCH_SIZE, enc_n_layers=27, enc_ff_dim=4304,
                       enc_n_heads=16, proj_out_dim=2048, crop_size=spec2025.CROP_SIZE, in_channels=3,
                       max_crops=spec2025.MAX_CROPS, overlap_margin=spec2025.OVERLAP_MARGIN, proj_inner_dim=8192)
REGION_DEFAULTS = dict(dim=2048, coord_feat_dim=256, coord_out_dim=1024, size_feat_dim=512, size_out_dim=2048,
                       inner_dim=8192)
TEXT_EPS = 1e-5  # upstream's LayerNorms use PyTorch's default everywhere (text, vision, projector)


@dataclass(frozen=True)
class RegionDims:
    dim: int
    coord_feat: int
    coord_out: int
    size_feat: int
    size_out: int
    inner: int


@dataclass(frozen=True)
class Dims2025:
    text: TextDims
    vision: VisionDims
    region: RegionDims
    max_crops: int
    overlap_margin: int

    @property
    def prefix_rows(self) -> int:
        return 1 + self.vision.n_patches


SECTIONS = ("text", "vision", "region", "tokenizer")


def _inner(config: dict) -> dict:
    inner = config.get("config")
    inner = {} if inner is None else inner
    if not isinstance(inner, dict) or any(not isinstance(inner[k], dict) for k in inner):
        raise CheckpointError("config.json: \"config\" must be an object of objects (upstream's MoondreamConfig)")
    unknown = sorted(set(inner) - set(SECTIONS))
    if unknown:
        raise CheckpointError(f"config.json: config.{unknown[0]} is not part of a moondream2 2025 model (later "
                              "formats, e.g. moondream 3's mixture of experts, are not supported)")
    if inner.get("tokenizer"):  # the token ids of every revision are spec2025's; a config that moves them is another
        raise CheckpointError("config.json: config.tokenizer sets token ids; moondream-cpp knows each revision's own "
                              "and converts only checkpoints that keep them")
    if inner.get("text", {}).get("group_size") is not None:
        raise CheckpointError("config.json: config.text.group_size is set: this is a quantized (int4) moondream "
                              "checkpoint; convert the 16-bit one")
    return inner


def _section(config: dict, key: str) -> dict:
    section = dict(_inner(config).get(key, {}))
    section.pop("group_size", None)  # upstream's quantization switch, None for the 16-bit models
    return section


def _ints(cfg: dict, defaults: dict, where: str) -> dict:
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise CheckpointError(f"config.json: config.{where} has key(s) {unknown[:3]} that moondream-cpp does not "
                              "know; converting would ignore them, so it refuses")
    return {k: config_int(cfg, (k,), d) for k, d in defaults.items()}


def dims_from_config(config: dict) -> Dims2025:
    t = _ints(_section(config, "text"), TEXT_DEFAULTS, "text")
    v = _ints(_section(config, "vision"), VISION_DEFAULTS, "vision")
    r = _ints(_section(config, "region"), REGION_DEFAULTS, "region")
    heads = t["n_heads"]
    text = TextDims(n_embd=t["dim"], n_layer=t["n_layers"], n_head=heads, n_ff=t["ff_dim"], n_vocab=t["vocab_size"],
                    rotary_dim=t["dim"] // (2 * heads) if heads > 0 else 0,  # upstream rotates half of each head
                    n_ctx=t["max_context"], eps=TEXT_EPS)
    patch, crop = v["enc_patch_size"], v["crop_size"]
    grid = crop // patch if patch > 0 else 0
    vision = VisionDims(n_embd=v["enc_dim"], n_layer=v["enc_n_layers"], n_head=v["enc_n_heads"], n_ff=v["enc_ff_dim"],
                        patch_size=patch, image_size=crop, n_patches=grid * grid, proj_hidden=v["proj_inner_dim"],
                        proj_out=v["proj_out_dim"])
    region = RegionDims(r["dim"], r["coord_feat_dim"], r["coord_out_dim"], r["size_feat_dim"], r["size_out_dim"],
                        r["inner_dim"])
    dims = Dims2025(text, vision, region, v["max_crops"], v["overlap_margin"])
    problem = _problem(dims, t, v)
    if problem:
        raise CheckpointError(f"config.json gives {problem}: is this an unmodified moondream checkpoint?")
    return dims


def _problem(d: Dims2025, t: dict, v: dict) -> str | None:
    text, vision, region = d.text, d.vision, d.region
    problem = (gguf_rules.crop_geometry_problem(crop_size=vision.image_size, patch_size=vision.patch_size,
                                                margin=d.overlap_margin, max_crops=d.max_crops)
               or gguf_rules.text_dims_problem(n_embd=text.n_embd, n_head=text.n_head, n_head_kv=t["n_kv_heads"],
                                               n_layer=text.n_layer, n_ff=text.n_ff, n_rot=text.rotary_dim,
                                               n_ctx=text.n_ctx, eps=text.eps)
               or gguf_rules.vision_dims_problem(n_embd=vision.n_embd, n_head=vision.n_head,
                                                 n_ff=spec.padded_ff(vision.n_ff), n_layer=vision.n_layer + 1,
                                                 image_size=vision.image_size, patch_size=vision.patch_size,
                                                 eps=TEXT_EPS))
    if problem:
        return problem
    grid = vision.image_size // vision.patch_size
    checks = [
        (v["in_channels"] == 3, f"{v['in_channels']} input channels (moondream reads RGB: 3)"),
        (t["prefix_attn"] == d.prefix_rows, f"a prefix of {t['prefix_attn']} rows, but BOS + the {grid}x{grid} image "
                                            f"grid make {d.prefix_rows}"),
        (text.n_ctx >= d.prefix_rows + MIN_QUESTION_POSITIONS,
         f"a context of {text.n_ctx} positions, which cannot hold the {d.prefix_rows}-row image prefix"),
        (vision.proj_out == text.n_embd, f"a projector output of {vision.proj_out} for a text width of {text.n_embd}"),
        (region.dim == text.n_embd, f"a region width of {region.dim} for a text width of {text.n_embd}"),
        # the pass-through mmproj hands the features out as the first columns of a text-width row
        (vision.n_embd <= text.n_embd, f"a vision width {vision.n_embd} wider than the text width {text.n_embd}"),
        (region.coord_feat % 2 == 0 and region.size_feat % 2 == 0 and region.size_out % 2 == 0,
         "odd region feature widths (Fourier features are cos/sin pairs, sizes width/height pairs)"),
        (min(region.coord_feat, region.coord_out, region.size_feat, region.size_out, region.inner) > 0,
         "a region width of 0"),
        (vision.proj_hidden > 0, "a projector width of 0"),
    ]
    return next((why for ok, why in checks if not ok), None)


def expected_shapes(d: Dims2025) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor's shape (torch order) as the dimensions give it."""
    t, v, r = d.text, d.vision, d.region

    def linear(name, rows, cols):
        return {f"{name}.weight": (rows, cols), f"{name}.bias": (rows,)}

    def norm(name, width):
        return {f"{name}.weight": (width,), f"{name}.bias": (width,)}

    out = {"model.text.wte": (t.n_vocab, t.n_embd), **norm("model.text.post_ln", t.n_embd),
           **linear("model.text.lm_head", t.n_vocab, t.n_embd)}
    for i in range(t.n_layer):
        b = f"model.text.blocks.{i}."
        out |= norm(b + "ln", t.n_embd) | linear(b + "attn.qkv", 3 * t.n_embd, t.n_embd)
        out |= linear(b + "attn.proj", t.n_embd, t.n_embd) | linear(b + "mlp.fc1", t.n_ff, t.n_embd)
        out |= linear(b + "mlp.fc2", t.n_embd, t.n_ff)
    out |= linear("model.vision.patch_emb", v.n_embd, 3 * v.patch_size ** 2) | norm("model.vision.post_ln", v.n_embd)
    out |= {"model.vision.pos_emb": (1, v.n_patches, v.n_embd)}
    for i in range(v.n_layer):
        b = f"model.vision.blocks.{i}."
        out |= norm(b + "ln1", v.n_embd) | norm(b + "ln2", v.n_embd)
        out |= linear(b + "attn.qkv", 3 * v.n_embd, v.n_embd) | linear(b + "attn.proj", v.n_embd, v.n_embd)
        out |= linear(b + "mlp.fc1", v.n_ff, v.n_embd) | linear(b + "mlp.fc2", v.n_embd, v.n_ff)
    out |= linear("model.vision.proj_mlp.fc1", v.proj_hidden, 2 * v.n_embd)
    out |= linear("model.vision.proj_mlp.fc2", v.proj_out, v.proj_hidden)
    g = "model.region."
    out |= {g + "coord_features": (1, r.coord_feat // 2), g + "size_features": (2, r.size_feat // 2)}
    out |= linear(g + "coord_encoder", r.dim, r.coord_feat) | linear(g + "size_encoder", r.dim, r.size_feat)
    out |= linear(g + "coord_decoder.fc1", r.inner, r.dim) | linear(g + "coord_decoder.fc2", r.coord_out, r.inner)
    out |= linear(g + "size_decoder.fc1", r.inner, r.dim) | linear(g + "size_decoder.fc2", r.size_out, r.inner)
    return out
