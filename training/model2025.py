"""A trainable 2025 moondream2 whose state_dict, with "model." in front, has exactly the HF checkpoint's names
(moondream_cpp/spec2025.py): vision tower, the 2304-style projector over [global || pooled], Phi text model with prefix
attention, and the region head. Batched for training: several independent tasks about one image share its prefix.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

COORD_ROW, SIZE_ROW = -1, -2  # ids marking rows fed as region encodings instead of token embeddings


def gelu(x):
    return F.gelu(x, approximate="tanh")


class Named(nn.Module):
    """A bare container: attributes become dotted state_dict names."""

    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v)


def mlp(d_in, d_hidden, d_out):
    return Named(fc1=nn.Linear(d_in, d_hidden), fc2=nn.Linear(d_hidden, d_out))


def run_mlp(m, x):
    return m.fc2(gelu(m.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Named(qkv=nn.Linear(d, 3 * d), proj=nn.Linear(d, d))
        self.mlp = mlp(d, ff, d)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.attn.qkv(self.ln1(x)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        return x + run_mlp(self.mlp, self.ln2(x))


class TextBlock(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads, self.rot = heads, (d // heads) // 2
        self.ln = nn.LayerNorm(d)
        self.attn = Named(qkv=nn.Linear(d, 3 * d), proj=nn.Linear(d, d))
        self.mlp = mlp(d, ff, d)

    def rope(self, x, cos, sin):  # NEOX pairs (i, i + rot/2) over the first `rot` dims of each head
        r = self.rot
        x1, x2, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)

    def forward(self, x, cos, sin, mask):
        B, T, D = x.shape
        h = self.ln(x)
        q, k, v = self.attn.qkv(h).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None]).transpose(1, 2).reshape(B, T, D)
        return x + self.attn.proj(a) + run_mlp(self.mlp, h)  # Phi: attention and MLP in parallel


class Moondream2025(nn.Module):
    def __init__(self, dims: dict):
        super().__init__()
        V, T, R = dims["vision"], dims["text"], dims["region"]
        self.dims = dims
        self.patch, self.grid = V["enc_patch_size"], V["crop_size"] // V["enc_patch_size"]
        ve, td = V["enc_dim"], T["dim"]
        self.vision = Named(patch_emb=nn.Linear(3 * self.patch ** 2, ve),
                            blocks=nn.ModuleList(VisionBlock(ve, V["enc_n_heads"], V["enc_ff_dim"])
                                                 for _ in range(V["enc_n_layers"])),
                            post_ln=nn.LayerNorm(ve), proj_mlp=mlp(2 * ve, V["proj_inner_dim"], td))
        self.vision.pos_emb = nn.Parameter(torch.zeros(1, self.grid ** 2, ve))
        self.text = Named(blocks=nn.ModuleList(TextBlock(td, T["n_heads"], T["ff_dim"]) for _ in range(T["n_layers"])),
                          post_ln=nn.LayerNorm(td), lm_head=nn.Linear(td, T["vocab_size"]))
        self.text.wte = nn.Parameter(torch.randn(T["vocab_size"], td) * 0.02)
        self.region = Named(coord_encoder=nn.Linear(R["coord_feat_dim"], td),
                            coord_decoder=mlp(td, R["inner_dim"], R["coord_out_dim"]),
                            size_encoder=nn.Linear(R["size_feat_dim"], td),
                            size_decoder=mlp(td, R["inner_dim"], R["size_out_dim"]))
        g = torch.Generator().manual_seed(1)
        # fixed Fourier frequencies: periods from the whole image down to about a fiftieth of it
        self.region.coord_features = nn.Parameter(torch.randn(1, R["coord_feat_dim"] // 2, generator=g) * 8,
                                                  requires_grad=False)
        self.region.size_features = nn.Parameter(torch.randn(2, R["size_feat_dim"] // 2, generator=g) * 8,
                                                 requires_grad=False)
        rot = (td // T["n_heads"]) // 2
        inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2).float() / rot))
        f = torch.outer(torch.arange(T["max_context"]).float(), inv)
        self.register_buffer("cos", f.cos(), persistent=False)
        self.register_buffer("sin", f.sin(), persistent=False)

    # ------------------------------------------------------------------------------------------------ vision
    def encode_crops(self, crops):
        """uint8 [n, S, S, 3] -> post_ln features [n, grid*grid, enc_dim]."""
        v, p, g = self.vision, self.patch, self.grid
        x = crops.float().div(255).sub(0.5).div(0.5).permute(0, 3, 1, 2)
        n = x.shape[0]
        x = x.reshape(n, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * p * p)
        x = v.patch_emb(x) + v.pos_emb
        for blk in v.blocks:
            x = blk(x)
        return v.post_ln(x)

    def project(self, features):
        """[B, grid*grid, 2*enc_dim] (global || pooled local) -> image embeddings [B, grid*grid, dim]."""
        return run_mlp(self.vision.proj_mlp, features)

    # ------------------------------------------------------------------------------------------------ region
    @staticmethod
    def fourier(values, w):
        f = 2 * math.pi * values @ w
        return torch.cat([f.cos(), f.sin()], -1)

    def encode_coordinate(self, values):  # [...] in [0, 1] -> [..., dim]
        return self.region.coord_encoder(self.fourier(values[..., None], self.region.coord_features))

    def encode_size(self, sizes):  # [..., 2] -> [..., dim]
        return self.region.size_encoder(self.fourier(sizes, self.region.size_features))

    # ------------------------------------------------------------------------------------------------ text
    def forward(self, features, bos, ids, coords, sizes, segments, wte=None):
        """Residual stream before post_ln [B, P + T, dim] for [BOS][image rows][text], P = 1 + grid^2.

        ids [B, T]: token ids, or COORD_ROW / SIZE_ROW where coords [B, T] / sizes [B, T, 2] give the row's value.
        segments [B, T]: independent tasks; each attends to the prefix and causally to itself, positions restarting
        at P. The prefix attends both ways within itself (the 2025 prefix attention). wte: the embedding table the
        ids index (default the model's own)."""
        wte = self.text.wte if wte is None else wte
        img = self.project(features)
        B, T = ids.shape
        tok = wte[ids.clamp(min=0)]
        x = torch.where((ids == COORD_ROW)[..., None], self.encode_coordinate(coords), tok)
        x = torch.where((ids == SIZE_ROW)[..., None], self.encode_size(sizes), x)
        x = torch.cat([wte[torch.full((B, 1), bos, dtype=torch.long)], img, x], 1)
        P = 1 + img.shape[1]
        seg = torch.cat([torch.full((B, P), -1, dtype=torch.long), segments], 1)
        start = torch.ones_like(seg, dtype=torch.bool)
        start[:, 1:] = seg[:, 1:] != seg[:, :-1]
        idx = torch.arange(P + T).expand(B, P + T)
        first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 1).values
        pos = torch.where(seg < 0, idx, P + idx - first)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        causal = torch.ones(P + T, P + T, dtype=torch.bool).tril()
        both = (seg[:, :, None] < 0) & (seg[:, None, :] < 0)  # prefix rows see the whole prefix
        mask = both | (causal & ((seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] < 0)))
        for blk in self.text.blocks:
            x = blk(x, cos, sin, mask)
        return x

    def checkpoint_state(self) -> dict:
        return {"model." + k: v for k, v in self.state_dict().items()}
