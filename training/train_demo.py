"""Train the bundled demo model: a few-million-parameter moondream on synthetic VQA, on CPU, reproducibly.

    python -m training.train_demo --out gguf_models/demo          # about 55 minutes on 2 cores

Writes the HF-layout checkpoint (config.json, model.safetensors, tokenizer.json) to OUT/checkpoint and the GGUF pair
made by our own converter to OUT.
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
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moondream_cpp import spec

from . import synth
from .model import TrainableMoondream

IMAGE_SIZE = 112
BOS = spec.BOS_TOKEN


def build_tokenizer(texts, vocab_size) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def make_data(seed, n_images, styles):
    rng = np.random.default_rng(seed)
    pixels = np.zeros((n_images, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    qa = []
    for i in range(n_images):
        img, facts = synth.make_image(rng, styles)
        pixels[i] = np.asarray(img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        for t, q, a in synth.questions(rng, facts, n=3):
            qa.append((i, t, q, a))
    return pixels, qa


def encode_examples(tok, qa, rng):
    """One training sequence per image: all its questions as a moondream chat (history format), each answer
    followed by an EOS target. Returns (image index, input ids after the image, labels) per image."""
    by_img: dict[int, list] = {}
    for i, t, q, a in qa:
        by_img.setdefault(i, []).append((q, a))
    eos = tok.token_to_id(BOS)
    out = []
    for i, pairs in by_img.items():
        order = rng.permutation(len(pairs))
        ids, labels = [], []
        for n, j in enumerate(order):
            q, a = pairs[j]
            # the first turn opens with "\n\n" after the image; later ones follow "Answer: a\n\n" (TURN_FORMAT)
            prompt = tok.encode("\n\n" + spec.QUESTION_FORMAT.format(question=q)
                                + "Answer:").ids
            answer = tok.encode(" " + a).ids
            ids += prompt + answer
            # position k predicts token k+1: the answer tokens, then EOS where the answer ends
            labels += [-100] * (len(prompt) - 1) + answer + [eos]
        out.append((i, ids, labels[: len(ids)]))
    return out


def batches(examples, batch_size, rng):
    while True:
        order = rng.permutation(len(examples))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[j] for j in order[s: s + batch_size]]


def collate(batch, pixels, pad_id):
    n = max(len(ids) for _, ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for r, (_, x, y) in enumerate(batch):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
    img = torch.from_numpy(pixels[[i for i, _, _ in batch]])
    return img, ids, labels


@torch.no_grad()
def greedy_accuracy(model, tok, pixels, qa, max_new=24):
    model.eval()
    eos = tok.token_to_id(BOS)
    right = {}
    for i, t, q, a in qa:
        ids = tok.encode("\n\n" + spec.QUESTION_FORMAT.format(question=q) + "Answer:").ids
        out = []
        for _ in range(max_new):
            logits = model(torch.from_numpy(pixels[i: i + 1]), eos, None, torch.tensor([ids + out]))
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
        got = tok.decode(out).strip()
        right.setdefault(t, []).append(got.lower() == a.lower())
    model.train()
    return {t: float(np.mean(v)) for t, v in right.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--steps", type=int, default=6500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vocab", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--v-dim", type=int, default=128)
    ap.add_argument("--v-layers", type=int, default=4)
    ap.add_argument("--t-dim", type=int, default=128)
    ap.add_argument("--t-layers", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=500)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    pixels, qa = make_data(a.seed, a.images, synth.STYLES_TRAIN)
    texts = [q for _, _, q, _ in qa] + [" " + ans for _, _, _, ans in qa] + ["\n\nQuestion: x\n\nAnswer: y\n\n"] * 50
    tok = build_tokenizer(texts, a.vocab)
    n_vocab = -(-tok.get_vocab_size() // 64) * 64
    examples = encode_examples(tok, qa, rng)
    val_px, val_qa = make_data(a.seed + 10_000, 300, synth.STYLES_TRAIN)
    val_qa = [r for r in val_qa if r[1] != "caption"][:300]
    print(f"data: {len(pixels)} images, {len(qa)} questions in {len(examples)} chats, vocab {tok.get_vocab_size()} "
          f"(padded {n_vocab}), {time.time() - t0:.0f}s", flush=True)

    model = TrainableMoondream(n_vocab, image_size=IMAGE_SIZE, v_dim=a.v_dim, v_layers=a.v_layers, t_dim=a.t_dim,
                               t_layers=a.t_layers, t_heads=a.t_dim // 32)
    print(f"model: {model.n_params() / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98))
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps)))))
    bos = tok.token_to_id(BOS)
    it = batches(examples, a.batch, rng)
    t_train = time.time()
    for step in range(1, a.steps + 1):
        img, ids, labels = collate(next(it), pixels, bos)
        logits = model(img, bos, None, ids)
        text_logits = logits[:, 1 + (IMAGE_SIZE // 14) ** 2:]
        loss = F.cross_entropy(text_logits.reshape(-1, n_vocab), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            el = time.time() - t_train
            print(f"step {step} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} {el / step:.2f}s/step "
                  f"eta {el / step * (a.steps - step) / 60:.1f} min", flush=True)
        if step % a.eval_every == 0 or step == a.steps:
            acc = greedy_accuracy(model, tok, val_px, val_qa[:150])
            print(f"step {step} val accuracy {acc}", flush=True)
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
                         f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items())},
    }
    (ck / "config.json").write_text(json.dumps(config, indent=1))
    from moondream_cpp.convert import convert

    for t in ["f16"]:
        out = convert(ck, a.out, t, t, name="moondream-demo")
        print("wrote", out.text, out.mmproj, flush=True)


if __name__ == "__main__":
    main()
