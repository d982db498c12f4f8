"""What installing the hidden-state eval callback (moondream_cpp/hidden_state.py) costs ordinary decoding: one-token
decodes per second on two contexts of the same model, one without cb_eval, one with it (unarmed, and armed), taken
in turns so the shared machine's load falls on all alike.

    python experiments/region-callback-overhead/measure.py TEXT.gguf [--tokens 64] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

from moondream_cpp.hidden_state import HiddenStateCapture
from moondream_cpp.native import llama
from moondream_cpp.native_handles import TextModel


def make_context(L, model, callback, threads):
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 512, 512, 512, 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    if callback is not None:
        cp.cb_eval = callback
    return L.llama_init_from_model(model.ptr, cp)


def tokens_per_second(L, ctx, n_tokens, batch):
    """Wall-clock one-token decodes per second (the CPU time per token goes to CPU_MS: with one thread it is the
    work done, less disturbed by the shared machine's load)."""
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    c0, t0 = time.process_time(), time.perf_counter()
    for pos in range(n_tokens):
        b = batch.ptr
        b.n_tokens = 1
        b.token[0], b.pos[0], b.n_seq_id[0], b.seq_id[0][0], b.logits[0] = 1000 + pos, pos, 1, 0, True
        assert L.llama_decode(ctx, b) == 0
    CPU_MS.append((time.process_time() - c0) * 1000 / n_tokens)
    return n_tokens / (time.perf_counter() - t0)


CPU_MS: list = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text_gguf")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    L = llama()
    from moondream_cpp.native_handles import Batch

    model = TextModel(a.text_gguf, 0, True, True)
    n_layer = L.llama_model_n_layer(model.ptr)
    capture = HiddenStateCapture(n_layer, model.n_embd)
    plain = make_context(L, model, None, a.threads)
    hooked = make_context(L, model, capture.callback, a.threads)
    batch = Batch(1)
    runs = {"no callback": [], "callback, unarmed": [], "callback, armed": []}
    cpu = {k: [] for k in runs}
    for ctx in (plain, hooked):  # warm-up
        tokens_per_second(L, ctx, 8, batch)
    for _ in range(a.rounds):
        runs["no callback"].append(tokens_per_second(L, plain, a.tokens, batch))
        cpu["no callback"].append(CPU_MS[-1])
        runs["callback, unarmed"].append(tokens_per_second(L, hooked, a.tokens, batch))
        cpu["callback, unarmed"].append(CPU_MS[-1])
        with capture.armed():
            runs["callback, armed"].append(tokens_per_second(L, hooked, a.tokens, batch))
        cpu["callback, armed"].append(CPU_MS[-1])
        assert capture.rows is not None and capture.rows.shape == (1, model.n_embd)
    base = statistics.median(runs["no callback"])
    cpu_base = statistics.median(cpu["no callback"])
    print(f"{a.text_gguf}: {n_layer} layers, n_embd {model.n_embd}, {a.tokens} one-token decodes x {a.rounds} rounds, "
          f"{a.threads} threads")
    for name, v in runs.items():
        med = statistics.median(v)
        print(f"  {name:18s} median {med:9.2f} tok/s  (range {min(v):.2f}..{max(v):.2f})  "
              f"{(base / med - 1) * 100:+6.2f}% time per token; CPU {statistics.median(cpu[name]):.3f} ms/token "
              f"({(statistics.median(cpu[name]) / cpu_base - 1) * 100:+.2f}%)")
    L.llama_free(hooked)
    L.llama_free(plain)


if __name__ == "__main__":
    main()
