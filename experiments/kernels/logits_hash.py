"""Hash of the logits of 16 one-token decode steps of a text GGUF, then of one 48-token batch (the prefill path): the
same hash from two llama.cpp builds means their decode and prefill are bit-identical (patches 0005 and 0006 were
checked so, the build before each against the build with it, swapped in by LD_LIBRARY_PATH).

    LD_LIBRARY_PATH=DIR_WITH_LIBGGML python experiments/kernels/logits_hash.py MODEL.gguf THREADS
"""
import ctypes
import hashlib
import sys
import llama_cpp as L
L.llama_backend_init()
mp = L.llama_model_default_params()
m = L.llama_model_load_from_file(sys.argv[1].encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = 256
cp.n_threads = cp.n_threads_batch = int(sys.argv[2])
ctx = L.llama_init_from_model(m, cp)
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(m))
h = hashlib.sha1()
toks = [50256, 464, 3290, 318, 257, 1332]
for i, t in enumerate(toks + [13] * 10):  # one token per decode: the mat-vec path each step
    arr = (L.llama_token * 1)(t)
    assert L.llama_decode(ctx, L.llama_batch_get_one(arr, 1)) == 0
    h.update(ctypes.string_at(L.llama_get_logits(ctx), 4 * n_vocab))
batch = [(t * 7919) % 50000 for t in range(48)]
arr = (L.llama_token * len(batch))(*batch)
assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(batch))) == 0
h.update(ctypes.string_at(L.llama_get_logits(ctx), 4 * n_vocab))
print(h.hexdigest()[:16])
