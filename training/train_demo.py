"""Train the bundled demo model: a few-million-parameter moondream on synthetic VQA, on CPU, reproducibly.

    python -m training.train_demo --out gguf_models/demo          # under an hour on 2 cores

Writes the HF-layout checkpoint (config.json, model.safetensors, tokenizer.json) to OUT/checkpoint and the GGUF pair
made by our own converter to OUT. The recipe (docs/demo-model.md): every image is one moondream chat holding several
of its questions (history format, EOS after each answer), and training-only heads on the image tokens learn per-patch
colour/shape/size and per-image counts and glyphs alongside the answers, so the vision tower learns fast.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moondream_cpp import spec
from moondream_cpp.image import preprocess

from . import synth
from .model import AuxHeads, LocalHead, TrainableMoondream, mimetic_init

IMAGE_SIZE = 112
PATCH = 14
GRID = IMAGE_SIZE // PATCH
BOS = spec.BOS_TOKEN
TARGETS = ("color", "shape", "size", "counts", "char", "present")
LOCAL_STRIDE = 4


def build_tokenizer(texts, vocab_size) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def _chunk(args):
    """Images seed..: one chunk of the data set (own RNG stream, so the result does not depend on the workers)."""
    seed, chunk, n, styles = args
    rng = np.random.default_rng([seed, chunk])
    pixels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    scenes, tg, wt = [], [], []
    for i in range(n):
        img, scene = synth.make_image(rng, styles)
        pixels[i] = preprocess(img, IMAGE_SIZE)
        scenes.append(scene)
        tg.append(synth.patch_targets(scene, GRID))
        wt.append(synth.window_targets(scene, IMAGE_SIZE, PATCH, LOCAL_STRIDE))
    return (pixels, scenes, {k: np.stack([t[k] for t in tg]) for k in TARGETS},
            {k: np.stack([t[k] for t in wt]).astype(np.int8) for k in ("wcolor", "wshape", "wchar")})


class Data:
    """Images stretched to the model's input as moondream does, their scenes and per-patch / per-window targets."""

    CHUNK = 1000

    def __init__(self, seed, n_images, styles, workers=1):
        jobs = [(seed, c, min(self.CHUNK, n_images - c * self.CHUNK), styles)
                for c in range(-(-n_images // self.CHUNK))]
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_chunk, jobs)
        else:
            parts = [_chunk(j) for j in jobs]
        self.pixels = np.concatenate([p[0] for p in parts])
        self.scenes = [s for p in parts for s in p[1]]
        self.targets = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
        self.windows = {k: np.concatenate([p[3][k] for p in parts]) for k in parts[0][3]}

    def __len__(self):
        return len(self.scenes)


def chat(tok, pairs):
    """A moondream chat over `pairs` (history format): input ids after the image, and labels (answers + EOS)."""
    eos = tok.token_to_id(BOS)
    ids, labels = [], []
    for q, a in pairs:
        # the first turn opens with "\n\n" after the image; later ones follow "Answer: a\n\n" (TURN_FORMAT)
        prompt = tok.encode("\n\n" + spec.QUESTION_FORMAT.format(question=q) + "Answer:").ids
        answer = tok.encode(" " + a).ids
        ids += prompt + answer
        # position k predicts token k+1: the answer tokens, then EOS where the answer ends
        labels += [-100] * (len(prompt) - 1) + answer + [eos]
    return ids, labels[: len(ids)]


def drill(rng, scene) -> list:
    """Extra training questions on what the model learns last: a yes and a near-miss no (a colour or shape that is
    in the picture, but not together), and the place of an object (top/bottom first)."""
    if scene.kind != "shapes":
        return []
    objs, out = scene.objs, []
    present = {(o.color, o.shape) for o in objs}
    o = objs[int(rng.integers(len(objs)))]
    t = synth.TEMPLATES["yesno"]
    out.append(("yesno", str(rng.choice(t)).format(a=synth._article(o.color), c=o.color, s=o.shape), "yes"))
    near = [(o.color, s) for s in synth.SHAPES] + [(c, o.shape) for c in synth.COLORS]
    near = [p for p in near if p not in present]
    c, sh = near[int(rng.integers(len(near)))]
    out.append(("yesno", str(rng.choice(t)).format(a=synth._article(c), c=c, s=sh), "no"))
    for o in objs:
        nm = o.name(objs)
        if nm and (o.cy < 0.4 or o.cy > 0.6):
            out.append(("position", str(rng.choice(synth.TEMPLATES["tb"])).format(o=nm),
                        "top" if o.cy < 0.5 else "bottom"))
            break
    return out


def sample_chat(rng, scene, per_image):
    qs = synth.questions(rng, scene, n=per_image) + drill(rng, scene)
    order = rng.permutation(len(qs))
    return [(qs[j][1], qs[j][2]) for j in order]


def collate(tok, data, idx, rng, per_image, pad_id, p_chat):
    """A batch: per image either one chat (history format, p_chat of the time) or its questions packed as
    independent first turns (segments), so no answer can be read off an earlier one."""
    rows = []
    for i in idx:
        pairs = sample_chat(rng, data.scenes[i], per_image)
        if rng.random() < p_chat:
            x, y = chat(tok, pairs)
            rows.append((x, y, [0] * len(x)))
        else:
            x, y, g = [], [], []
            for k, pair in enumerate(pairs):
                xi, yi = chat(tok, [pair])
                x, y, g = x + xi, y + yi, g + [k] * len(xi)
            rows.append((x, y, g))
    n = max(len(x) for x, _, _ in rows)
    ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), n), -100, dtype=torch.long)
    segs = torch.full((len(idx), n), 10_000, dtype=torch.long)  # padding: a segment of its own
    for r, (x, y, g) in enumerate(rows):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        segs[r, : len(g)] = torch.tensor(g)
    targets = {k: torch.from_numpy(v[idx]) for k, v in data.targets.items()}
    return torch.from_numpy(data.pixels[idx]), ids, labels, segs, targets


@torch.no_grad()
def greedy_accuracy(model, tok, data, n_questions, seed=0, max_new=24):
    """First-turn greedy answers (as a user asks) against the truth, per question type."""
    model.eval()
    rng = np.random.default_rng(seed)
    eos = tok.token_to_id(BOS)
    right: dict[str, list] = {}
    for i in range(min(n_questions, len(data))):
        qs = synth.questions(rng, data.scenes[i], n=1, with_captions=False)
        t, q, a = qs[0]
        ids = tok.encode("\n\n" + spec.QUESTION_FORMAT.format(question=q) + "Answer:").ids
        out = []
        for _ in range(max_new):
            logits = model(torch.from_numpy(data.pixels[i: i + 1]), eos, None, torch.tensor([ids + out]))
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
        right.setdefault(t, []).append(tok.decode(out).strip().lower() == a.lower())
    model.train()
    acc = {t: round(float(np.mean(v)), 3) for t, v in sorted(right.items())}
    acc["overall"] = round(float(np.mean([x for v in right.values() for x in v])), 3)
    return acc


def _schedule(opt, steps, warm):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))


def _optimizer(named, lr, slow=(), slow_scale=1.0):
    """AdamW, no weight decay on vectors; parameters whose name starts with one of `slow` learn slow_scale x lr."""
    groups = []
    for is_slow in (False, True):
        part = [(n, p) for n, p in named if n.startswith(tuple(slow)) == is_slow] if slow else \
            (named if not is_slow else [])
        scale = slow_scale if is_slow else 1.0
        groups += [{"params": [p for _, p in part if p.ndim >= 2], "weight_decay": 0.05, "lr": lr * scale},
                   {"params": [p for _, p in part if p.ndim < 2], "weight_decay": 0.0, "lr": lr * scale}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98))


def pretrain_local(model, data, a, rng):
    """Stage 0: the token-local vision weights as a strided convolution on per-window outline/colour targets."""
    head = LocalHead(model, len(synth.COLORS), len(synth.SHAPES), len(synth.CHARS), stride=LOCAL_STRIDE)
    params = head.params()
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = _schedule(opt, a.local_steps, 50)
    t0, stats = time.time(), {}
    for step in range(1, a.local_steps + 1):
        idx = np.sort(rng.choice(len(data), a.local_batch, replace=False))
        t = {k: torch.from_numpy(v[idx]) for k, v in data.windows.items()}
        loss = head.loss(torch.from_numpy(data.pixels[idx]), t, stats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            acc = " ".join(f"{k} {np.mean(v):.3f}" for k, v in stats.items())
            print(f"local step {step} loss {loss.item():.4f} acc: {acc} {(time.time() - t0) / step:.2f}s/step",
                  flush=True)
            stats = {}


def pretrain_vision(model, aux, data, a, rng):
    """Stage 1: the vision tower + projector alone on the per-patch / per-image targets (cheap: no text)."""
    named = [(n, p) for n, p in model.named_parameters() if n.startswith("vision_encoder")] + \
        [("aux." + n, p) for n, p in aux.named_parameters()]
    opt = _optimizer(named, a.lr)
    sched = _schedule(opt, a.vision_steps, 100)
    t0, stats = time.time(), {}
    for step in range(1, a.vision_steps + 1):
        idx = np.sort(rng.choice(len(data), a.vision_batch, replace=False))
        targets = {k: torch.from_numpy(v[idx]) for k, v in data.targets.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            tokens = model.encode_images(torch.from_numpy(data.pixels[idx]))
        loss = aux.loss(tokens.float(), targets, stats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            acc = " ".join(f"{k} {np.mean(v):.3f}" for k, v in stats.items())
            print(f"vision step {step} aux {loss.item():.4f} acc: {acc} {(time.time() - t0) / step:.2f}s/step",
                  flush=True)
            stats = {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--steps", type=int, default=3200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--per-image", type=int, default=4, help="questions per training chat")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--p-chat", type=float, default=0.3, help="share of training images seen as one multi-turn chat")
    ap.add_argument("--aux", type=float, default=0.5, help="weight of the per-patch / per-image training heads")
    ap.add_argument("--vocab", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--v-dim", type=int, default=128)
    ap.add_argument("--v-layers", type=int, default=4)
    ap.add_argument("--t-dim", type=int, default=128)
    ap.add_argument("--t-layers", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=1500, help="stage 0: token-local vision weights as a conv")
    ap.add_argument("--local-batch", type=int, default=16)
    ap.add_argument("--vision-steps", type=int, default=2000, help="stage 1: vision tower alone on its targets")
    ap.add_argument("--vision-batch", type=int, default=64)
    ap.add_argument("--vision-lr-scale", type=float, default=0.3, help="vision learning rate / lr in the joint stage")
    ap.add_argument("--mimetic", action="store_true", help="mimetic attention init for the vision tower")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on CPUs with AVX512-BF16/AMX)")
    ap.add_argument("--eval-every", type=int, default=500)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    data = Data(a.seed, a.images, synth.STYLES_TRAIN, workers=a.threads)
    texts = []
    for s in data.scenes[:20000]:
        for _, q, ans in synth.questions(rng, s, n=8):
            texts += [q, " " + ans]
    texts += ["\n\nQuestion: x\n\nAnswer: y\n\n"] * 50
    tok = build_tokenizer(texts, a.vocab)
    n_vocab = -(-tok.get_vocab_size() // 64) * 64
    val = Data(a.seed + 10_000, 400, synth.STYLES_TRAIN)
    print(f"data: {len(data)} images, vocab {tok.get_vocab_size()} (padded {n_vocab}), {time.time() - t0:.0f}s",
          flush=True)

    model = TrainableMoondream(n_vocab, image_size=IMAGE_SIZE, v_dim=a.v_dim, v_layers=a.v_layers, t_dim=a.t_dim,
                               t_layers=a.t_layers, t_heads=a.t_dim // 32)
    if a.mimetic:
        mimetic_init(model.vision_encoder.encoder.model.visual.blocks, seed=a.seed)
    aux = AuxHeads(a.t_dim, len(synth.COLORS), len(synth.SHAPES), len(synth.CHARS), grid=GRID)
    print(f"model: {model.n_params() / 1e6:.2f}M parameters", flush=True)
    if a.local_steps:
        pretrain_local(model, data, a, rng)
    if a.vision_steps:
        pretrain_vision(model, aux, data, a, rng)
    params = list(model.named_parameters()) + [("aux." + n, p) for n, p in aux.named_parameters()]
    # the pre-trained vision tower moves slowly, so the text model learns to read it rather than bend it
    opt = _optimizer(params, a.lr, slow=("vision_encoder", "aux."), slow_scale=a.vision_lr_scale)
    sched = _schedule(opt, max(1, a.steps), 200)
    stats: dict = {}
    bos = tok.token_to_id(BOS)
    n_img = 1 + GRID * GRID
    order, pos = rng.permutation(len(data)), 0
    t_train = time.time()
    for step in range(1, a.steps + 1):
        if pos + a.batch > len(order):
            order, pos = rng.permutation(len(data)), 0
        idx = np.sort(order[pos: pos + a.batch])
        pos += a.batch
        img, ids, labels, segs, targets = collate(tok, data, idx, rng, a.per_image, bos, a.p_chat)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            logits, tokens = model(img, bos, None, ids, return_image=True, segments=segs)
            qa_loss = F.cross_entropy(logits[:, n_img:].float().reshape(-1, n_vocab), labels.reshape(-1),
                                      ignore_index=-100)
            aux_loss = aux.loss(tokens.float(), targets, stats)
        loss = qa_loss + a.aux * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            el = time.time() - t_train
            acc = " ".join(f"{k} {np.mean(v):.3f}" for k, v in stats.items())
            stats = {}
            print(f"step {step} qa {qa_loss.item():.4f} aux {aux_loss.item():.4f} ({acc}) lr "
                  f"{sched.get_last_lr()[0]:.2e} {el / step:.2f}s/step eta {el / step * (a.steps - step) / 60:.1f} min",
                  flush=True)
        if step % a.eval_every == 0 or step == a.steps:
            print(f"step {step} val accuracy {greedy_accuracy(model, tok, val, 300)}", flush=True)
    save(model, tok, a, n_vocab)
    print(f"done in {(time.time() - t0) / 60:.1f} min", flush=True)


def save(model, tok, a, n_vocab):
    ck = a.out / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ck / "model.safetensors"))
    tok.save(str(ck / "tokenizer.json"))
    blocks = model.text_model.transformer.h
    config = {
        "model_type": "moondream1", "moondream_revision": "2024-04-02", "moondream_name": "moondream-demo",
        "phi_config": {"model_type": "phi", "hidden_size": blocks[0].ln.normalized_shape[0],
                       "num_attention_heads": blocks[0].heads, "num_hidden_layers": len(blocks),
                       "partial_rotary_factor": 0.5, "max_position_embeddings": 512, "layer_norm_eps": 1e-5,
                       "vocab_size": n_vocab},
        "vision_config": {"num_heads": model.vision_encoder.encoder.model.visual.blocks[0].heads},
        "training": {"seed": a.seed, "images": a.images, "steps": a.steps, "batch": a.batch, "lr": a.lr,
                     "command": "python -m training.train_demo " + " ".join(
                         f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                         if not isinstance(v, bool)) + "".join(
                         f" --{k}" for k, v in vars(a).items() if v is True)},
    }
    (ck / "config.json").write_text(json.dumps(config, indent=1))
    from moondream_cpp.convert import convert

    out = convert(ck, a.out, "f16", "f16", name="moondream-demo")
    print("wrote", out.text, out.mmproj, flush=True)


if __name__ == "__main__":
    main()
