"""The moondream runtime: llama.cpp's mtmd for the image, the phi2 text model for the answer.

The prompt is assembled here, token by token, exactly as the source revision was trained (spec §3.4): BOS, the image
embeddings (with "<image>" markers for early revisions), then the chat history and question. Whatever prefix of that
sequence is already in the KV cache is kept, so a follow-up question costs only its new tokens.
"""
from __future__ import annotations

import codecs
import contextlib
import ctypes
import hashlib
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import gguf_check, residency, spec
from .errors import ModelFileError, MoondreamError, PromptTooLongError
from .gguf_header import HeaderError, read_header
from .image import load_image, preprocess
from .native import deferred_interrupt, llama, mtmd
from .settings import DEFAULT, KV_TYPES, LOW_RAM, Settings
from .token_embeddings import TokenEmbeddings

BATCH_IMAGE_CACHE_BYTES = 4 * 2**20  # a batch's image cache: a few full-size images' embeddings


def _image_prefix_len(items: Sequence) -> int:
    """Positions up to and including the last image row (BOS, markers, image); 0 when there is no image."""
    return 1 + max((n for n, it in enumerate(items) if isinstance(it, tuple)), default=-1)


@dataclass
class EncodedImage:
    """Projected image embeddings [n_patches, n_embd]; reusable across questions and conversations."""

    embeddings: np.ndarray
    key: str  # hash of the preprocessed pixels: equal images share cache entries
    encode_ms: float = 0.0


@dataclass
class Answer:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (the revision's stop rule) or "length"
    timings: dict = field(default_factory=dict)


class Stream:
    """Iterate for text pieces as they are generated; `.answer` holds the whole Answer afterwards."""

    def __init__(self, gen: Iterator[str]):
        self._gen = gen
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        self.answer = yield from self._gen


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def find_pair(directory: Path) -> tuple[Path, Path]:
    """The one text + mmproj pair in a directory, told apart by architecture (validation follows in check_pair)."""
    by_arch: dict[str, list[Path]] = {spec.ARCH_TEXT: [], spec.ARCH_MMPROJ: []}
    for p in sorted(directory.glob("*.gguf")):
        try:
            arch = read_header(p).values.get("general.architecture")
        except (HeaderError, OSError):
            arch = None  # unreadable: not a candidate
        by_arch.setdefault(arch, []).append(p)
    texts, mmprojs = by_arch[spec.ARCH_TEXT], by_arch[spec.ARCH_MMPROJ]
    if len(texts) != 1 or len(mmprojs) != 1:
        raise ModelFileError(f"{directory} should hold exactly one text GGUF and one mmproj GGUF; found text: "
                             f"{[p.name for p in texts]}, mmproj: {[p.name for p in mmprojs]}. Pass --text and "
                             "--mmproj to choose")
    return texts[0], mmprojs[0]


class Moondream:
    """A loaded GGUF pair. Use `Moondream.load(...)`; close() (or a with-block) frees the native memory."""

    @classmethod
    def load(cls, text_path: str | os.PathLike, mmproj_path: str | os.PathLike | None = None, *,
             settings: Settings | None = None, low_ram: bool = False, revision: str | None = None,
             **overrides) -> "Moondream":
        """Load `text_path` + `mmproj_path`, or the pair in the directory `text_path`. Files are validated first.

        `settings` (or the LOW_RAM preset with low_ram=True) plus keyword overrides of any Settings field, e.g.
        n_threads=4, n_ctx=1024, kv_type="q8_0", n_gpu_layers=99."""
        text_path = Path(text_path)
        if mmproj_path is None:
            if not text_path.exists():
                raise ModelFileError(f"{text_path}: no such model directory or file")
            if not text_path.is_dir():
                raise ModelFileError(f"{text_path}: pass a model directory, or both the text and the mmproj file")
            text_path, mmproj_path = find_pair(text_path)
        cfg = (settings or (LOW_RAM if low_ram else DEFAULT)).with_(**overrides)
        text_info, mm_info = gguf_check.check_pair(text_path, mmproj_path)
        if revision is not None and revision not in spec.REVISIONS:
            raise MoondreamError(f"unknown revision {revision!r}; known: {', '.join(spec.REVISIONS)}")
        n_ctx = min(cfg.n_ctx, text_info.n_ctx)  # never past the positions the model was trained on
        if n_ctx < mm_info.n_patches + 16:
            raise MoondreamError(f"n_ctx {n_ctx} cannot hold the {mm_info.n_patches} image positions and a question")
        cfg = cfg.with_(n_ctx=n_ctx, n_threads=cfg.n_threads or default_threads())
        with deferred_interrupt():
            return cls(text_info, mm_info, cfg, revision)

    def __init__(self, text_info, mm_info, settings: Settings, revision=None):
        L, M = llama(), mtmd()
        self._L, self._M = L, M
        self.settings = cfg = settings.for_machine(text_info.quant)
        self.text_info, self.mmproj_info = text_info, mm_info
        self.revision = self._revision(text_info, revision)
        self.n_threads, self.n_ctx = cfg.n_threads, cfg.n_ctx
        self.image_size = mm_info.image_size
        self.name = text_info.file.get("general.name") or text_info.file.path.stem

        mp = L.llama_model_default_params()
        mp.n_gpu_layers = cfg.n_gpu_layers
        mp.use_extra_bufts = cfg.extra_bufts
        mp.load_mode = -1 if cfg.mmap else 0  # LLAMA_LOAD_MODE_AUTO (mmap where supported) or _NONE (read in)
        self._model = L.llama_model_load_from_file(str(text_info.file.path).encode(), mp)
        if not self._model:
            raise ModelFileError(f"llama.cpp could not load {text_info.file.path} (set MOONDREAM_CPP_LLAMA_LOG=1 to "
                                 "see why)")
        embd = next((t for t in read_header(text_info.file.path).tensors if t.name == "token_embd.weight"), None)
        self._embd_bytes = (embd.offset, embd.nbytes) if embd else None  # read by rows: never faulted in whole
        self._tok_embd = TokenEmbeddings(text_info.file.path, embd) if embd else None
        if cfg.mmap:
            # llama.cpp maps the whole file in (MAP_POPULATE), but repacked tensors were copied out of it and only a
            # few rows of the token embedding are ever read: hand it all back, what is used faults back in
            residency.release(text_info.file.path)
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_embd = L.llama_model_n_embd(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)

        cp = L.llama_context_default_params()
        cp.n_ctx = cfg.n_ctx
        cp.n_batch = min(cfg.n_ctx, cfg.n_batch)
        cp.n_ubatch = min(cfg.n_ctx, cfg.n_ubatch, cp.n_batch)
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = cfg.n_threads
        quant_kv = cfg.kv_type != "f16"
        cp.flash_attn_type = 1 if (cfg.flash_attn or quant_kv) else 0  # llama.cpp needs FA for a quantized V cache
        cp.type_k = cp.type_v = KV_TYPES[cfg.kv_type]
        cp.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise MoondreamError(f"llama.cpp could not create a context of {cfg.n_ctx} tokens (out of memory?)")
        self._mem = L.llama_get_memory(self._ctx)
        self._n_batch = cp.n_batch
        self._mtmd = None
        # opened now even when on demand: a broken mmproj fails the load, and the first image needs it anyway
        self._open_vision(at_load=True)

        self.bos = int(text_info.file.get("tokenizer.ggml.bos_token_id", 50256))
        self.eos = int(text_info.file.get("tokenizer.ggml.eos_token_id", self.bos))
        self.n_real_tokens = text_info.n_real_tokens
        if self.revision.stop_rule == "eos":
            self.stop_ids = {self.eos}
        else:  # HF generate stopped on ANY token of "<END>" (spec §3.5)
            self.stop_ids = set(self.tokenize(spec.END_MARKER))
        self._tok_batch = L.llama_batch_init(self._n_batch, 0, 1)
        self._emb_batch = L.llama_batch_init(self._n_batch, self.n_embd, 1)
        self._kv: list = []  # what the KV cache holds, position by position: token ids or (image key, index)
        # recently encoded images by pixel hash, least recently used first, bounded by their embeddings' bytes
        self._images: OrderedDict[str, EncodedImage] = OrderedDict()
        self.image_cache_bytes = int(cfg.image_cache_mb * 2**20)
        # KV states of recent image prefixes (BOS + image): switching back to an image skips its prefill too
        self._states: OrderedDict[str, tuple[list, ctypes.Array]] = OrderedDict()
        self.state_cache_bytes = int(cfg.state_cache_mb * 2**20)
        self.last_prefix_restored = False
        self._vision_held = False

    def _open_vision(self, at_load: bool = False) -> None:
        M, cfg = self._M, self.settings
        mcp = M.mtmd_context_params_default()
        mcp.use_gpu = bool(cfg.mmproj_gpu and cfg.n_gpu_layers != 0)
        mcp.n_threads = cfg.n_threads
        mcp.print_timings = False
        mcp.warmup = False
        mcp.flash_attn_type = -1  # auto: flash attention speeds the vision tower up
        self._mtmd = M.mtmd_init_from_file(str(self.mmproj_info.file.path).encode(), self._model, mcp)
        if not self._mtmd:
            if at_load:
                self.close()
            raise ModelFileError(f"llama.cpp could not load the mmproj {self.mmproj_info.file.path} (set "
                                 "MOONDREAM_CPP_LLAMA_LOG=1 to see why)")

    @staticmethod
    def _revision(info, override):
        if override:
            return spec.REVISIONS[override]
        rev = info.revision
        k = info.file.keys
        if spec.MD_IMAGE_MARKERS in k:  # files state their own format; it wins over the table
            rev = spec.Revision(rev.name, bool(k[spec.MD_IMAGE_MARKERS]), k.get(spec.MD_ANSWER_PREFIX,
                                rev.answer_prefix), k.get(spec.MD_STOP_RULE, rev.stop_rule),
                                k.get(spec.MD_VISION_GELU, rev.vision_gelu), rev.vision_eps,
                                int(k.get(spec.MD_MAX_NEW_TOKENS, rev.max_new_tokens)))
        return rev

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        L, M = self._L, self._M
        if getattr(self, "_mtmd", None):
            M.mtmd_free(self._mtmd)
            self._mtmd = None
        for b in ("_tok_batch", "_emb_batch"):
            if getattr(self, b, None) is not None:
                L.llama_batch_free(getattr(self, b))
                setattr(self, b, None)
        if getattr(self, "_ctx", None):
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ text
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS; special-token text is NOT parsed, so user text cannot inject control tokens)."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._L.llama_token * n_max)()
        n = self._L.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, False)
        if n < 0:
            buf = (self._L.llama_token * -n)()
            n = self._L.llama_tokenize(self._vocab, data, len(data), buf, -n, False, False)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    # ------------------------------------------------------------------ image
    def encode_image(self, image) -> EncodedImage:
        """Preprocess as moondream (stretch, bicubic) and run the vision tower + projector, once per distinct image:
        recently used images come from an LRU cache (`image_cache_mb`)."""
        return self._encode(image)[0]

    def _encode(self, image) -> tuple[EncodedImage, bool]:
        """(the encoded image, whether it came from the cache)."""
        if isinstance(image, EncodedImage):
            return image, True
        pixels = preprocess(load_image(image), self.image_size)
        key = hashlib.sha256(pixels.tobytes()).hexdigest()[:32]
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key], True
        on_demand = self.settings.mmproj_on_demand and not self._vision_held
        # the text weights are not used while the vision tower runs: with both on demand and mapped, the two are
        # never resident together (the text pages wait in the page cache, and come back at once after)
        lean = on_demand and self.settings.mmap
        text_file = str(self.text_info.file.path)
        with deferred_interrupt():
            if self._mtmd is None:
                if lean:
                    residency.release(text_file)
                self._open_vision()
            try:
                enc = self._run_vision(pixels, key)
            finally:
                if on_demand:  # the vision tower only lives while it works
                    self._M.mtmd_free(self._mtmd)
                    self._mtmd = None
                if lean:
                    residency.retake(text_file, skip=self._embd_bytes)
        self._images[key] = enc
        while (sum(e.embeddings.nbytes for e in self._images.values()) > self.image_cache_bytes
               and len(self._images) > 1):
            self._images.popitem(last=False)
        return enc, False

    def clear_image_cache(self) -> None:
        self._images.clear()
        self._states.clear()

    def forget_context(self) -> None:
        """Empty the KV cache and the saved image-prefix states; encoded images stay. The next question evaluates
        its whole prompt, as a first question about its image does (benchmarks time prefill this way)."""
        self._states.clear()
        self._kv.clear()
        self._L.llama_memory_clear(self._mem, True)

    @contextlib.contextmanager
    def batch_mode(self):
        """Settings for asking about many images once each: no prefix KV states (they would only grow memory), an
        image cache of a few entries (duplicate files still hit it), the vision tower kept loaded between images
        unless settings.keep_vision_in_batches is off (--low-ram)."""
        held = self._vision_held
        self._vision_held = held or self.settings.keep_vision_in_batches
        try:
            with self.caches_limited(BATCH_IMAGE_CACHE_BYTES, 0):
                yield self
        finally:
            self._vision_held = held
            if not held and self.settings.mmproj_on_demand and self._mtmd is not None:
                with deferred_interrupt():
                    self._M.mtmd_free(self._mtmd)
                    self._mtmd = None

    @contextlib.contextmanager
    def caches_limited(self, image_bytes: int, state_bytes: int):
        """Tighter cache bounds for a while (a batch asks about each image once), restored afterwards."""
        saved = self.image_cache_bytes, self.state_cache_bytes
        self.image_cache_bytes, self.state_cache_bytes = min(saved[0], image_bytes), min(saved[1], state_bytes)
        try:
            yield self
        finally:
            self.image_cache_bytes, self.state_cache_bytes = saved

    def _run_vision(self, pixels: np.ndarray, key: str) -> EncodedImage:
        M = self._M
        t0 = time.perf_counter()
        # handed over at exactly image_size, so mtmd's own letterboxing never applies (pitfall P3)
        data = pixels.tobytes()
        buf = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
        bitmap = M.mtmd_bitmap_init(self.image_size, self.image_size, buf)
        chunks = M.mtmd_input_chunks_init()
        try:
            part = M.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(M.mtmd_input_part) * 1)(ctypes.pointer(part))
            if M.mtmd_tokenize_from_parts(self._mtmd, chunks, parts, 1, False) != 0:
                raise MoondreamError("mtmd could not prepare the image")
            chunk = M.mtmd_input_chunks_get(chunks, 0)
            n_tokens = M.mtmd_input_chunk_get_n_tokens(chunk)
            if n_tokens != self.mmproj_info.n_patches:
                raise MoondreamError(f"mtmd made {n_tokens} image tokens, expected {self.mmproj_info.n_patches}")
            if M.mtmd_encode_chunk(self._mtmd, chunk) != 0:
                raise MoondreamError("llama.cpp failed to encode the image")
            ptr = M.mtmd_get_output_embd(self._mtmd)
            emb = np.ctypeslib.as_array(ptr, shape=(n_tokens * self.n_embd,)).reshape(n_tokens, self.n_embd).copy()
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)
        return EncodedImage(emb, key, (time.perf_counter() - t0) * 1000)

    # ------------------------------------------------------------------ prompt
    def prompt_items(self, image: EncodedImage, question: str, history: Sequence[tuple[str, str]] = ()) -> list:
        """The model input, position by position: token ids, and (image key, row) for each image embedding."""
        hist = "".join(spec.TURN_FORMAT.format(question=q, answer=a) for q, a in history)
        after = f"\n\n{hist}" + spec.QUESTION_FORMAT.format(question=question) + self.revision.answer_prefix
        items: list = [self.bos]
        if self.revision.image_markers:
            items += self.tokenize(spec.IMAGE_MARKERS[0])
            after = spec.IMAGE_MARKERS[1] + after
        items += [(image.key, j) for j in range(image.embeddings.shape[0])]
        items += self.tokenize(after)
        return items

    def _fill_tokens(self, toks: list[int], start: int, want_logits: bool):
        b = self._tok_batch
        b.n_tokens = len(toks)
        for i, t in enumerate(toks):
            b.token[i] = t
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = False
        b.logits[len(toks) - 1] = want_logits
        return b

    def _fill_embd(self, rows: np.ndarray, start: int, want_logits: bool):
        b = self._emb_batch
        n = rows.shape[0]
        b.n_tokens = n
        ctypes.memmove(b.embd, np.ascontiguousarray(rows, dtype=np.float32).ctypes.data, rows.nbytes)
        for i in range(n):
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = False
        b.logits[n - 1] = want_logits
        return b

    def _decode(self, batch) -> None:
        rc = self._L.llama_decode(self._ctx, batch)
        if rc != 0:
            self._kv = []
            self._L.llama_memory_clear(self._mem, True)
            raise MoondreamError(f"llama.cpp failed to decode (code {rc}); the context was reset")

    def _evaluate(self, items: list, images: dict[str, EncodedImage]) -> int:
        """Bring the KV cache to hold `items`, reusing the longest cached prefix. Returns how many were evaluated."""
        if len(items) > self.n_ctx:
            raise PromptTooLongError(f"the prompt needs {len(items)} positions but the context holds {self.n_ctx}; "
                                     "ask a shorter question, clear the chat history, or load with a larger n_ctx")
        keep = 0
        for a, b in zip(self._kv, items):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(items) - 1)  # always evaluate at least the last item: we need its logits
        prefix = _image_prefix_len(items)
        self._stash_prefix(keep)
        self.last_prefix_restored = False
        if 0 < prefix < len(items) and keep < prefix and self._restore(items[:prefix]):
            keep = prefix
        self._L.llama_memory_seq_rm(self._mem, 0, keep, -1)
        del self._kv[keep:]
        i = keep
        if self._tok_embd is not None and keep < prefix:
            # the image prefix (BOS, markers, image) goes in as embeddings, its tokens' rows beside the image's: one
            # pass over the weights per batch, not one more for a lone BOS. What follows it stays token batches, so
            # a question costs the same evaluation whether its image's prefix was cached or not: the same logits.
            while i < prefix:
                j = min(i + self._n_batch, prefix)
                self._decode(self._fill_embd(self._embedding_rows(items[i:j], images), i, j == len(items)))
                self._kv.extend(items[i:j])
                i = j
        while i < len(items):
            is_img = isinstance(items[i], tuple)
            j = i
            while j < len(items) and j - i < self._n_batch and isinstance(items[j], tuple) == is_img:
                j += 1
            last = j == len(items)
            if is_img:
                key = items[i][0]
                rows = images[key].embeddings[items[i][1]: items[j - 1][1] + 1]
                self._decode(self._fill_embd(rows, i, last))
            else:
                self._decode(self._fill_tokens(items[i:j], i, last))
            self._kv.extend(items[i:j])
            i = j
        return len(items) - keep

    def _embedding_rows(self, items: list, images: dict[str, EncodedImage]) -> np.ndarray:
        """float32 [len(items), n_embd]: a token's row of the embedding table, an image position's embedding."""
        out = np.empty((len(items), self.n_embd), dtype=np.float32)
        toks = [(n, t) for n, t in enumerate(items) if not isinstance(t, tuple)]
        if toks:
            out[[n for n, _ in toks]] = self._tok_embd.rows([t for _, t in toks])
        n = 0
        while n < len(items):  # runs of one image's rows, copied as slices
            if not isinstance(items[n], tuple):
                n += 1
                continue
            key, first = items[n]
            m = n
            while m < len(items) and isinstance(items[m], tuple) and items[m][0] == key:
                m += 1
            out[n:m] = images[key].embeddings[first: first + m - n]
            n = m
        return out

    # ------------------------------------------------------------------ image-prefix KV states (LRU by bytes)
    def _stash_prefix(self, keep: int) -> None:
        """Save the KV state of the image prefix the cache holds, just before it is overwritten (only the first
        `keep` positions survive): saving when it is made would hold a copy that a one-image chat never uses."""
        n = _image_prefix_len(self._kv)
        if n == 0 or keep >= n or self.state_cache_bytes <= 0:
            return
        saved = self._states.get(self._kv[n - 1][0])
        if saved is not None and saved[0] == self._kv[:n]:
            return
        self._L.llama_memory_seq_rm(self._mem, 0, n, -1)  # the state is the prefix alone
        del self._kv[n:]
        self._save_prefix()

    def _save_prefix(self) -> None:
        if self.state_cache_bytes <= 0:
            return
        L = self._L
        n = L.llama_state_seq_get_size(self._ctx, 0)
        if n <= 0 or n > self.state_cache_bytes:
            return
        buf = (ctypes.c_uint8 * n)()
        if L.llama_state_seq_get_data(self._ctx, buf, n, 0) != n:
            return
        key = self._kv[-1][0]
        self._states[key] = (list(self._kv), buf)
        self._states.move_to_end(key)
        while sum(len(b) for _, b in self._states.values()) > self.state_cache_bytes:
            self._states.popitem(last=False)

    def _restore(self, prefix: list) -> bool:
        """Load the saved KV state of this image prefix into the context, if one is cached."""
        hit = self._states.get(prefix[-1][0])
        if hit is None or hit[0] != prefix:
            return False
        self._L.llama_memory_seq_rm(self._mem, 0, 0, -1)
        self._kv = []
        buf = hit[1]
        if self._L.llama_state_seq_set_data(self._ctx, buf, len(buf), 0) != len(buf):
            self._L.llama_memory_seq_rm(self._mem, 0, 0, -1)
            del self._states[prefix[-1][0]]
            return False
        self._states.move_to_end(prefix[-1][0])
        self._kv = list(prefix)
        self.last_prefix_restored = True
        return True

    def _logits(self) -> np.ndarray:
        ptr = self._L.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # ------------------------------------------------------------------ public API
    def logits(self, image, question: str, history: Sequence[tuple[str, str]] = ()) -> np.ndarray:
        """Next-token logits (float32, padding rows included) after the prompt: for evaluation and tests."""
        enc = self.encode_image(image)
        self._evaluate(self.prompt_items(enc, question, history), {enc.key: enc})
        return self._logits().copy()

    def query(self, image, question: str, *, stream: bool = False, max_tokens: int | None = None,
              history: Sequence[tuple[str, str]] = (), temperature: float = 0.0, top_p: float = 1.0,
              seed: int | None = None, stop: Sequence[str] = (), should_stop=None) -> Answer | Stream:
        """Answer `question` about `image` (a path, bytes, PIL image, array or EncodedImage). Greedy by default.

        stop: strings that end the answer (not included, finish_reason "stop"); should_stop: a callable checked
        before every token, True ends the answer with finish_reason "cancelled" (a client that went away)."""
        if not isinstance(question, str) or not question.strip():
            raise MoondreamError("the question is empty; ask something about the image")
        stop = [x for x in ([stop] if isinstance(stop, str) else stop) if x]
        gen = self._generate(image, question, history, max_tokens, temperature, top_p, seed, stop, should_stop)
        s = Stream(gen)
        if stream:
            return s
        for _ in s:
            pass
        return s.answer

    def caption(self, image, length: str = "normal", **kw) -> Answer | Stream:
        if length not in spec.CAPTION_QUESTIONS:
            raise MoondreamError(f"caption length must be one of {', '.join(spec.CAPTION_QUESTIONS)}")
        return self.query(image, spec.CAPTION_QUESTIONS[length], **kw)

    def _generate(self, image, question, history, max_tokens, temperature, top_p, seed, stop=(), should_stop=None):
        t0 = time.perf_counter()
        enc, cached = self._encode(image)
        t1 = time.perf_counter()
        items = self.prompt_items(enc, question, history)
        n_eval = self._evaluate(items, {enc.key: enc})
        t2 = time.perf_counter()
        rng = np.random.default_rng(seed)
        limit = max_tokens if max_tokens is not None else self.revision.max_new_tokens
        out: list[int] = []
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        cleaner = _AnswerCleaner()
        finish = "length"
        shown, sent = "", 0  # the answer text so far, and how much of it has been yielded
        hold = max((len(x) for x in stop), default=1) - 1  # a stop string may still be forming in the last chars
        hit = False
        while len(out) < limit:
            if should_stop is not None and should_stop():
                finish = "cancelled"
                break
            tok = self._sample(self._logits(), temperature, top_p, rng)
            if tok in self.stop_ids:
                finish = "stop"
                break
            out.append(tok)
            shown += cleaner.feed(decoder.decode(self.token_bytes(tok)))
            if stop:
                cut = min((i for i in (shown.find(x) for x in stop) if i >= 0), default=-1)
                if cut >= 0:
                    shown, hit, finish = shown[:cut].rstrip(), True, "stop"
            safe = len(shown) if hit else max(sent, len(shown) - hold)
            if safe > sent:
                yield shown[sent:safe]
                sent = safe
            if hit or len(self._kv) >= self.n_ctx:
                break
            self._decode(self._fill_tokens([tok], len(self._kv), True))
            self._kv.append(tok)
        if not hit:
            shown += cleaner.feed(decoder.decode(b"", final=True))
            if len(shown) > sent:
                yield shown[sent:]
        t3 = time.perf_counter()
        if hit:
            text = shown
        else:
            text = self.detokenize(out)
            if self.revision.stop_rule == "end_marker":
                text = re.sub("<$|<END$", "", text)
        n_prompt = len(items)
        return Answer(text.strip(), out, finish, {
            "image_encode_ms": 0.0 if cached else round((t1 - t0) * 1000, 2),
            "image_cached": cached,
            "prefix_restored": self.last_prefix_restored,
            "prompt_tokens": n_prompt,
            "prompt_evaluated": n_eval,
            "prompt_ms": round((t2 - t1) * 1000, 2),
            "prompt_per_second": round(n_eval / max(t2 - t1, 1e-9), 2),
            "generated_tokens": len(out),
            "generation_ms": round((t3 - t2) * 1000, 2),
            "generation_per_second": round(len(out) / max(t3 - t2, 1e-9), 2),
        })

    def _sample(self, logits: np.ndarray, temperature: float, top_p: float, rng) -> int:
        real = logits[: self.n_real_tokens]  # padding rows have no token to print
        if temperature <= 0:
            return int(np.argmax(real))
        z = real.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if top_p < 1.0:
            order = np.argsort(-p)
            cut = np.searchsorted(np.cumsum(p[order]), top_p) + 1
            keep = order[:cut]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(rng.choice(len(p), p=p))


class _AnswerCleaner:
    """Streams text as the final answer will read: leading whitespace dropped, trailing whitespace held back."""

    def __init__(self):
        self.started = False
        self.pending = ""

    def feed(self, s: str) -> str:
        if not self.started:
            s = s.lstrip()
            if not s:
                return ""
            self.started = True
        s = self.pending + s
        stripped = s.rstrip()
        self.pending = s[len(stripped):]
        return stripped
