"""A compact, readable PyTorch moondream (docs/architecture.md §1-§5), loaded from an HF checkpoint folder of any size.

Written from docs/architecture.md, independently of the GGUF runtime: it is what the runtime is measured against.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer

from moondream_cpp import spec
from moondream_cpp.convert.checkpoint import Checkpoint, load_checkpoint

V = spec.VISION_PREFIX
P = spec.PROJECTION_PREFIX


class ReferenceMoondream:
    def __init__(self, checkpoint: str | Path | Checkpoint, dtype: torch.dtype = torch.float32,
                 revision: str | None = None, device: str | torch.device = "cpu"):
        ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, revision)
        self.ck, self.rev, self.dtype, self.device = ck, ck.revision, dtype, torch.device(device)
        self.w = {n: torch.from_numpy(ck.tensors.get(n)).to(self.device, dtype) for n in ck.tensors.names()}
        self.tokenizer = Tokenizer.from_file(str(ck.path / "tokenizer.json"))
        self.bos = self.tokenizer.token_to_id(spec.BOS_TOKEN)
        self.n_real_tokens = self.tokenizer.get_vocab_size(with_added_tokens=True)
        t = ck.text
        inv = 1.0 / (spec.ROPE_BASE ** (torch.arange(0, t.rotary_dim, 2, dtype=torch.float64) / t.rotary_dim))
        freqs = torch.outer(torch.arange(t.n_ctx, dtype=torch.float64), inv)
        self.cos, self.sin = freqs.cos().float().to(self.device), freqs.sin().float().to(self.device)

    # ---------------------------------------------------------------- vision (docs/architecture.md §3, §1.2, §1.3)
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        s = self.ck.vision.image_size
        img = image.convert("RGB").resize((s, s), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, s, s]
        return ((x - 0.5) / 0.5).to(self.device)

    def _gelu_vision(self, x):
        return F.gelu(x, approximate="tanh" if self.rev.vision_gelu == "tanh" else "none")

    def _ln(self, x, prefix, eps):
        return F.layer_norm(x, x.shape[-1:], self.w[prefix + ".weight"], self.w[prefix + ".bias"], eps)

    def _linear(self, x, prefix):
        return F.linear(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"])

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """Projected image embeddings [n_patches, text width]."""
        vd, eps = self.ck.vision, self.rev.vision_eps
        x = self.preprocess(image).to(self.dtype)
        p = vd.patch_size
        g = vd.image_size // p
        x = x.reshape(3, g, p, g, p).permute(1, 3, 0, 2, 4).reshape(g * g, 3 * p * p)  # (h w) (c p1 p2)
        x = self._linear(x, V + "patch_embed.linear") + self.w[V + "pos_embed"][0]
        hd = vd.n_embd // vd.n_head
        for i in range(vd.n_layer):
            b = f"{V}blocks.{i}."
            h = self._ln(x, b + "norm1", eps)
            q, k, v = self._linear(h, b + "attn.qkv").reshape(-1, 3, vd.n_head, hd).permute(1, 2, 0, 3)
            a = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(hd), -1).to(self.dtype) @ v
            x = x + self._linear(a.transpose(0, 1).reshape(-1, vd.n_embd), b + "attn.proj")
            h = self._ln(x, b + "norm2", eps)
            x = x + self._linear(self._gelu_vision(self._linear(h, b + "mlp.fc1")), b + "mlp.fc2")
        x = self._ln(x, V + "norm", eps)
        return self._linear(self._gelu_vision(self._linear(x, P + "fc1")), P + "fc2")

    # ---------------------------------------------------------------- text (docs/architecture.md §1.4)
    def _rope(self, x, pos):  # x [heads, T, hd]; NeoX rotate-half on the first rotary_dim dims
        r = self.ck.text.rotary_dim
        cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)
        x1, x2, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, cache: list | None = None) -> tuple[torch.Tensor, list]:
        """Run the decoder over new embeddings [T, d] after `cache` (per-layer k, v). Returns fp32 logits [T, vocab]."""
        t = self.ck.text
        hd = t.n_embd // t.n_head
        past = 0 if not cache else cache[0][0].shape[1]
        T = embeds.shape[0]
        pos = torch.arange(past, past + T, device=self.device)
        mask = torch.full((T, past + T), float("-inf"), device=self.device).triu(past + 1)
        cache = cache or [None] * t.n_layer
        x = embeds.to(self.dtype)
        for i in range(t.n_layer):
            b = f"text_model.transformer.h.{i}."
            h = self._ln(x, b + "ln", t.eps)
            q, k, v = self._linear(h, b + "mixer.Wqkv").reshape(T, 3, t.n_head, hd).permute(1, 2, 0, 3)
            q, k = self._rope(q, pos), self._rope(k, pos)
            if cache[i] is not None:
                k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
            cache[i] = (k, v)
            att = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(hd) + mask, -1).to(self.dtype) @ v
            attn_out = self._linear(att.transpose(0, 1).reshape(T, t.n_embd), b + "mixer.out_proj")
            mlp_out = self._linear(F.gelu(self._linear(h, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
            x = x + attn_out + mlp_out  # parallel block: attention and MLP read the same h
        x = self._ln(x, "text_model.lm_head.ln", t.eps)
        return self._linear(x, "text_model.lm_head.linear").float(), cache

    # ------------------------------------------------------------ prompt (docs/architecture.md §4) and decoding (§5)
    def tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def embed(self, ids: list[int]) -> torch.Tensor:
        return self.w["text_model.transformer.embd.wte.weight"][torch.tensor(ids, dtype=torch.long, device=self.device)]

    def prompt_embeds(self, image_embeds: torch.Tensor, question: str, history=()) -> torch.Tensor:
        hist = "".join(spec.TURN_FORMAT.format(question=q, answer=a) for q, a in history)
        after = f"\n\n{hist}Question: {question}\n\n{self.rev.answer_prefix}"
        before = ""
        if self.rev.image_markers:
            before, after = before + spec.IMAGE_MARKERS[0], spec.IMAGE_MARKERS[1] + after
        parts = [self.embed([self.bos])]
        if before:
            parts.append(self.embed(self.tokens(before)))
        parts.append(image_embeds.to(self.dtype))
        parts.append(self.embed(self.tokens(after)))
        return torch.cat(parts)

    def _stop_ids(self) -> set[int]:
        if self.rev.stop_rule == "eos":
            return {self.bos}
        return set(self.tokens(spec.END_MARKER))  # HF generate stops on ANY of these ids

    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[self.n_real_tokens:] = float("-inf")  # padding rows have no token
        return logits

    @torch.no_grad()
    def logits(self, image: Image.Image | torch.Tensor, question: str, history=()) -> np.ndarray:
        emb = image if isinstance(image, torch.Tensor) else self.encode_image(image)
        out, _ = self.forward(self.prompt_embeds(emb, question, history))
        return out[-1].cpu().numpy()

    @torch.no_grad()
    def generate(self, image, question: str, max_tokens: int | None = None, history=()) -> tuple[list[int], str]:
        """Greedy answer: (token ids without the stop token, cleaned text) as the original answer_question."""
        emb = image if isinstance(image, torch.Tensor) else self.encode_image(image)
        logits, cache = self.forward(self.prompt_embeds(emb, question, history))
        stop, ids = self._stop_ids(), []
        for _ in range(max_tokens or self.rev.max_new_tokens):
            tok = int(torch.argmax(self._masked(logits[-1])))
            if tok in stop:
                break
            ids.append(tok)
            logits, cache = self.forward(self.embed([tok]), cache)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if self.rev.stop_rule == "end_marker":
            text = re.sub("<$|<END$", "", text)
        return ids, text.strip()
