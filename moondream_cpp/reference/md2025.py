"""A compact PyTorch reference of the 2025 moondream2 family (2025-01-09 .. 2025-06-21), loaded from an HF checkpoint
folder of any size: multi-crop vision, reconstruction and pooling, the 2304-wide projector, prefix attention.

Written from the spec (docs/architecture.md §9), independently of the GGUF runtime and the converter: it reads the
safetensors itself and is the oracle the llama.cpp path is measured against. fp32 by default; `dtype` gives the
bf16/fp16 runs upstream makes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from moondream_cpp import spec2025
from moondream_cpp.reference.md2025_image import CropGeometry

LN_EPS = 1e-5
ROPE_BASE = 10000.0


# upstream's MoondreamConfig sections and defaults (the real config.json's "config" is empty)
@dataclass(frozen=True)
class TextDims:
    dim: int = 2048
    ff_dim: int = 8192
    n_layers: int = 24
    vocab_size: int = 51200
    max_context: int = 2048
    n_heads: int = 32
    n_kv_heads: int = 32
    prefix_attn: int = 730


@dataclass(frozen=True)
class VisionDims:
    enc_dim: int = 1152
    enc_patch_size: int = 14
    enc_n_layers: int = 27
    enc_ff_dim: int = 4304
    enc_n_heads: int = 16
    proj_out_dim: int = 2048
    crop_size: int = 378
    in_channels: int = 3
    max_crops: int = 12
    overlap_margin: int = 4
    proj_inner_dim: int = 8192


def _section(cls, values: dict):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in known})


def attention_mask(n_past: int, n_new: int, prefix: int) -> torch.Tensor:
    """[n_new, n_past + n_new] bool: position i attends to j iff j <= i, or both lie in the first `prefix`
    positions (prefix 0: plain causal)."""
    i = torch.arange(n_past, n_past + n_new)[:, None]
    j = torch.arange(n_past + n_new)[None, :]
    return (j <= i) | ((i < prefix) & (j < prefix))


class Reference2025:
    def __init__(self, weights: dict, text: TextDims, vision: VisionDims, revision: str, dtype: torch.dtype,
                 max_crops: int | None = None, resize=None):
        self.w, self.text, self.vision, self.dtype = weights, text, vision, dtype
        self.rev = spec2025.REVISIONS_2025[revision]
        self.geometry = CropGeometry(vision.crop_size, vision.enc_patch_size, vision.overlap_margin,
                                     max_crops or vision.max_crops, resize)
        self.n_image_rows = self.geometry.grid ** 2
        self.prefix_rows = 1 + self.n_image_rows  # BOS + the image rows
        hd = text.dim // text.n_heads
        self.rot = hd // 2  # rotary on the first half of each head
        inv = 1.0 / ROPE_BASE ** (torch.arange(0, self.rot, 2, dtype=torch.float64) / self.rot)
        ang = torch.outer(torch.arange(text.max_context, dtype=torch.float64), inv)
        self.cos, self.sin = ang.cos().float(), ang.sin().float()

    @classmethod
    def load(cls, checkpoint_dir, dtype: torch.dtype = torch.float32, max_crops: int | None = None, *,
             revision: str = "2025-04-14", resize=None) -> Reference2025:
        """Dims from config.json's "config" (upstream defaults for missing keys); the revision gives BOS/EOS, since
        nothing in a checkpoint says it. max_crops None: the config's (12 upstream). resize: see CropGeometry."""
        path = Path(checkpoint_dir)
        cfg = json.loads((path / "config.json").read_text()).get("config") or {}
        weights = {k: v.to(dtype) for k, v in load_file(str(path / "model.safetensors")).items()}
        return cls(weights, _section(TextDims, cfg.get("text")), _section(VisionDims, cfg.get("vision")), revision,
                   dtype, max_crops, resize)

    # ------------------------------------------------------------------------------------------------ helpers
    def _linear(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.w[name + ".weight"], self.w[name + ".bias"], LN_EPS)

    def _mlp(self, x, name):
        return self._linear(F.gelu(self._linear(x, name + ".fc1"), approximate="tanh"), name + ".fc2")

    # ------------------------------------------------------------------------------------------------ vision
    def tiling(self, height: int, width: int) -> tuple[int, int]:
        return self.geometry.tiling(height, width)

    def crops(self, image):
        """(global uint8 [378, 378, 3], locals uint8 [n, 378, 378, 3] row-major, (rows, cols))."""
        return self.geometry.crops(image)

    @torch.no_grad()
    def encode_crops(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 crops [n, S, S, 3] -> post_ln features [n, grid*grid, enc_dim]."""
        vd, p, g = self.vision, self.vision.enc_patch_size, self.geometry.grid
        # normalised in the compute dtype, as upstream does after its cast to fp16/bf16
        x = (torch.from_numpy(np.ascontiguousarray(crops)).to(self.dtype) / 255.0 - 0.5) / 0.5  # [n, S, S, 3]
        n = x.shape[0]
        # patches row-major, each vector ordered (channel, dy, dx)
        x = x.permute(0, 3, 1, 2).reshape(n, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * p * p)
        x = self._linear(x, "model.vision.patch_emb") + self.w["model.vision.pos_emb"]
        heads, hd = vd.enc_n_heads, vd.enc_dim // vd.enc_n_heads
        for i in range(vd.enc_n_layers):
            b = f"model.vision.blocks.{i}."
            q, k, v = self._linear(self._ln(x, b + "ln1"), b + "attn.qkv").chunk(3, dim=-1)
            q, k, v = (t.reshape(n, -1, heads, hd).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v)  # bidirectional, scale 1/sqrt(hd)
            x = x + self._linear(a.transpose(1, 2).reshape(n, -1, vd.enc_dim), b + "attn.proj")
            x = x + self._mlp(self._ln(x, b + "ln2"), b + "mlp")
        return self._ln(x, "model.vision.post_ln")

    def crop_features(self, image) -> torch.Tensor:
        """[1 + n_local, grid*grid, enc_dim]: the global crop's features first, then the local crops row-major.
        A (1,1) tiling still encodes its local crop (the same pixels as the global one)."""
        glob, locals_, _ = self.crops(image)
        return self.encode_crops(np.concatenate([glob[None], locals_]))

    @torch.no_grad()
    def project(self, features: torch.Tensor, tiling: tuple[int, int]) -> torch.Tensor:
        """crop_features output -> image embeddings [grid*grid, text dim]: locals reconstructed and pooled to the
        grid, then [global || pooled] through the projector."""
        pooled = self.geometry.pool(self.geometry.reconstruct(features[1:], tiling))
        return self._mlp(torch.cat([features[0], pooled], dim=-1), "model.vision.proj_mlp")

    def image_embeddings(self, image) -> torch.Tensor:
        glob, locals_, tiling = self.crops(image)
        return self.project(self.encode_crops(np.concatenate([glob[None], locals_])), tiling)

    # ------------------------------------------------------------------------------------------------ text
    def _rope(self, x, pos):
        """NEOX rotation of each head's first `rot` dims (pairs d, d + rot/2); x [heads, T, hd]."""
        r, half = self.rot, self.rot // 2
        cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)
        x1, x2, rest = x[..., :half], x[..., half:r], x[..., r:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)

    @torch.no_grad()
    def decode(self, embeds: torch.Tensor, cache: list, prefix: int) -> torch.Tensor:
        """Run new rows [T, dim] after the rows in `cache` (per layer (k, v), extended in place); returns the residual
        stream before post_ln [T, dim]. `prefix`: rows 0..prefix-1 attend both ways."""
        t = self.text
        hd, kv = t.dim // t.n_heads, t.n_kv_heads
        past, n = (cache[0][0].shape[1] if cache else 0), embeds.shape[0]
        if past + n > t.max_context:
            raise ValueError(f"{past + n} positions exceed the context of {t.max_context}")
        pos = torch.arange(past, past + n)
        mask = attention_mask(past, n, prefix)
        x = embeds.to(self.dtype)
        for i in range(t.n_layers):
            b = f"model.text.blocks.{i}."
            h = self._ln(x, b + "ln")
            q, k, v = self._linear(h, b + "attn.qkv").split([t.dim, kv * hd, kv * hd], dim=-1)
            q = self._rope(q.reshape(n, t.n_heads, hd).transpose(0, 1), pos)
            k = self._rope(k.reshape(n, kv, hd).transpose(0, 1), pos)
            v = v.reshape(n, kv, hd).transpose(0, 1)
            if len(cache) > i:
                k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
                cache[i] = (k, v)
            else:
                cache.append((k, v))
            rep = t.n_heads // kv
            a = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0), mask)
            x = x + self._linear(a.transpose(0, 1).reshape(n, t.dim), b + "attn.proj") + self._mlp(h, b + "mlp")
        return x

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._linear(self._ln(hidden, "model.text.post_ln"), "model.text.lm_head").float()

    def embed(self, ids) -> torch.Tensor:
        return self.w["model.text.wte"][torch.as_tensor(list(ids), dtype=torch.long)]

    def image_rows(self, image) -> torch.Tensor:
        """Image embeddings for an image, or a precomputed [grid*grid, dim] tensor as it is."""
        return image if isinstance(image, torch.Tensor) else self.image_embeddings(image)

    def prefix(self, image) -> torch.Tensor:
        """[wte[bos]; image rows]: positions 0 .. grid*grid."""
        return torch.cat([self.embed([self.rev.bos]), self.image_rows(image).to(self.dtype)])

    @torch.no_grad()
    def logits_and_hidden(self, image, prompt_ids, causal_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [vocab] fp32, residual before post_ln [dim] fp32) at the last prompt position; the prompt starts
        at position 1 + grid*grid. causal_only: a plain causal mask over everything (the 2024 way)."""
        x = torch.cat([self.prefix(image), self.embed(prompt_ids)])
        h = self.decode(x, [], 0 if causal_only else self.prefix_rows)[-1]
        return self.head(h), h.float()

    def logits(self, image, prompt_ids, causal_only: bool = False) -> torch.Tensor:
        return self.logits_and_hidden(image, prompt_ids, causal_only)[0]

    @torch.no_grad()
    def start(self, image, prompt_ids) -> tuple[list, torch.Tensor]:
        """(KV cache, last residual before post_ln) after the prefix and the prompt: the state `step` goes on from."""
        cache: list = []
        h = self.decode(self.prefix(image), cache, self.prefix_rows)[-1]
        if len(prompt_ids):
            h = self.decode(self.embed(prompt_ids), cache, self.prefix_rows)[-1]
        return cache, h

    def step(self, cache: list, rows: torch.Tensor) -> torch.Tensor:
        """Feed embedding rows [T, dim] (a token's wte row, a region encoding) causally; the last residual."""
        return self.decode(rows, cache, self.prefix_rows)[-1]

    @torch.no_grad()
    def generate(self, image, prompt_ids, max_tokens: int, eos: int | None = None, masked=()) -> list[int]:
        """Greedy: argmax over all logits with `masked` ids at -inf; stops at eos (the revision's by default), which
        is not returned."""
        eos = self.rev.eos if eos is None else eos
        cache, h = self.start(image, prompt_ids)
        out: list[int] = []
        for _ in range(max_tokens):
            logits = self.head(h)
            logits[list(masked)] = float("-inf")
            tok = int(torch.argmax(logits))
            if tok == eos:
                break
            out.append(tok)
            h = self.step(cache, self.embed([tok]))
        return out

    # ------------------------------------------------------------------------------------------------ region head
    def _fourier(self, values, name) -> torch.Tensor:
        f = 2 * math.pi * torch.as_tensor(values, dtype=self.dtype) @ self.w[name]
        return torch.cat([f.cos(), f.sin()], dim=-1)  # cos first

    @torch.no_grad()
    def encode_coordinate(self, value: float) -> torch.Tensor:
        """A coordinate in [0, 1] -> one embedding row [1, dim]."""
        return self._linear(self._fourier([[value]], "model.region.coord_features"), "model.region.coord_encoder")

    @torch.no_grad()
    def encode_size(self, width: float, height: float) -> torch.Tensor:
        return self._linear(self._fourier([[width, height]], "model.region.size_features"), "model.region.size_encoder")

    @torch.no_grad()
    def decode_coordinate(self, hidden: torch.Tensor) -> torch.Tensor:
        """Residual before post_ln -> coordinate bin logits [1024] fp32."""
        return self._mlp(hidden.to(self.dtype), "model.region.coord_decoder").float()

    @torch.no_grad()
    def decode_size(self, hidden: torch.Tensor) -> torch.Tensor:
        """-> [2, bins] fp32: row 0 width, row 1 height."""
        return self._mlp(hidden.to(self.dtype), "model.region.size_decoder").float().reshape(2, -1)
