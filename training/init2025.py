"""Start the demo v2 from the 2024 demo (training.train_demo's checkpoint): the same vision tower and text blocks under
their 2025 names, the projector widened to [global || pooled] (each half gets half the old weights, so an image whose
local view equals its global view projects as before), and each GPT-2 token row from the 2024 demo's tokens for the
same text. Tokens the demo never uses get a zero head row and a fixed low bias."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from moondream_cpp import spec

V24 = "vision_encoder.encoder.model.visual."
BLOCK_NAMES = {  # 2024 name (after the block prefix) -> 2025 name
    "vision": {"norm1": "ln1", "norm2": "ln2", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
    "text": {"ln": "ln", "mixer.Wqkv": "attn.qkv", "mixer.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"},
}


def used_token_ids(tok: Tokenizer, rev, extra, texts) -> list[int]:
    ids = {rev.bos, rev.eos, *extra}
    for ts in (rev.query.before, rev.query.after, rev.detect.before, rev.detect.after, rev.point.before,
               rev.point.after, *rev.captions.values()):
        ids.update(ts)
    for t in texts:
        ids.update(tok.encode(t).ids)
    return sorted(ids)


@torch.no_grad()
def from_2024_demo(model, checkpoint: Path, tok: Tokenizer, rev, continue_id: int, rest_logit: float,
                   texts) -> list[int]:
    """Copy the 2024 demo into `model` (a training.model2025.Moondream2025); returns the token ids the demo uses."""
    old = {k: v.float() for k, v in load_file(str(Path(checkpoint) / "model.safetensors")).items()}
    tok24 = Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
    sd = model.state_dict()

    def put(name, value):
        assert sd[name].shape == value.shape, (name, sd[name].shape, value.shape)
        sd[name].copy_(value)

    for suffix in ("weight", "bias"):
        put(f"vision.patch_emb.{suffix}", old[f"{V24}patch_embed.linear.{suffix}"])
        put(f"vision.post_ln.{suffix}", old[f"{V24}norm.{suffix}"])
        put(f"text.post_ln.{suffix}", old[f"text_model.lm_head.ln.{suffix}"])
        put(f"vision.proj_mlp.fc2.{suffix}", old[f"vision_encoder.projection.mlp.fc2.{suffix}"])
    put("vision.pos_emb", old[f"{V24}pos_embed"])
    fc1 = old["vision_encoder.projection.mlp.fc1.weight"]
    put("vision.proj_mlp.fc1.weight", torch.cat([fc1, fc1], 1) / 2)
    put("vision.proj_mlp.fc1.bias", old["vision_encoder.projection.mlp.fc1.bias"])
    for i in range(len(model.vision.blocks)):
        for a, b in BLOCK_NAMES["vision"].items():
            for suffix in ("weight", "bias"):
                put(f"vision.blocks.{i}.{b}.{suffix}", old[f"{V24}blocks.{i}.{a}.{suffix}"])
    for i in range(len(model.text.blocks)):
        for a, b in BLOCK_NAMES["text"].items():
            for suffix in ("weight", "bias"):
                put(f"text.blocks.{i}.{b}.{suffix}", old[f"text_model.transformer.h.{i}.{a}.{suffix}"])

    used = used_token_ids(tok, rev, [continue_id], texts)
    wte24, head24 = old["text_model.transformer.embd.wte.weight"], old["text_model.lm_head.linear.weight"]
    bias24 = old["text_model.lm_head.linear.bias"]
    wte, head_w, head_b = sd["text.wte"], sd["text.lm_head.weight"], sd["text.lm_head.bias"]
    head_w.zero_()
    head_b.fill_(rest_logit)
    eos24 = tok24.token_to_id(spec.BOS_TOKEN)
    g = torch.Generator().manual_seed(0)
    for t in used:
        if t == rev.eos:
            old_ids = [eos24]
        elif t == continue_id:
            old_ids = []
        else:
            old_ids = tok24.encode(tok.decode([t])).ids
        if old_ids:
            wte[t] = wte24[old_ids].mean(0)
            head_w[t], head_b[t] = head24[old_ids[0]], bias24[old_ids[0]]
        else:
            wte[t] = torch.randn(wte.shape[1], generator=g) * 0.02
            head_w[t], head_b[t] = torch.randn(wte.shape[1], generator=g) * 0.02, float(bias24.mean())
    return used

