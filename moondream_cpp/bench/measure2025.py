"""One 2025-model measurement in a fresh process; prints one JSON object. Run by moondream_cpp.bench.run2025:

    python -m moondream_cpp.bench.measure2025 --engine llama --text T.gguf --mmproj M.gguf --image IMG [--encode-only]
    python -m moondream_cpp.bench.measure2025 --engine torch --checkpoint DIR --dtype bf16 --image IMG [--encode-only]

The answer run: load, then the cold first answer (encode + prefill + `tokens` greedy tokens), then another question
about the same image (a follow-up as upstream's API has it: the encoded image's prefix reused, no history).
--encode-only: load, then one image encode. The PyTorch side runs the reference (moondream_cpp.reference.md2025) as
upstream runs the model: every crop in one batch (a one-tile image's local crop too), the 730-row prefix through the
text model kept as the image's KV cache, the question and the answer after it with that cache.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from .measure import peak_rss_mb

QUESTION = "Describe this image."
ANOTHER = "Is there a person?"


class _FirstToken:
    """A should_stop hook that notes when it is first asked: the prompt is evaluated and the first token's logits
    are ready (measure.py says why this and not the first text)."""

    def __init__(self, t0: float):
        self.t0, self.at = t0, None

    def __call__(self) -> bool:
        if self.at is None:
            self.at = time.perf_counter() - self.t0
        return False


def llama_run(a) -> dict:
    from moondream_cpp import Moondream
    from moondream_cpp.image import load_image

    img = load_image(a.image)
    t0 = time.perf_counter()
    md = Moondream.load(a.text, a.mmproj, n_threads=a.threads, n_ctx=a.n_ctx)
    load_s = time.perf_counter() - t0
    a.native_build = _native_build()  # the library as loaded (a rebuild later replaces the file, not this copy)
    if a.encode_only:
        t0 = time.perf_counter()
        enc = md.encode_image(img, max_crops=a.max_crops)
        encode_ms = (time.perf_counter() - t0) * 1000
        t = md.multicrop.timings_of(enc.key)
        return {"load_s": load_s, "encode_ms": encode_ms, **_vision(t), "peak_rss_mb": peak_rss_mb()}
    t0 = time.perf_counter()
    first = md.query(img, QUESTION, max_tokens=a.tokens, temperature=0, max_crops=a.max_crops)
    cold_s = time.perf_counter() - t0
    t = first.timings
    enc = md.encode_image(img, max_crops=a.max_crops)  # from the cache; upstream asks about an EncodedImage too
    t0 = time.perf_counter()
    hook = _FirstToken(t0)
    s = md.query(enc, ANOTHER, max_tokens=a.tokens, temperature=0, stream=True, should_stop=hook)
    for _ in s:
        pass
    another_s = time.perf_counter() - t0
    return {"load_s": load_s, "encode_ms": t["image_encode_ms"], **_vision(t),
            "prefill_tokens": t["prompt_evaluated"], "prefill_s": t["prompt_ms"] / 1000,
            "decode_tok_s": t["generation_per_second"], "generated": t["generated_tokens"], "cold_s": cold_s,
            "cold_with_load_s": load_s + cold_s, "cold_ttft_s": (t["image_encode_ms"] + t["prompt_ms"]) / 1000,
            "another_first_token_s": hook.at, "another_s": another_s,
            "another_evaluated": s.answer.timings["prompt_evaluated"],
            "another_generated": s.answer.timings["generated_tokens"], "peak_rss_mb": peak_rss_mb()}


def _native_build() -> str:
    """When the loaded llama.cpp's CPU backend was built (its file's time, UTC): helpers rebuild it while benches run,
    so each run says which build it measured."""
    from pathlib import Path

    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu.so*"))
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(libs[0].stat().st_mtime)) if libs else "?"


def _vision(t: dict) -> dict:
    """The runtime's breakdown of an image encode (Answer.timings / MultiCropVision.timings_of)."""
    passes = t["vision_passes"]
    return {"tiling": t["image_tiling"], "vision_passes": passes, "vision_ms": t["vision_ms"],
            "vision_ms_per_crop": t["vision_ms"] / passes, "pool_ms": t["pool_ms"], "projector_ms": t["projector_ms"]}


def _reference(a):
    import json as _json
    from dataclasses import fields
    from pathlib import Path

    import torch

    from moondream_cpp.reference.md2025 import Reference2025, TextDims, VisionDims

    from .fullsize2025 import REVISION, load_weights

    ck = Path(a.checkpoint)
    cfg = _json.loads((ck / "config.json").read_text()).get("config") or {}

    def dims(cls, values):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    weights = load_weights(ck / "model.safetensors", dtype)
    return Reference2025(weights, dims(TextDims, cfg.get("text")), dims(VisionDims, cfg.get("vision")), REVISION,
                         dtype, a.max_crops)


def _prompt_ids(checkpoint: str, rev, question: str) -> list[int]:
    """The query template around the question's ids, tokenized by the checkpoint's tokenizer.json (the tokenizers
    library, as upstream tokenizes)."""
    from pathlib import Path

    from tokenizers import Tokenizer

    from moondream_cpp import spec2025

    tok = Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
    text = spec2025.template_text(rev.query, question)
    return spec2025.query_ids(rev, tok.encode(text, add_special_tokens=False).ids)


def torch_run(a) -> dict:
    import numpy as np
    import torch

    from moondream_cpp.image import load_image

    torch.set_num_threads(a.threads or os.cpu_count())
    img = load_image(a.image)
    t0 = time.perf_counter()
    ref = _reference(a)
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        glob, local, tiling = ref.crops(img)
        t1 = time.perf_counter()
        features = ref.encode_crops(np.concatenate([glob[None], local]))
        t2 = time.perf_counter()
        emb = ref.project(features, tiling)
        t3 = time.perf_counter()
        vision = {"tiling": list(tiling), "vision_passes": int(features.shape[0]), "vision_ms": (t2 - t1) * 1000,
                  "vision_ms_per_crop": (t2 - t1) * 1000 / features.shape[0], "pool_ms": None,
                  "projector_ms": (t3 - t2) * 1000}  # pool and projector together (ref.project)
        if a.encode_only:
            return {"load_s": load_s, "encode_ms": (t3 - t0) * 1000, **vision, "peak_rss_mb": peak_rss_mb()}
        cache: list = []
        ref.decode(ref.prefix(emb), cache, ref.prefix_rows)  # upstream's encode_image keeps this KV cache
        image_cache = list(cache)  # decode replaces each layer's (k, v) with new tensors: this copy stays as it is
        ids = _prompt_ids(a.checkpoint, ref.rev, QUESTION)
        h = ref.decode(ref.embed(ids), cache, ref.prefix_rows)[-1]
        t4 = time.perf_counter()
        out = _greedy(ref, cache, h, a.tokens)
        t5 = time.perf_counter()
        # another question: the image's KV cache as upstream's query(EncodedImage) reuses it, then its own answer
        cache = list(image_cache)
        h = ref.decode(ref.embed(_prompt_ids(a.checkpoint, ref.rev, ANOTHER)), cache, ref.prefix_rows)[-1]
        t6 = time.perf_counter()
        another = _greedy(ref, cache, h, a.tokens)
        t7 = time.perf_counter()
    return {"load_s": load_s, "encode_ms": (t3 - t0) * 1000, **vision, "prefill_tokens": ref.prefix_rows + len(ids),
            "prefill_s": t4 - t3, "decode_tok_s": len(out) / (t5 - t4), "generated": len(out), "cold_s": t5 - t0,
            "cold_with_load_s": load_s + (t5 - t0), "cold_ttft_s": t4 - t0, "another_first_token_s": t6 - t5,
            "another_s": t7 - t5, "another_generated": len(another), "peak_rss_mb": peak_rss_mb()}


def _greedy(ref, cache: list, h, n: int) -> list[int]:
    """n greedy tokens with the KV cache (fixed length, as the runtime's max_tokens; random weights seldom hit EOS)."""
    import torch

    out = []
    for _ in range(n):
        tok = int(torch.argmax(ref.head(h)))
        if tok == ref.rev.eos:
            break
        out.append(tok)
        h = ref.step(cache, ref.embed([tok]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["llama", "torch"], default="llama")
    ap.add_argument("--text")
    ap.add_argument("--mmproj")
    ap.add_argument("--checkpoint")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--max-crops", type=int, default=None)
    ap.add_argument("--encode-only", action="store_true")
    a = ap.parse_args(argv)
    load_avg = os.getloadavg()[0]
    out = llama_run(a) if a.engine == "llama" else torch_run(a)
    out["load_average_1m"] = load_avg
    if a.engine == "llama":
        out["native_build_utc"] = a.native_build
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
