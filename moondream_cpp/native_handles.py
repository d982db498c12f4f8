"""llama.cpp objects as Python objects that free themselves: the text model, its context (the KV cache, batches,
decoding, state save/restore) and the vision context (mtmd). Each frees its native memory once, on close() or when
garbage-collected (weakref.finalize), in dependency order: a context before the model it was made from.
"""
from __future__ import annotations

import ctypes
import time
import weakref
from typing import Callable

import numpy as np

from .errors import DecodeError, ModelFileError, MoondreamError
from .native import llama, mtmd

SEQ = 0  # the sequence of the single-request API; parallel decoding (moondream_cpp/parallel.py) adds 1..N-1


class _Handle:
    """Owns one native pointer; `free` is called exactly once."""

    def _own(self, ptr, free, *keep_alive):
        self.ptr = ptr
        # keep_alive: what must outlive this handle (the model under a context), held by the finalizer itself
        self._finalizer = weakref.finalize(self, _free_once, free, ptr, keep_alive)

    def close(self) -> None:
        self._finalizer()
        self.ptr = None

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


def _free_once(free, ptr, _keep_alive) -> None:
    free(ptr)


class TextModel(_Handle):
    def __init__(self, path, n_gpu_layers: int, extra_bufts: bool, mmap: bool):
        L = self.L = llama()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        mp.use_extra_bufts = extra_bufts
        mp.load_mode = -1 if mmap else 0  # LLAMA_LOAD_MODE_AUTO (mmap where supported) or _NONE (read in)
        ptr = L.llama_model_load_from_file(str(path).encode(), mp)
        if not ptr:
            raise ModelFileError(f"llama.cpp could not load {path} (set MOONDREAM_CPP_LLAMA_LOG=1 to see why)")
        self._own(ptr, L.llama_model_free)
        self.vocab = L.llama_model_get_vocab(ptr)
        self.n_embd = L.llama_model_n_embd(ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS; special-token text is NOT parsed, so user text cannot inject control tokens)."""
        L, data = self.L, text.encode("utf-8")
        n_max = len(data) + 8
        buf = (L.llama_token * n_max)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, False)
        if n < 0:
            buf = (L.llama_token * -n)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, -n, False, False)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]


class Batch(_Handle):
    """A llama_batch of up to `capacity` positions of token ids (n_embd 0) or embedding rows."""

    def __init__(self, capacity: int, n_embd: int = 0):
        L = llama()
        self.capacity, self.n_embd = capacity, n_embd
        self._own(L.llama_batch_init(capacity, n_embd, 1), L.llama_batch_free)

    def _positions(self, n: int, start: int, want_logits: bool, seq: int):
        b = self.ptr
        b.n_tokens = n
        for i in range(n):
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = False
        b.logits[n - 1] = want_logits
        return b

    def tokens(self, toks, start: int, want_logits: bool, seq: int = SEQ):
        for i, t in enumerate(toks):
            self.ptr.token[i] = t
        return self._positions(len(toks), start, want_logits, seq)

    def rows(self, rows: np.ndarray, start: int, want_logits: bool, seq: int = SEQ):
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        ctypes.memmove(self.ptr.embd, rows.ctypes.data, rows.nbytes)
        return self._positions(rows.shape[0], start, want_logits, seq)

    def step(self, entries):
        """One token for each of several sequences: entries (seq, token, position), every row's logits wanted."""
        b = self.ptr
        b.n_tokens = len(entries)
        for i, (seq, tok, pos) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, pos, 1, seq, True
        return b


class TextContext(_Handle):
    """A context of n_seq sequences of n_ctx positions each: decode batches, read logits, truncate, save and load
    state. Its methods act on sequence 0 (the single-request API); `sequence(s)` is the same for sequence s. Each
    is a real `KVStore` of moondream_cpp/prompt_cache.py."""

    def __init__(self, model: TextModel, *, n_ctx: int, n_batch: int, n_ubatch: int, n_threads: int,
                 flash_attn: bool, kv_type: int, eval_callback=None, n_seq: int = 1):
        """eval_callback: llama.cpp's cb_eval, called for every graph node of every decode (moondream_cpp/
        hidden_state.py reads the last layer's output with it); fixed for the context's life. n_seq > 1: a KV
        stream of n_ctx cells per sequence (llama.cpp's non-unified cache, as llama-server -np N), N times the
        memory."""
        L = self.L = llama()
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = min(n_ctx, n_batch)
        cp.n_ubatch = min(n_ctx, n_ubatch, cp.n_batch)
        cp.n_seq_max = n_seq
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.flash_attn_type = 1 if flash_attn else 0
        cp.type_k = cp.type_v = int(kv_type)
        cp.no_perf = True
        if eval_callback is not None:
            cp.cb_eval = eval_callback
        ptr = L.llama_init_from_model(model.ptr, cp)
        if not ptr:
            raise MoondreamError(f"llama.cpp could not create a context of {n_ctx} tokens (out of memory?)")
        self._own(ptr, L.llama_free, model, eval_callback)  # the callback must outlive the context
        self.model, self.n_ctx, self.n_batch, self.n_ubatch = model, n_ctx, cp.n_batch, cp.n_ubatch
        self.n_seq = n_seq
        self.memory = L.llama_get_memory(ptr)
        self.token_batch = Batch(max(self.n_batch, n_seq))
        self.row_batch = Batch(self.n_batch, model.n_embd)
        # benchmarks: called with (positions, seconds) after every llama_decode, to tell llama.cpp's time from ours
        self.on_decode: Callable[[int, float], None] | None = None

    def close(self) -> None:
        self.token_batch.close()
        self.row_batch.close()
        super().close()

    def decode(self, batch) -> None:
        """Evaluate a filled batch; on failure the KV cache (every sequence) is emptied and DecodeError raised."""
        t0 = time.perf_counter()
        rc = self.L.llama_decode(self.ptr, batch)
        if rc != 0:
            self.clear()
            raise DecodeError(f"llama.cpp failed to decode (code {rc}); the context was reset")
        if self.on_decode is not None:
            self.on_decode(batch.n_tokens, time.perf_counter() - t0)

    def decode_tokens(self, toks, start: int, want_logits: bool = True, seq: int = SEQ) -> None:
        self.decode(self.token_batch.tokens(toks, start, want_logits, seq))

    def decode_rows(self, rows: np.ndarray, start: int, want_logits: bool = True, seq: int = SEQ) -> None:
        self.decode(self.row_batch.rows(rows, start, want_logits, seq))

    def decode_rows_bidirectional(self, rows: np.ndarray, start: int, want_logits: bool = True,
                                  seq: int = SEQ) -> None:
        """Evaluate rows that all attend to each other (the 2025 prefix: BOS + the image, docs/architecture.md §9),
        in one micro-batch: llama.cpp refuses non-causal batches larger than n_ubatch."""
        if rows.shape[0] > self.n_ubatch:
            raise MoondreamError(f"the {rows.shape[0]}-row image prefix needs n_ubatch >= {rows.shape[0]} "
                                 f"(it is {self.n_ubatch})")
        self.L.llama_set_causal_attn(self.ptr, False)
        try:
            self.decode_rows(rows, start, want_logits, seq)
        finally:
            self.L.llama_set_causal_attn(self.ptr, True)

    def decode_step(self, entries) -> None:
        """One batch of (seq, token, position), one row per sequence, all logits wanted (logits_of(i) reads row i).
        A failure empties the whole KV cache (every sequence) and raises DecodeError."""
        self.decode(self.token_batch.step(entries))

    def logits(self) -> np.ndarray:
        """The last evaluated position's logits (a view into llama.cpp's buffer: copy to keep)."""
        return self.logits_of(-1)

    def logits_of(self, i: int) -> np.ndarray:
        """Row i's logits of the last batch (-1: its last row)."""
        ptr = self.L.llama_get_logits_ith(self.ptr, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def sequence(self, seq: int) -> "SequenceView":
        if not 0 <= seq < self.n_seq:
            raise ValueError(f"sequence {seq} of a context of {self.n_seq}")
        return SequenceView(self, seq)

    def copy_sequence(self, src: int, dst: int, keep: int) -> None:
        """Sequence dst becomes the first `keep` positions of sequence src (a stream copy, done at the next decode:
        the shared image prefix of two requests is computed once)."""
        self.L.llama_memory_seq_rm(self.memory, dst, -1, -1)
        self.L.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self.L.llama_memory_seq_rm(self.memory, dst, keep, -1)

    # KVStore (sequence 0)
    def truncate(self, n: int, seq: int = SEQ) -> None:
        self.L.llama_memory_seq_rm(self.memory, seq, n, -1)

    def clear(self) -> None:
        self.L.llama_memory_clear(self.memory, True)

    def save_state(self, max_bytes: int, seq: int = SEQ):
        n = self.L.llama_state_seq_get_size(self.ptr, seq)
        if n <= 0 or n > max_bytes:
            return None
        buf = (ctypes.c_uint8 * n)()
        return buf if self.L.llama_state_seq_get_data(self.ptr, buf, n, seq) == n else None

    def load_state(self, buf, seq: int = SEQ) -> bool:
        if self.L.llama_state_seq_set_data(self.ptr, buf, len(buf), seq) == len(buf):
            return True
        self.truncate(0, seq)
        return False


class SequenceView:
    """One sequence of a TextContext with the context's interface (prefill, generation and the region skills run on
    it unchanged). clear() empties this sequence only."""

    def __init__(self, ctx: TextContext, seq: int):
        self.ctx, self.seq = ctx, seq
        self.n_ctx, self.n_batch, self.n_ubatch, self.model = ctx.n_ctx, ctx.n_batch, ctx.n_ubatch, ctx.model

    def decode_tokens(self, toks, start: int, want_logits: bool = True) -> None:
        self.ctx.decode_tokens(toks, start, want_logits, self.seq)

    def decode_rows(self, rows: np.ndarray, start: int, want_logits: bool = True) -> None:
        self.ctx.decode_rows(rows, start, want_logits, self.seq)

    def decode_rows_bidirectional(self, rows: np.ndarray, start: int, want_logits: bool = True) -> None:
        self.ctx.decode_rows_bidirectional(rows, start, want_logits, self.seq)

    def logits(self) -> np.ndarray:
        return self.ctx.logits()

    def truncate(self, n: int) -> None:
        self.ctx.truncate(n, self.seq)

    def clear(self) -> None:
        self.ctx.truncate(0, self.seq)

    def save_state(self, max_bytes: int):
        return self.ctx.save_state(max_bytes, self.seq)

    def load_state(self, buf) -> bool:
        return self.ctx.load_state(buf, self.seq)


class VisionContext(_Handle):
    """llama.cpp's mtmd context for the mmproj: one square image of `image_size` in, [n_patches, n_embd] out."""

    def __init__(self, mmproj_path, model: TextModel, *, use_gpu: bool, n_threads: int):
        M = self.M = mtmd()
        mcp = M.mtmd_context_params_default()
        mcp.use_gpu = use_gpu
        mcp.n_threads = n_threads
        mcp.print_timings = False
        mcp.warmup = False
        mcp.flash_attn_type = -1  # auto: flash attention speeds the vision tower up
        ptr = M.mtmd_init_from_file(str(mmproj_path).encode(), model.ptr, mcp)
        if not ptr:
            raise ModelFileError(f"llama.cpp could not load the mmproj {mmproj_path} (set MOONDREAM_CPP_LLAMA_LOG=1 "
                                 "to see why)")
        self._own(ptr, M.mtmd_free, model)
        self.n_embd = model.n_embd

    def encode(self, pixels: np.ndarray, n_patches: int) -> np.ndarray:
        """Embeddings of a uint8 [size, size, 3] image, handed over at exactly the mmproj's size so mtmd's own
        letterboxing never applies (docs/architecture.md P3)."""
        M = self.M
        size = pixels.shape[0]
        data = pixels.tobytes()
        buf = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
        bitmap = M.mtmd_bitmap_init(size, size, buf)
        chunks = M.mtmd_input_chunks_init()
        try:
            part = M.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(M.mtmd_input_part) * 1)(ctypes.pointer(part))
            if M.mtmd_tokenize_from_parts(self.ptr, chunks, parts, 1, False) != 0:
                raise MoondreamError("mtmd could not prepare the image")
            chunk = M.mtmd_input_chunks_get(chunks, 0)
            n_tokens = M.mtmd_input_chunk_get_n_tokens(chunk)
            if n_tokens != n_patches:
                raise MoondreamError(f"mtmd made {n_tokens} image tokens, expected {n_patches}")
            if M.mtmd_encode_chunk(self.ptr, chunk) != 0:
                raise MoondreamError("llama.cpp failed to encode the image")
            ptr = M.mtmd_get_output_embd(self.ptr)
            return np.ctypeslib.as_array(ptr, shape=(n_tokens * self.n_embd,)).reshape(n_tokens, self.n_embd).copy()
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)
