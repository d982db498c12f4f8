"""The moondream runtime: a loaded GGUF pair, and the public API over the parts that do the work.

- moondream_cpp/vision.py: preprocessing and llama.cpp's vision tower (mtmd), loaded on demand;
- moondream_cpp/prompt.py: the prompt, item by item, as each revision was trained (a pure function);
- moondream_cpp/prompt_cache.py: what the KV cache holds, the image and saved-prefix LRUs;
- moondream_cpp/prefill.py: evaluating a prompt; moondream_cpp/generate.py: the answer, token by token;
- moondream_cpp/native_handles.py: llama.cpp objects that free themselves.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import gguf_check, prefill, prompting, residency, skills2025, spec, spec2025
from .errors import ModelFileError, MoondreamError
from .generate import Answer, Chunk, Stream, chunks, token_steps
from .gguf_check import find_pair
from .hidden_state import HiddenStateCapture
from .native import deferred_interrupt
from .native_handles import TextContext, TextModel
from .options import GenerationOptions
from .prompt import check_question
from .prompt_cache import PromptCache
from .region import RegionHead
from .sampling import make_sampler
from .settings import DEFAULT, KV_TYPES, LOW_RAM, Settings, default_threads, kv_cache_bytes
from .token_embeddings import TokenEmbeddings
from .vision import EncodedImage, PreparedImage, Vision, pixels_of

__all__ = ["Moondream", "EncodedImage", "PreparedImage", "Answer", "Stream", "Chunk", "GenerationOptions", "find_pair",
           "default_threads"]
BATCH_IMAGE_CACHE_BYTES = 4 * 2**20  # a batch's image cache: a few full-size images' embeddings


@dataclass
class AnswerPrompt:
    enc: EncodedImage
    cached: bool  # the image came from the cache (no vision tower run)
    items: list  # the prompt, position by position (moondream_cpp/prompt.py)
    t_start: float
    t_encoded: float


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
        family_2025 = text_info.file.get(spec2025.MD_FAMILY) == "2025"
        known = spec2025.REVISIONS_2025 if family_2025 else spec.REVISIONS
        if revision is not None and revision not in known:
            raise MoondreamError(f"unknown revision {revision!r} for this model; known: {', '.join(known)}")
        n_ctx = min(cfg.n_ctx, text_info.n_ctx)  # never past the positions the model was trained on
        if n_ctx < mm_info.n_patches + 16:
            raise MoondreamError(f"n_ctx {n_ctx} cannot hold the {mm_info.n_patches} image positions and a question")
        cfg = cfg.with_(n_ctx=n_ctx, n_threads=cfg.n_threads or default_threads())
        if family_2025:  # the bidirectional image prefix is one micro-batch
            rows = mm_info.n_patches + 1
            cfg = cfg.with_(n_batch=max(cfg.n_batch, rows), n_ubatch=max(cfg.n_ubatch, rows))
        with deferred_interrupt():
            return cls(text_info, mm_info, cfg, revision)

    def __init__(self, text_info, mm_info, settings: Settings, revision=None):
        self.settings = cfg = settings.for_machine(text_info.quant)
        self.text_info, self.mmproj_info = text_info, mm_info
        self.n_threads, self.n_ctx = cfg.n_threads, cfg.n_ctx
        self.image_size = mm_info.image_size
        self.name = text_info.file.get("general.name") or text_info.file.path.stem
        path = text_info.file.path

        self.text_model = TextModel(path, cfg.n_gpu_layers, cfg.extra_bufts, cfg.mmap)
        embd = text_info.file.entries.get("token_embd.weight")
        # the image prefix's few token rows are read from the file: the embedding is never faulted in whole
        self.token_embeddings = TokenEmbeddings(path, embd) if embd else None
        embd_range = (embd.offset, embd.nbytes) if embd else None
        if cfg.mmap:
            # llama.cpp maps the whole file in (MAP_POPULATE), but repacked tensors were copied out of it and only a
            # few rows of the token embedding are ever read: hand it all back, what is used faults back in
            residency.release(path)
        self.n_embd, self.n_vocab = self.text_model.n_embd, self.text_model.n_vocab
        try:
            quant_kv = cfg.kv_type != "f16"  # llama.cpp needs flash attention for a quantized V cache
            family_2025 = text_info.file.get(spec2025.MD_FAMILY) == "2025"
            # detect/point read the last layer's output, which only an eval callback hands out (moondream_cpp/
            # hidden_state.py): installed for 2025 models, where it costs one Python call per graph node and decode
            self.hidden_state = HiddenStateCapture(text_info.n_layer, self.n_embd) if family_2025 else None
            self.context = TextContext(self.text_model, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_ubatch=cfg.n_ubatch,
                                       n_threads=cfg.n_threads, flash_attn=cfg.flash_attn or quant_kv,
                                       kv_type=KV_TYPES[cfg.kv_type], n_seq=cfg.n_parallel,
                                       eval_callback=self.hidden_state.callback if family_2025 else None)
            self.vision = Vision(mm_info, self.text_model, cfg, str(path), keep_resident=embd_range)
            self.multicrop = self.region_head = None
            if family_2025:
                from .vision2025 import MultiCropVision

                self.multicrop = MultiCropVision(self.vision, mm_info, cfg.max_crops)
        except BaseException:
            self.close()
            raise
        # sequence 0's: resetting it (an interrupted prefill) leaves the other sequences of parallel decoding alone
        self.cache = PromptCache(self.context.sequence(0), int(cfg.image_cache_mb * 2**20),
                                 int(cfg.state_cache_mb * 2**20))
        self.n_real_tokens = text_info.n_real_tokens
        self.prompting = prompting.of_file(text_info, revision, self.text_model)
        self.revision = self.prompting.revision
        if self.multicrop:  # read from the mmproj on the first detect/point
            self.region_head = RegionHead(mm_info.file.path, self.revision.size_bins)
        self.bos, self.eos, self.stop_ids = self.prompting.bos, self.prompting.eos, self.prompting.stop_ids
        self.last_prefix_restored = False

    @property
    def family(self) -> str:
        """"2024" (one 378x378 view, text prompts) or "2025" (multi-crop, prefix attention, token templates)."""
        return self.prompting.family

    def kv_cache_bytes(self) -> int:
        """The KV cache's size: K and V rows of every layer, for every position of every sequence."""
        return kv_cache_bytes(self.text_info.n_layer, self.n_embd, self.n_ctx * self.context.n_seq,
                              self.settings.kv_type)

    @property
    def caption_lengths(self) -> tuple[str, ...]:
        return self.prompting.caption_lengths

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        for part in ("vision", "context", "text_model"):  # what was made from the model goes first
            if getattr(self, part, None) is not None:
                getattr(self, part).close()
                setattr(self, part, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ text
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS; special-token text is NOT parsed, so user text cannot inject control tokens)."""
        return self.prompting.tokenize(text)

    def token_bytes(self, token: int) -> bytes:
        return self.prompting.token_bytes(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    # ------------------------------------------------------------------ image
    def encode_image(self, image, max_crops: int | None = None) -> EncodedImage:
        """Preprocess as moondream (stretch, bicubic) and run the vision tower + projector, once per distinct image:
        recently used images come from an LRU cache (`image_cache_mb`)."""
        return self.encode_image_cached(image, max_crops)[0]

    def encode_image_cached(self, image, max_crops: int | None = None) -> tuple[EncodedImage, bool]:
        """The encoded image, and whether it came from the cache (no vision tower run). max_crops: 2025 models read
        the image in at most this many local crops (at most the load's max_crops); 2024 models ignore it."""
        if isinstance(image, EncodedImage):
            return image, True
        prepared = image if isinstance(image, PreparedImage) else self.prepare_image(image, max_crops)
        pixels, key = prepared.pixels, prepared.key
        enc = self.cache.image(key)
        if enc is not None:
            return enc, True
        enc = self.multicrop.encode(pixels, key) if self.multicrop else self.vision.encode(pixels, key)
        self.cache.add_image(enc)
        return enc, False

    def prepare_image(self, image, max_crops: int | None = None) -> PreparedImage:
        """Decode and cut `image` as this model reads it (no vision tower yet): what encode_image then encodes.
        max_crops: see encode_image_cached."""
        if self.multicrop:
            return PreparedImage(*self.multicrop.crops_of(image, max_crops))
        return PreparedImage(*pixels_of(image, self.image_size))

    def clear_image_cache(self) -> None:
        """Forget encoded images and saved image prefixes."""
        self.cache.clear_images()

    def forget_context(self) -> None:
        """Empty the KV cache and the saved image-prefix states; encoded images stay. The next question evaluates
        its whole prompt, as a first question about its image does (benchmarks time prefill this way)."""
        self.cache.forget()

    @contextlib.contextmanager
    def batch_mode(self):
        """Settings for asking about many images once each: no prefix KV states (they would only grow memory), an
        image cache of a few entries (duplicate files still hit it), the vision tower kept loaded between images
        unless settings.keep_vision_in_batches is off (--low-ram)."""
        with self.vision.kept_loaded(self.settings.keep_vision_in_batches), self.caches_limited(
                BATCH_IMAGE_CACHE_BYTES, 0):
            yield self

    def caches_limited(self, image_bytes: int, state_bytes: int):
        """Tighter cache bounds for a while (a batch asks about each image once), restored afterwards."""
        return self.cache.limited(image_bytes, state_bytes)

    # ------------------------------------------------------------------ prompt and answers
    def prompt_items(self, image: EncodedImage, question: str, history: Sequence[tuple[str, str]] = ()) -> list:
        """The model input, position by position: token ids, and (image key, row) for each image embedding."""
        return self.prompting.query_items(image.key, image.embeddings.shape[0], question, history)

    def evaluate(self, items: list, images: dict[str, EncodedImage], *, ctx=None, cache=None, chunk=None,
                 between=None) -> int:
        """Bring the KV cache to hold `items` (reusing what it can); how many positions were evaluated. ctx, cache:
        another sequence and its PromptCache (parallel decoding) instead of sequence 0's; chunk, between: see
        prefill.evaluate."""
        plan = prefill.evaluate(ctx or self.context, cache or self.cache, items, images, self.token_embeddings,
                                self.prompting.prefix_attention, chunk=chunk, between=between)
        self.last_prefix_restored = plan.restored
        return len(items) - plan.keep

    def logits(self, image, question: str | None, history: Sequence[tuple[str, str]] = (), *,
               caption: str | None = None) -> np.ndarray:
        """Next-token logits (float32, padding rows included) after the prompt for `question` (or a caption of
        length `caption`): for evaluation and tests."""
        enc = self.encode_image(image)
        items = (self.prompting.caption_items(enc.key, enc.embeddings.shape[0], caption) if caption is not None
                 else self.prompt_items(enc, question, history))
        self.evaluate(items, {enc.key: enc})
        return self.context.logits().copy()

    def query(self, image, question: str, *, stream: bool = False, history: Sequence[tuple[str, str]] = (),
              options: GenerationOptions | None = None, should_stop=None, **option_overrides) -> Answer | Stream:
        """Answer `question` about `image` (a path, bytes, PIL image, array or EncodedImage). Greedy by default.

        options (or keywords max_tokens, temperature, top_p, seed, stop): see GenerationOptions. should_stop: a
        callable checked before every token; True ends the answer with finish_reason "cancelled"."""
        check_question(question, history)
        opts = GenerationOptions.of(options, **option_overrides)
        s = Stream.of_chunks(self.stream_chunks(image, question, history, opts, should_stop))
        return s if stream else s.finish()

    def caption(self, image, length: str = "normal", *, stream: bool = False, options: GenerationOptions | None = None,
                should_stop=None, **option_overrides) -> Answer | Stream:
        """A caption of `image`; length "short", "normal" or (2025-03-27 and later) "long": see `caption_lengths`."""
        self.caption_items_check(length)
        opts = GenerationOptions.of(options, **option_overrides)
        s = Stream.of_chunks(self.stream_chunks(image, None, (), opts, should_stop, caption=length))
        return s if stream else s.finish()

    def caption_items_check(self, length: str, what: str = "caption length") -> None:
        """Raise MoondreamError when this model has no caption of `length` (before any image work); `what` names the
        setting in the message (e.g. "--length")."""
        self.prompting.check_caption(length, what)

    def stream_chunks(self, image, question: str | None, history: Sequence[tuple[str, str]] = (),
                      options: GenerationOptions | None = None, should_stop=None,
                      caption: str | None = None) -> Iterator[Chunk]:
        """The answer (to `question`, or a caption of length `caption`) as text chunks; the last chunk carries
        finish_reason and the Answer with its timings."""
        opts = options or GenerationOptions()
        job = self.answer_prompt(image, question, history, opts, caption)
        n_eval = self.evaluate(job.items, {job.enc.key: job.enc})
        t2 = time.perf_counter()
        steps = token_steps(self.context, self.cache, self.sampler(opts), self.stop_ids, self.token_limit(opts),
                            should_stop)
        for c in chunks(steps, self.token_bytes, opts.stop, self.prompting.end_marker):
            if c.answer is not None:
                c.answer.timings = self.answer_timings(job, n_eval, t2, len(c.answer.tokens))
            yield c

    def answer_prompt(self, image, question: str | None, history: Sequence[tuple[str, str]] = (),
                      options: GenerationOptions | None = None, caption: str | None = None) -> "AnswerPrompt":
        """The image encoded (or from the cache) and the prompt's items: what an answer needs before its prompt is
        evaluated (here on sequence 0, or on another sequence by moondream_cpp/parallel.py)."""
        opts = options or GenerationOptions()
        if caption is not None:
            self.caption_items_check(caption)
        t0 = time.perf_counter()
        enc, cached = self.encode_image_cached(image, opts.max_crops)
        n_rows = enc.embeddings.shape[0]
        items = (self.prompting.caption_items(enc.key, n_rows, caption) if caption is not None
                 else self.prompt_items(enc, question, history))
        return AnswerPrompt(enc, cached, items, t0, time.perf_counter())

    def sampler(self, options: GenerationOptions):
        temperature, top_p = options.sampling(self.prompting.temperature, self.prompting.top_p)
        return make_sampler(temperature, top_p, options.seed, self.n_real_tokens, self.prompting.masked)

    def token_limit(self, options: GenerationOptions) -> int:
        return options.max_tokens if options.max_tokens is not None else self.prompting.max_tokens

    def answer_timings(self, job: "AnswerPrompt", n_eval: int, t_prompt_done: float, n_out: int,
                       restored: bool | None = None) -> dict:
        """An Answer's timings: image, prompt and generation (the generation ends now)."""
        t0, t1, t2, t3 = job.t_start, job.t_encoded, t_prompt_done, time.perf_counter()
        return {
            "image_encode_ms": 0.0 if job.cached else round((t1 - t0) * 1000, 2),
            "image_cached": job.cached,
            **(self.multicrop.timings_of(job.enc.key) if self.multicrop and not job.cached else {}),
            "prefix_restored": self.last_prefix_restored if restored is None else restored,
            "prompt_tokens": len(job.items),
            "prompt_evaluated": n_eval,
            "prompt_ms": round((t2 - t1) * 1000, 2),
            "prompt_per_second": round(n_eval / max(t2 - t1, 1e-9), 2),
            "generated_tokens": n_out,
            "generation_ms": round((t3 - t2) * 1000, 2),
            "generation_per_second": round(n_out / max(t3 - t2, 1e-9), 2),
        }

    # ------------------------------------------------------------------ regions (2025 revisions)
    def detect(self, image, obj: str, max_objects: int | None = None, *, max_crops: int | None = None) -> list[dict]:
        """Boxes of `obj` in `image`: dicts x_min, y_min, x_max, y_max as fractions of the image's width and height
        (unclamped, as the model gives them). max_objects: at most this many (1 .. 50, the default 50)."""
        return skills2025.run(self, image, obj, "detect", max_objects, max_crops).objects

    def point(self, image, obj: str, max_objects: int | None = None, *, max_crops: int | None = None) -> list[dict]:
        """Points at `obj` in `image`: dicts x, y as fractions of the image's width and height."""
        return skills2025.run(self, image, obj, "point", max_objects, max_crops).objects

    # ------------------------------------------------------------------ many requests at once
    def answer_all(self, requests) -> list:
        """Answer every parallel.Request, up to the load's n_parallel together (continuous batching: one batch per
        step holds every answering sequence's next token). Results in request order: an Answer, a RegionResult, or
        the MoondreamError that ended that request. The images come back to back: the vision tower stays loaded
        between them, as in batch_mode."""
        from .parallel import ParallelDecoder

        with self.vision.kept_loaded(self.settings.keep_vision_in_batches):
            return ParallelDecoder(self).run(requests)
