"""Train the bundled demo model v2: a tiny 2025-architecture moondream2 (multi-crop vision, prefix attention, region
head) that answers, captions, detects and points on synthetic scenes, on CPU, reproducibly.

    python -m training.train_demo2025 --out gguf_models/demo2025

It starts from the 2024 demo (gguf_models/demo/checkpoint, itself `python -m training.train_demo`): its vision tower
is kept as it is (so every image's crop features are computed once), its text blocks and the embeddings of the words
it knew are the starting point; the 2025 projector, the GPT-2 token rows and the region head are learned here.
Writes OUT/checkpoint (config.json, model.safetensors, tokenizer.json: the 2025 HF layout) and the GGUF pair.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer

from moondream_cpp import spec2025

from . import synth2025
from .data2025 import Features
from .init2025 import from_2024_demo
from .model2025 import Moondream2025
from .tasks2025 import CONTINUE, task_row

REVISION = "2025-03-27"
ROOT = Path(__file__).resolve().parent.parent
DIMS = {
    "text": dict(dim=128, ff_dim=512, n_layers=4, vocab_size=51200, max_context=512, n_heads=4, n_kv_heads=4,
                 prefix_attn=65),
    "vision": dict(enc_dim=128, enc_patch_size=14, enc_n_layers=4, enc_ff_dim=512, enc_n_heads=4, proj_out_dim=128,
                   crop_size=112, in_channels=3, max_crops=6, overlap_margin=2, proj_inner_dim=512),
    "region": dict(dim=128, coord_feat_dim=64, coord_out_dim=1024, size_feat_dim=128, size_out_dim=2048,
                   inner_dim=256),
}
SIGMA_BINS = 10.0  # width of the soft coordinate/size targets: 1% of the image, 7% of a size (log2 bins)
REST_LOGIT = -30.0  # every token the demo never uses: zero head row, this bias (its softmax mass is kept exactly)


def gpt2_tokenizer_json() -> dict:
    """The checkpoint's tokenizer: GPT-2's vocabulary and merges plus CodeGen's whitespace tokens, as the 2025 GPT-2
    revisions carry; built from the GPT-2 vocabulary file in the llama-cpp-python sdist (tests/vocab.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import phi_tokenizer_json

    return phi_tokenizer_json()


class Batcher:
    def __init__(self, tok: Tokenizer, rev, used_ids):
        self.rev, self.tok = rev, tok
        self.index = {t: k for k, t in enumerate(used_ids)}  # token id -> row of the restricted softmax

    def encode(self, text):
        return self.tok.encode(text).ids

    def __call__(self, tasks_per_image):
        rows = [[task_row(t, self.encode, self.rev) for t in tasks] for tasks in tasks_per_image]
        n = max(sum(len(r.ids) for r in rs) for rs in rows)
        B = len(rows)
        ids = torch.zeros(B, n, dtype=torch.long)
        coords, sizes = torch.zeros(B, n), torch.zeros(B, n, 2)
        lm, coord = torch.full((B, n), -100, dtype=torch.long), torch.full((B, n), -1, dtype=torch.long)
        size = torch.full((B, n, 2), -1, dtype=torch.long)
        segs = torch.full((B, n), 10_000, dtype=torch.long)  # padding: a segment of its own
        for b, rs in enumerate(rows):
            at = 0
            for k, r in enumerate(rs):
                s = slice(at, at + len(r.ids))
                ids[b, s] = torch.tensor([self.index[t] if t >= 0 else t for t in r.ids])
                coords[b, s] = torch.tensor(r.coords)
                sizes[b, s] = torch.tensor(r.sizes)
                lm[b, s] = torch.tensor([self.index[t] if t >= 0 else -100 for t in r.lm])
                coord[b, s] = torch.tensor(r.coord)
                size[b, s] = torch.tensor(r.size)
                segs[b, s] = k
                at += len(r.ids)
        return ids, coords, sizes, lm, coord, size, segs


def soft_ce(logits, labels, sigma):
    """Cross-entropy against a Gaussian over neighbouring bins: near misses cost less, so bins learn an order."""
    bins = torch.arange(logits.shape[-1], dtype=torch.float32)
    q = torch.exp(-0.5 * ((bins - labels[..., None].float()) / sigma) ** 2)
    q = q / q.sum(-1, keepdim=True)
    return -(q * F.log_softmax(logits.float(), -1)).sum(-1).mean()


class UsedTokens(torch.nn.Module):
    """The embedding and head rows of the tokens the demo uses: trained in place of the full 51200-row tables (the
    other rows never move: zero head rows at REST_LOGIT), and written back into them by `store`."""

    def __init__(self, model, used):
        super().__init__()
        self.used = torch.tensor(used)
        self.wte = torch.nn.Parameter(model.text.wte.detach()[self.used].clone())
        self.head_w = torch.nn.Parameter(model.text.lm_head.weight.detach()[self.used].clone())
        self.head_b = torch.nn.Parameter(model.text.lm_head.bias.detach()[self.used].clone())
        self.n_rest = model.text.wte.shape[0] - len(used)

    @torch.no_grad()
    def store(self, model):
        model.text.wte[self.used] = self.wte
        model.text.lm_head.weight[self.used] = self.head_w
        model.text.lm_head.bias[self.used] = self.head_b


def losses(model, rows: UsedTokens, batch, feats, bos, stats):
    """bos and the batch's token ids index rows.used."""
    ids, coords, sizes, lm, coord, size, segs = batch
    h = model(feats.float(), bos, ids, coords, sizes, segs, wte=rows.wte)[:, -ids.shape[1]:]
    out = {}
    sel = lm >= 0
    hs = model.text.post_ln(h[sel])
    logits = hs @ rows.head_w.T + rows.head_b
    n_rest = rows.n_rest
    rest = torch.full((logits.shape[0], 1), REST_LOGIT + float(np.log(n_rest)))
    logits = torch.cat([logits, rest], 1)
    out["lm"] = F.cross_entropy(logits, lm[sel])
    stats.setdefault("lm_acc", []).append(float((logits.argmax(-1) == lm[sel]).float().mean()))
    R = model.region
    sel = coord >= 0
    c_logits = R.coord_decoder.fc2(F.gelu(R.coord_decoder.fc1(h[sel]), approximate="tanh"))
    out["coord"] = soft_ce(c_logits, coord[sel], SIGMA_BINS)
    # within 32 bins (3% of the image): about what a box needs for IoU >= 0.5 on the demo's shapes
    stats.setdefault("coord_32", []).append(float(((c_logits.argmax(-1) - coord[sel]).abs() <= 32).float().mean()))
    sel = size[..., 0] >= 0
    s_logits = R.size_decoder.fc2(F.gelu(R.size_decoder.fc1(h[sel]), approximate="tanh")).reshape(-1, 2, 1024)
    out["size"] = soft_ce(s_logits, size[sel], SIGMA_BINS)
    stats.setdefault("size_32", []).append(float(((s_logits.argmax(-1) - size[sel]).abs() <= 32).float().mean()))
    return out


def sample_tasks(rng, data, idx, n_questions, n_regions, queries=synth2025.training_queries):
    return [synth2025.tasks(rng, data.scenes[i], n_questions, n_regions, queries) for i in idx]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, default=ROOT / "gguf_models" / "demo" / "checkpoint",
                    help="the 2024 demo checkpoint to start from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--small-images", type=int, default=6000,
                    help="extra training images of long side %d..%d px (mostly one crop: a scarce group otherwise)"
                         % synth2025.SMALL_SIZES)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--questions", type=int, default=2, help="questions per image per step (plus caption, detect, "
                                                              "point)")
    ap.add_argument("--regions", type=int, default=2, help="detect and point tasks per image per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--cache", type=Path, help="keep the computed vision features here (a rerun with the same seed and "
                                               "image count reads them back)")
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    rev = spec2025.REVISIONS_2025[REVISION]
    tok_json = gpt2_tokenizer_json()
    tok = Tokenizer.from_str(json.dumps(tok_json))
    model = Moondream2025(DIMS)
    used = from_2024_demo(model, a.init, tok, rev, CONTINUE, REST_LOGIT, rng_texts(rev, tok))
    for p in [*model.vision.parameters(), model.text.wte, *model.text.lm_head.parameters()]:
        p.requires_grad_(False)  # the tower as it is (its features are computed once below); token rows: UsedTokens
    for p in model.vision.proj_mlp.parameters():
        p.requires_grad_(True)
    batcher = Batcher(tok, rev, used)
    used_t = UsedTokens(model, used)
    log = lambda m: print(m, flush=True)  # noqa: E731
    data = cached(a.cache, f"features-{a.seed}-{a.images}.pt",
                  lambda: Features(model, DIMS, a.seed, a.images, workers=a.threads, log=log))
    if a.small_images:
        data.extend(cached(a.cache, f"features-small-{a.seed}-{a.small_images}.pt",
                           lambda: Features(model, DIMS, a.seed + 20_000, a.small_images, workers=a.threads,
                                            log=log, sizes=synth2025.SMALL_SIZES)))
    val = Features(model, DIMS, a.seed + 10_000, 256, workers=1, log=lambda m: None)
    log(f"data: {len(data)} images ({data.multi_crop_share():.0%} multi-crop), {len(used)} tokens used, "
        f"{(time.time() - t0) / 60:.1f} min")
    params = [p for p in [*model.parameters(), *used_t.parameters()] if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98))
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.03 + 0.97 * 0.5 * (1 + np.cos(np.pi * min(1.0, s / a.steps)))))
    bos = batcher.index[rev.bos]
    order, pos, stats, t_train = rng.permutation(len(data)), 0, {}, time.time()
    for step in range(1, a.steps + 1):
        if pos + a.batch > len(order):
            order, pos = rng.permutation(len(data)), 0
        idx = np.sort(order[pos: pos + a.batch])
        pos += a.batch
        batch = batcher(sample_tasks(rng, data, idx, a.questions, a.regions))
        parts = losses(model, used_t, batch, data.features[idx], bos, stats)
        loss = parts["lm"] + parts["coord"] + parts["size"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            el = time.time() - t_train
            log(f"step {step} " + " ".join(f"{k} {v.item():.4f}" for k, v in parts.items()) + " " +
                " ".join(f"{k} {np.mean(v):.3f}" for k, v in stats.items()) +
                f" {el / step:.2f}s/step eta {el / step * (a.steps - step) / 60:.1f} min")
            stats = {}
        if step % a.eval_every == 0 or step == a.steps:
            log(f"step {step} val {evaluate(model, used_t, batcher, val, bos)}")
    used_t.store(model)
    save(model, tok_json, a, time.time() - t0)
    log(f"done in {(time.time() - t0) / 60:.1f} min")


def cached(folder, name, make):
    if folder is None:
        return make()
    path = Path(folder) / name
    if path.is_file():
        return torch.load(path, weights_only=False)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


@torch.no_grad()
def evaluate(model, used, batcher, val, bos):
    """Teacher-forced accuracy on held-out images: next tokens, coordinate and size bins within 32 of the truth."""
    rng, stats = np.random.default_rng(0), {}
    for s in range(0, len(val), 64):
        idx = np.arange(s, min(len(val), s + 64))
        losses(model, used, batcher(sample_tasks(rng, val, idx, 3, 1, synth2025.region_queries)), val.features[idx],
               bos, stats)
    return {k: round(float(np.mean(v)), 4) for k, v in stats.items()}


def rng_texts(rev, tok):
    """Every text the tasks can produce, for the set of token ids the demo uses (fixed seed: the same set always)."""
    from . import synth

    rng = np.random.default_rng(12345)
    texts = []
    for _ in range(6000):
        _, scene = synth.make_image(rng, synth.STYLES_TRAIN, (48, 64))
        for t in synth2025.tasks(rng, scene, 8):
            texts += [spec2025.template_text(rev.query, t.text), " " + t.answer, " " + t.text]
    return texts


def save(model, tok_json, a, seconds):
    ck = a.out / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.checkpoint_state().items()}
    save_file(state, str(ck / "model.safetensors"))
    (ck / spec2025.TOKENIZER_FILE).write_text(json.dumps(tok_json, ensure_ascii=False))
    config = {"architectures": ["HfMoondream"], "model_type": "moondream1", "config": DIMS,
              "torch_dtype": "float16", "moondream_name": "moondream-demo2025", "moondream_revision": REVISION,
              "training": {"command": "python -m training.train_demo2025 " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()), "minutes": round(seconds / 60, 1)}}
    (ck / "config.json").write_text(json.dumps(config, indent=1, default=str))
    from moondream_cpp.convert import convert

    for text_type in ("f16", "q8_0"):
        out = convert(ck, a.out, text_type, "f16", revision=REVISION, name="moondream-demo2025")
        print("wrote", out.text, out.mmproj, flush=True)


if __name__ == "__main__":
    main()
