"""What the model remembers between questions, and the one question "given this prompt, what can I keep, what can I
restore, what must I evaluate".

- `kv`: what llama.cpp's KV cache holds, position by position, in prompt items (moondream_cpp/prompt.py);
- an LRU of encoded images by pixel hash, bounded by their embeddings' bytes (at least the newest one stays);
- an LRU of saved image prefixes (the KV state of BOS + image), bounded by bytes: switching back to an image skips
  its prefill too. A prefix is saved only when it is about to be overwritten, so a one-image chat holds no copy.

The llama.cpp side is a `KVStore` (moondream_cpp/native_handles.TextContext is the real one); the tests drive this
class with a fake one, no model needed.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence

from .prompt import image_prefix_len


class KVStore(Protocol):
    def truncate(self, n: int) -> None:
        """Keep the first n positions of the sequence, drop the rest."""

    def save_state(self, max_bytes: int):
        """The sequence's state as a bytes-like buffer, or None when it is larger than max_bytes or cannot be read."""

    def load_state(self, buf) -> bool:
        """Replace the sequence by a saved state; False (and an empty sequence) when llama.cpp refuses it."""

    def clear(self) -> None:
        """Empty the whole KV cache."""


@dataclass(frozen=True)
class Plan:
    keep: int  # positions of the prompt already in the KV cache (cached or restored): evaluate items[keep:]
    restored: bool  # the image prefix came from a saved state


class PromptCache:
    def __init__(self, store: KVStore, image_bytes: int, state_bytes: int):
        self.store = store
        self.image_bytes, self.state_bytes = image_bytes, state_bytes
        self.kv: list = []
        self.images: OrderedDict[str, object] = OrderedDict()  # key -> EncodedImage
        self.prefixes: OrderedDict[str, tuple[list, object]] = OrderedDict()  # image key -> (prefix items, state)

    # ------------------------------------------------------------------ images
    def image(self, key: str):
        """The encoded image with this pixel hash, or None; a hit becomes the most recently used."""
        enc = self.images.get(key)
        if enc is not None:
            self.images.move_to_end(key)
        return enc

    def add_image(self, enc) -> None:
        self.images[enc.key] = enc
        self.images.move_to_end(enc.key)
        while self.image_nbytes() > self.image_bytes and len(self.images) > 1:
            self.images.popitem(last=False)

    def image_nbytes(self) -> int:
        return sum(e.embeddings.nbytes for e in self.images.values())

    def prefix_nbytes(self) -> int:
        return sum(len(buf) for _, buf in self.prefixes.values())

    # ------------------------------------------------------------------ the prompt
    def plan(self, items: Sequence, whole_prefix: bool = False) -> Plan:
        """Bring the KV cache to a prefix of `items` (the longest cached or saved one) and say where evaluation
        starts. At least the last item is always left to evaluate: its logits are needed. `whole_prefix`: the image
        prefix attends both ways (2025 revisions), so a part of it cannot be kept: BOS cached with another image
        attended to that image."""
        keep = 0
        for a, b in zip(self.kv, items):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(items) - 1)
        prefix = image_prefix_len(items)
        if whole_prefix and keep < prefix:
            keep = 0
        wanted = items[prefix - 1][0] if prefix else None
        if wanted in self.prefixes:  # the prefix to restore becomes the most recent: the save below cannot evict it
            self.prefixes.move_to_end(wanted)
        self._stash_prefix(keep)
        restored = 0 < prefix < len(items) and keep < prefix and self._restore(list(items[:prefix]))
        # a restored prefix is kept whole; a failed restore leaves the cache empty, so nothing is kept
        keep = prefix if restored else min(keep, len(self.kv))
        self.truncate(keep)
        return Plan(keep, restored)

    def truncate(self, n: int) -> None:
        self.store.truncate(n)
        del self.kv[n:]

    def extend(self, items: Sequence) -> None:
        """`items` were evaluated after what the cache holds."""
        self.kv.extend(items)

    def reset(self) -> None:
        """The KV cache is lost (a failed decode): start empty. Saved prefixes and images stay valid."""
        self.kv = []
        self.store.clear()

    def forget(self) -> None:
        """Empty the KV cache and the saved prefixes; encoded images stay."""
        self.prefixes.clear()
        self.reset()

    def clear_images(self) -> None:
        """Forget encoded images and the saved prefixes made from them; the KV cache stays as it is."""
        self.images.clear()
        self.prefixes.clear()

    @contextlib.contextmanager
    def limited(self, image_bytes: int, state_bytes: int):
        """Tighter bounds for a while (a batch asks about each image once), restored afterwards."""
        saved = self.image_bytes, self.state_bytes
        self.image_bytes, self.state_bytes = min(saved[0], image_bytes), min(saved[1], state_bytes)
        try:
            yield self
        finally:
            self.image_bytes, self.state_bytes = saved

    # ------------------------------------------------------------------ saved prefixes
    def _stash_prefix(self, keep: int) -> None:
        """Save the image prefix the cache holds just before it is overwritten (only `keep` positions survive)."""
        n = image_prefix_len(self.kv)
        if n == 0 or keep >= n or self.state_bytes <= 0:
            return
        key = self.kv[n - 1][0]
        saved = self.prefixes.get(key)
        if saved is not None and saved[0] == self.kv[:n]:
            return
        self.truncate(n)  # the state is the prefix alone
        buf = self.store.save_state(self.state_bytes)
        if buf is None:
            return
        self.prefixes[key] = (list(self.kv), buf)
        self.prefixes.move_to_end(key)
        while self.prefix_nbytes() > self.state_bytes:
            self.prefixes.popitem(last=False)

    def _restore(self, prefix: list) -> bool:
        key = prefix[-1][0]
        hit = self.prefixes.get(key)
        if hit is None or hit[0] != prefix:
            return False
        self.truncate(0)
        if not self.store.load_state(hit[1]):
            self.truncate(0)
            del self.prefixes[key]
            return False
        self.prefixes.move_to_end(key)
        self.kv = list(prefix)
        return True
