"""A trainable moondream, batched for training, whose state_dict has exactly the HF checkpoint names
(docs/architecture.md §1.5)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """2-D sine/cosine position embeddings [1, grid*grid, dim]: an init that gives patches their place at once."""
    q = dim // 4
    omega = 1.0 / (100.0 ** (torch.arange(q).float() / q))
    y, x = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    out = [f(c.reshape(-1, 1) * omega) for c in (x, y) for f in (torch.sin, torch.cos)]
    return torch.cat(out, 1)[None] * 0.5


class Named(nn.Module):
    """A bare container: attributes become dotted state_dict names."""

    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v)


class VitBlock(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.attn = Named(qkv=nn.Linear(d, 3 * d), proj=nn.Linear(d, d))
        self.mlp = Named(fc1=nn.Linear(d, ff), fc2=nn.Linear(ff, d))

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + self.attn.proj(a)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x)), approximate="tanh"))


class PhiBlock(nn.Module):
    def __init__(self, d, heads, ff, rotary):
        super().__init__()
        self.heads, self.rotary = heads, rotary
        self.ln = nn.LayerNorm(d, eps=1e-5)
        self.mixer = Named(Wqkv=nn.Linear(d, 3 * d), out_proj=nn.Linear(d, d))
        self.mlp = Named(fc1=nn.Linear(d, ff), fc2=nn.Linear(ff, d))

    def rope(self, x, cos, sin):
        r = self.rotary
        x1, x2, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)

    def forward(self, x, cos, sin, mask=None):
        B, T, D = x.shape
        h = self.ln(x)
        q, k, v = self.mixer.Wqkv(h).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        a = a.transpose(1, 2).reshape(B, T, D)
        return x + self.mixer.out_proj(a) + self.mlp.fc2(F.gelu(self.mlp.fc1(h), approximate="tanh"))


class TrainableMoondream(nn.Module):
    def __init__(self, vocab, image_size=112, patch=14, v_dim=96, v_layers=4, v_heads=4, t_dim=192, t_layers=4,
                 t_heads=6, n_ctx=512):
        super().__init__()
        self.patch, self.image_size = patch, image_size
        visual = Named(patch_embed=Named(linear=nn.Linear(3 * patch * patch, v_dim)),
                       blocks=nn.ModuleList(VitBlock(v_dim, v_heads, 4 * v_dim) for _ in range(v_layers)),
                       norm=nn.LayerNorm(v_dim, eps=1e-5))
        visual.pos_embed = nn.Parameter(sincos_2d(image_size // patch, v_dim))
        self.vision_encoder = Named(encoder=Named(model=Named(visual=visual)),
                                    projection=Named(mlp=Named(fc1=nn.Linear(v_dim, 4 * t_dim),
                                                               fc2=nn.Linear(4 * t_dim, t_dim))))
        self.rotary = (t_dim // t_heads) // 2
        self.text_model = Named(
            transformer=Named(embd=Named(wte=nn.Embedding(vocab, t_dim)),
                              h=nn.ModuleList(PhiBlock(t_dim, t_heads, 4 * t_dim, self.rotary)
                                              for _ in range(t_layers))),
            lm_head=Named(ln=nn.LayerNorm(t_dim, eps=1e-5), linear=nn.Linear(t_dim, vocab)))
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.rotary, 2).float() / self.rotary))
        f = torch.outer(torch.arange(n_ctx).float(), inv)
        self.register_buffer("cos", f.cos(), persistent=False)
        self.register_buffer("sin", f.sin(), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def encode_images(self, pixels):  # uint8 [B, S, S, 3] (already stretched) -> [B, n_pos, t_dim]
        v = self.vision_encoder.encoder.model.visual
        x = pixels.float().div(255).sub(0.5).div(0.5).permute(0, 3, 1, 2)
        B, p = x.shape[0], self.patch
        g = self.image_size // p
        x = x.reshape(B, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, 3 * p * p)
        x = v.patch_embed.linear(x) + v.pos_embed
        for blk in v.blocks:
            x = blk(x)
        x = v.norm(x)
        mlp = self.vision_encoder.projection.mlp
        return mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh"))

    def forward(self, pixels, bos, before_ids, after_ids, return_image=False, segments=None):
        """Logits for [BOS] [image] after_ids, batched (after_ids right-padded). before_ids unused (no markers).

        segments [B, T_text] (optional): a segment number per text token. Tokens attend to BOS + image and their own
        segment only, with positions restarting after the image: several independent first-turn questions about
        one image packed in one sequence, for the price of one image prefix."""
        tm = self.text_model
        img = self.encode_images(pixels)
        B = img.shape[0]
        x = torch.cat([tm.transformer.embd.wte(torch.full((B, 1), bos, dtype=torch.long)), img,
                       tm.transformer.embd.wte(after_ids)], 1)
        T = x.shape[1]
        mask = None
        if segments is None:
            cos, sin = self.cos[:T], self.sin[:T]
        else:
            P = T - segments.shape[1]
            seg = torch.cat([torch.full((B, P), -1, dtype=torch.long), segments], 1)  # -1: the shared prefix
            start = torch.ones_like(seg, dtype=torch.bool)
            start[:, 1:] = seg[:, 1:] != seg[:, :-1]
            idx = torch.arange(T).expand(B, T)
            first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 1).values  # where my segment began
            pos = torch.where(seg < 0, idx, P + idx - first)
            cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            mask = causal & ((seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] < 0))
        for blk in tm.transformer.h:
            x = blk(x, cos, sin, mask)
        logits = tm.lm_head.linear(tm.lm_head.ln(x))
        return (logits, img) if return_image else logits

    def n_params(self):
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def mimetic_init(blocks, alpha=(0.7, 0.4), beta=(0.7, 0.4), seed=0):
    """Mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023): W_q^T W_k ~ a Z + b I and
    W_v^T W_o^T ~ a Z - b I, so a ViT trained from scratch starts with the local, position-keyed attention that
    pretrained ViTs show. It speeds up small-data ViT training a lot; only the initial weights change."""
    g = torch.Generator().manual_seed(seed)

    def factor(a, b, sign, d):
        m = a * torch.randn(d, d, generator=g) / math.sqrt(d) + sign * b * torch.eye(d)
        u, sv, vt = torch.linalg.svd(m)
        r = sv.sqrt()
        return r[:, None] * u.T, r[:, None] * vt  # left.T @ right == m

    for blk in blocks:
        d = blk.attn.proj.weight.shape[0]
        wq, wk = factor(alpha[0], beta[0], 1.0, d)  # q.k = x Wq^T Wk x^T
        wv, wo_t = factor(alpha[1], beta[1], -1.0, d)  # out = x Wv^T Wo^T
        blk.attn.qkv.weight.copy_(torch.cat([wq, wk, wv], 0))
        blk.attn.proj.weight.copy_(wo_t.T)


class LocalHead(nn.Module):
    """Training-only: the vision tower's token-local parts (patch embedding, the first blocks' MLPs) applied as a
    convolution at a small stride, read out per window. One image then yields hundreds of shifted patch views, so the
    patch features learn outlines at every offset (the translation invariance a ViT otherwise needs much data for)."""

    def __init__(self, model, n_colors, n_shapes, n_chars, n_mlps=2, stride=4):
        super().__init__()
        self.visual = model.vision_encoder.encoder.model.visual
        self.n_mlps, self.stride = n_mlps, stride
        d = self.visual.norm.normalized_shape[0]
        self.ln = nn.LayerNorm(d)
        self.sizes = [n_colors + 1, n_shapes + 1, n_chars + 1]
        self.out = nn.Linear(d, sum(self.sizes))

    def params(self):
        """What this stage trains: the patch embedding, the first blocks' MLPs, and the readout."""
        v = self.visual
        ps = list(v.patch_embed.parameters()) + list(self.ln.parameters()) + list(self.out.parameters())
        for blk in list(v.blocks)[: self.n_mlps]:
            ps += list(blk.norm2.parameters()) + list(blk.mlp.parameters())
        return ps

    def loss(self, pixels, t, stats=None):
        v = self.visual
        x = pixels.float().div(255).sub(0.5).div(0.5).permute(0, 3, 1, 2)
        lin = v.patch_embed.linear
        d, p = lin.weight.shape[0], int(round((lin.weight.shape[1] / 3) ** 0.5))
        f = F.conv2d(x, lin.weight.view(d, 3, p, p), lin.bias, stride=self.stride).permute(0, 2, 3, 1)
        for blk in list(v.blocks)[: self.n_mlps]:
            f = f + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(f)), approximate="tanh"))
        c, s, g = (x.reshape(-1, x.shape[-1]) for x in self.out(self.ln(f)).split(self.sizes, -1))
        yc, ys, yg = (t[k].long().reshape(-1) for k in ("wcolor", "wshape", "wchar"))
        if stats is not None:
            for name, x, y in (("outline", s, ys), ("glyph", g, yg)):
                keep = y > 0
                if keep.any():
                    stats.setdefault(name, []).append(float((x.argmax(-1) == y)[keep].float().mean()))
        loss = F.cross_entropy(c, yc) + F.cross_entropy(s, ys, ignore_index=-1)
        if (yg >= 0).any():
            loss = loss + F.cross_entropy(g, yg, ignore_index=-1)
        return loss


class AuxHeads(nn.Module):
    """Training-only readouts on the projected image tokens (what the text model sees), never saved: per patch the
    colour / shape / size class of the object under it, per image the counts and the glyph. Dense targets teach the
    vision tower in minutes what the answer loss alone teaches it in hours."""

    def __init__(self, dim, n_colors, n_shapes, n_chars, max_count=3, grid=8):
        super().__init__()
        self.patch = nn.Linear(dim, (n_colors + 1) + (n_shapes + 2) + 3 + 2 * grid)
        self.image = nn.Linear(dim, (n_shapes + 1) * (max_count + 1) + (n_chars + 1) + n_colors * n_shapes)
        self.n_pairs = n_colors * n_shapes
        self.sizes = (n_colors + 1, n_shapes + 2, 3, grid, grid)
        self.grid = grid
        self.n_counts, self.n_count_cls = n_shapes + 1, max_count + 1

    def loss(self, tokens, t, stats: dict | None = None):  # tokens [B, N, D]; t: dict of target tensors
        pc, ps, pz, prow, pcol = self.patch(tokens).split(self.sizes, -1)
        B, N = tokens.shape[:2]
        where = torch.arange(N, device=tokens.device).expand(B, N)  # each token keeps its place, for left/right etc.
        g = self.image(tokens.mean(1))
        counts = g[:, : self.n_counts * self.n_count_cls].reshape(-1, self.n_counts, self.n_count_cls)
        parts = {"color": (pc, t["color"]), "shape": (ps, t["shape"]), "size": (pz, t["size"]),
                 "row": (prow, where // self.grid), "col": (pcol, where % self.grid),
                 "counts": (counts, t["counts"]),
                 "char": (g[:, self.n_counts * self.n_count_cls: g.shape[1] - self.n_pairs], t["char"])}
        pairs = g[:, g.shape[1] - self.n_pairs:]  # is there a <colour> <shape>? (multi-label)
        loss = F.binary_cross_entropy_with_logits(pairs, t["present"].float()) * 4
        if stats is not None:
            stats.setdefault("present", []).append(float(((pairs > 0) == (t["present"] > 0.5)).all(1).float().mean()))
        for k, (x, y) in parts.items():
            x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
            loss = loss + F.cross_entropy(x, y)
            if stats is not None:  # accuracy on the cells that hold something (patches) or on every image
                keep = y > 0 if k in ("color", "shape", "size") else torch.ones_like(y, dtype=torch.bool)
                if k in ("row", "col"):
                    continue
                hit = (x.argmax(-1) == y)[keep].float()
                stats.setdefault(k, []).append(float(hit.mean()) if hit.numel() else 1.0)
                if k == "shape":  # small and large objects apart: where does shape recognition fail?
                    for name, z in (("small", 1), ("large", 2)):
                        sel = (t["size"].reshape(-1) == z)
                        h = (x.argmax(-1) == y)[sel].float()
                        if h.numel():
                            stats.setdefault(f"shape_{name}", []).append(float(h.mean()))
        return loss


__all__ = ["TrainableMoondream", "AuxHeads", "math"]
