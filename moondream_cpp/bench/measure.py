"""One measurement in a fresh process: load, image encode, prefill, decode, cold first answer, follow-up, peak RSS.
Prints one JSON object. Run by moondream_cpp.bench for every variant and repeat:

    python -m moondream_cpp.bench.measure --engine llama --text T.gguf --mmproj M.gguf --image IMG [--low-ram]
    python -m moondream_cpp.bench.measure --engine torch --checkpoint DIR --dtype bf16 --image IMG
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

QUESTION = "Describe this image."
FOLLOW_UP = "What colour is it?"
ANOTHER = "Is there a person?"  # another question about the same image, no history: encode once, ask many


def peak_rss_mb() -> float:
    """The process's peak resident set (VmHWM), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _timed_stream(stream, t0: float):
    """Drain a streamed answer: (the stream, seconds to its first piece, seconds to its end), both from t0."""
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter() - t0
    return stream, first, time.perf_counter() - t0


class _FirstToken:
    """A should_stop hook that notes when it is first asked: the prompt is evaluated and the first token's logits
    are ready (sampling it takes ~0.01 ms). With random weights the first *text* can come several tokens later."""

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
    kw = {"n_threads": a.threads, "n_ctx": a.n_ctx}
    kw.update(json.loads(a.settings or "{}"))
    t0 = time.perf_counter()
    md = Moondream.load(a.text, a.mmproj, low_ram=a.low_ram, **kw)
    load_s = time.perf_counter() - t0
    # cold first answer: encode + prefill + N tokens, as a user's first question
    t0 = time.perf_counter()
    first = md.query(img, QUESTION, max_tokens=a.tokens)
    cold_s = time.perf_counter() - t0
    enc = md.encode_image(img)  # cached now: the follow-ups below reuse it
    t0 = time.perf_counter()
    follow_tok = _FirstToken(t0)
    s, ttft, follow_s = _timed_stream(md.query(enc, FOLLOW_UP, history=[(QUESTION, first.text)], max_tokens=a.tokens,
                                               stream=True, should_stop=follow_tok), t0)
    t0 = time.perf_counter()
    another_tok = _FirstToken(t0)
    s2, another_ttft, another_s = _timed_stream(md.query(enc, ANOTHER, max_tokens=a.tokens, stream=True,
                                                         should_stop=another_tok), t0)
    t = first.timings
    return {"load_s": load_s, "encode_ms": t["image_encode_ms"], "prefill_tokens": t["prompt_evaluated"],
            "prefill_tok_s": t["prompt_per_second"], "decode_tok_s": t["generation_per_second"],
            "generated": t["generated_tokens"], "cold_s": cold_s,
            "cold_ttft_s": (t["image_encode_ms"] + t["prompt_ms"]) / 1000, "followup_ttft_s": ttft,
            "followup_s": follow_s, "followup_evaluated": s.answer.timings["prompt_evaluated"],
            "followup_first_token_s": follow_tok.at, "another_ttft_s": another_ttft,
            "another_first_token_s": another_tok.at, "another_s": another_s,
            "another_evaluated": s2.answer.timings["prompt_evaluated"],
            "peak_rss_mb": peak_rss_mb()}


def torch_run(a) -> dict:
    import torch

    from moondream_cpp.image import load_image
    from moondream_cpp.reference import ReferenceMoondream

    torch.set_num_threads(a.threads or os.cpu_count())
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    # GPU work is queued: a time stamp waits for it (the decode loop's argmax waits for each token anyway)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    img = load_image(a.image)
    t0 = time.perf_counter()
    ref = ReferenceMoondream(a.checkpoint, dtype=dtype, device=a.device)
    sync()
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        emb = ref.encode_image(img)
        sync()
        t1 = time.perf_counter()
        prompt = ref.prompt_embeds(emb, QUESTION)
        logits, cache = ref.forward(prompt)
        sync()
        t2 = time.perf_counter()
        ids = []
        for _ in range(a.tokens):  # greedy, with the KV cache, as HF generate
            tok = int(torch.argmax(ref._masked(logits[-1])))
            ids.append(tok)
            logits, cache = ref.forward(ref.embed([tok]), cache)
        t3 = time.perf_counter()
        follow = ref.prompt_embeds(emb, FOLLOW_UP, [(QUESTION, ref.tokenizer.decode(ids))])
        t4 = time.perf_counter()
        ref.forward(follow)  # the reference keeps no prefix: a follow-up re-evaluates the whole prompt
        sync()
        t5 = time.perf_counter()
        ref.forward(ref.prompt_embeds(emb, ANOTHER))  # the image's embeddings are reused, its prefill is not
        sync()
        t6 = time.perf_counter()
    return {"load_s": load_s, "encode_ms": (t1 - t0) * 1000, "prefill_tokens": prompt.shape[0],
            "prefill_tok_s": prompt.shape[0] / (t2 - t1), "decode_tok_s": a.tokens / (t3 - t2),
            "generated": a.tokens, "cold_s": t3 - t0, "cold_ttft_s": t2 - t0, "followup_ttft_s": t5 - t4,
            "another_ttft_s": t6 - t5, "peak_rss_mb": peak_rss_mb(),
            **({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if a.device.startswith("cuda") else {})}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["llama", "torch"], default="llama")
    ap.add_argument("--text")
    ap.add_argument("--mmproj")
    ap.add_argument("--checkpoint")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device", default="cpu", help="torch engine: cpu or cuda")
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--low-ram", action="store_true")
    ap.add_argument("--settings", help="JSON of Settings overrides")
    a = ap.parse_args(argv)
    out = llama_run(a) if a.engine == "llama" else torch_run(a)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
