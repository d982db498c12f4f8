"""Rows of the text model's token embedding, read from the GGUF file, so an image prefix (BOS, markers, image) can go
to llama.cpp as one batch of embeddings: llama.cpp takes either token ids or embeddings per batch, and a separate
batch for the tokens costs another pass over the weights (a 1-token BOS pass alone reads all 0.9 GB of them). Only the
prefix's few tokens come through here, so the row cache stays a handful of rows.
"""
from __future__ import annotations

import os

import numpy as np
from gguf.quants import dequantize

from .gguf_header import TensorEntry


class TokenEmbeddings:
    def __init__(self, path: str | os.PathLike, entry: TensorEntry):
        self.path = path
        self.n_embd, self.n_vocab = entry.ne[0], entry.ne[1]
        self.qtype = entry.type
        self.offset = entry.offset
        self.row_bytes = entry.nbytes // self.n_vocab
        self._rows: dict[int, np.ndarray] = {}  # a prompt's few distinct tokens recur: BOS, the format's words

    def rows(self, ids) -> np.ndarray:
        """float32 [len(ids), n_embd]: what llama.cpp's get_rows gives for these ids (the same dequantization)."""
        missing = sorted({int(t) for t in ids} - self._rows.keys())
        if missing:
            with open(self.path, "rb") as f:  # pread of a row each: the embedding's other rows stay out of memory
                raw = b"".join(os.pread(f.fileno(), self.row_bytes, self.offset + t * self.row_bytes)
                               for t in missing)
            data = np.frombuffer(raw, dtype=np.uint8).reshape(len(missing), self.row_bytes)
            out = dequantize(data, self.qtype).astype(np.float32, copy=False).reshape(len(missing), self.n_embd)
            for t, row in zip(missing, out):
                self._rows[t] = row
        return np.stack([self._rows[int(t)] for t in ids]) if len(ids) else np.zeros((0, self.n_embd), np.float32)
