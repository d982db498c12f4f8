"""The vision side: moondream's preprocessing, then llama.cpp's vision tower + projector, with the tower loaded only
while it works when settings.mmproj_on_demand is on (--low-ram keeps text and vision weights from being resident
together)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np

from . import residency
from .errors import ModelFileError
from .gguf_header import file_identity
from .image import load_image, preprocess
from .native import deferred_interrupt
from .native_handles import TextModel, VisionContext


@dataclass
class EncodedImage:
    """Projected image embeddings [n_patches, n_embd]; reusable across questions and conversations."""

    embeddings: np.ndarray
    key: str  # hash of the preprocessed pixels: equal images share cache entries
    encode_ms: float = 0.0


@dataclass(frozen=True)
class PreparedImage:
    """An image decoded and cut as the model reads it (2024: one stretched view; 2025: its crops), with its hash:
    small, and free of the decoded original. Moondream.prepare_image makes one; pass it wherever an image goes
    (the server queues these)."""

    pixels: object  # uint8 [size, size, 3] (2024) or crops.Crops (2025)
    key: str


def pixels_of(image, size: int) -> tuple[np.ndarray, str]:
    """Preprocessed uint8 pixels of a path, bytes, PIL image or array, and their hash (the image cache key)."""
    pixels = preprocess(load_image(image), size)
    return pixels, hashlib.sha256(pixels.tobytes()).hexdigest()[:32]


class Vision:
    def __init__(self, mmproj_info, text_model: TextModel, settings, text_file: str, keep_resident=None):
        self.info, self.model, self.settings = mmproj_info, text_model, settings
        self.text_file = text_file
        self.keep_resident = keep_resident  # (offset, nbytes) of the text file not to fault back in
        self.image_size, self.n_patches = mmproj_info.image_size, mmproj_info.n_patches
        self.held = False  # kept loaded between images (batch mode) even when on demand
        self.between_passes = None  # run after each pass of the tower (parallel.py: the answers in flight step)
        self.context: VisionContext | None = None
        self.identity = _identity(mmproj_info.file.path)  # the file validated at load
        # opened now even when on demand: a broken mmproj fails the load, and the first image needs it anyway
        self.open()

    @property
    def is_open(self) -> bool:
        return self.context is not None

    def open(self) -> None:
        """Load the tower from the mmproj file, which must still be the one validated at load: on demand it is
        opened again for each new image, and a file replaced meanwhile never went through our checks."""
        if _identity(self.info.file.path) != self.identity:
            raise ModelFileError(f"the mmproj {self.info.file.path} changed on disk after the model was loaded; load "
                                 "the model again (restart the server) to use the new file")
        cfg = self.settings
        self.context = VisionContext(self.info.file.path, self.model, n_threads=cfg.n_threads,
                                     use_gpu=bool(cfg.mmproj_gpu and cfg.n_gpu_layers != 0))

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
            self.context = None

    def encode(self, pixels: np.ndarray, key: str) -> EncodedImage:
        with self.session() as encode_crop:
            t0 = time.perf_counter()
            emb = encode_crop(pixels)
            return EncodedImage(emb, key, (time.perf_counter() - t0) * 1000)

    @contextlib.contextmanager
    def session(self):
        """The tower loaded for the block, which gets a function: uint8 [size, size, 3] -> [n_patches, n_embd] rows.
        On demand, the tower lives only for the block, and with the text weights mapped those are handed back while it
        runs: the text weights are not used meanwhile, so the two are never resident together (the text pages wait in
        the page cache, and come back at once after). A multi-crop image runs all its crops in one session."""
        on_demand = self.settings.mmproj_on_demand and not self.held
        lean = on_demand and self.settings.mmap
        with deferred_interrupt():
            if self.context is None:
                if lean:
                    residency.release(self.text_file)
                self.open()
            def encode_crop(pixels):
                rows = self.context.encode(pixels, self.n_patches)
                if self.between_passes is not None and not lean:  # lean: the text weights are not resident now
                    self.between_passes()
                return rows

            try:
                yield encode_crop
            finally:
                if on_demand:  # the vision tower only lives while it works
                    self.close()
                if lean:
                    residency.retake(self.text_file, skip=self.keep_resident)

    @contextlib.contextmanager
    def interleaved(self, between):
        """While the block runs, `between()` after each pass of the tower (not while the text weights are handed
        back: on demand with a mapped text model). Encode timings then include it."""
        old, self.between_passes = self.between_passes, between
        try:
            yield
        finally:
            self.between_passes = old

    @contextlib.contextmanager
    def kept_loaded(self, keep: bool):
        """While the block runs, keep the tower loaded between images (when `keep`); on demand again after."""
        held = self.held
        self.held = held or keep
        try:
            yield
        finally:
            self.held = held
            if not held and self.settings.mmproj_on_demand and self.context is not None:
                with deferred_interrupt():
                    self.close()


def _identity(path) -> tuple | None:
    try:
        return file_identity(os.stat(path))
    except OSError:
        return None
