"""The 2025-06-21 tokenizer (moondream/starmie-v1), run by the `tokenizers` library from the tokenizer.json the
converter stores in the text GGUF: llama.cpp has no pre-tokenizer that matches it (docs/architecture.md §9).

User text never becomes a control token: the text is encoded by a copy of the tokenizer without its added (special)
tokens, so "<|endoftext|>" typed by a user is ordinary text, as llama.cpp's tokenizer treats it for the other files.
"""
from __future__ import annotations

import json

from .errors import ModelFileError


class StarmieTokenizer:
    def __init__(self, tokenizer_json: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # a core dependency; only a broken install lacks it
            raise ModelFileError("this model's tokenizer needs the `tokenizers` package: pip install tokenizers") \
                from None
        try:
            spec = json.loads(tokenizer_json)
            self.full = Tokenizer.from_str(tokenizer_json)
            plain = dict(spec, added_tokens=[])
            self.plain = Tokenizer.from_str(json.dumps(plain))
        except Exception as e:  # the library raises its own exception types for malformed files
            raise ModelFileError(f"the model's stored tokenizer.json cannot be read ({str(e)[:200]}); convert the "
                                 "checkpoint again") from None
        self.special = {int(a["id"]) for a in spec.get("added_tokens", []) if a.get("special")}
        decoder = spec.get("decoder") or {}
        self.byte_level = decoder.get("type") == "ByteLevel"
        self._bytes_of = _byte_decoder() if self.byte_level else None
        self._cache: dict[int, bytes] = {}

    def tokenize(self, text: str) -> list[int]:
        return list(self.plain.encode(text, add_special_tokens=False).ids)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens: none), so an answer streams byte-exact like llama.cpp's."""
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        if token in self.special:
            out = b""
        else:
            piece = self.full.id_to_token(int(token))
            if piece is None:
                out = b""
            elif self.byte_level:
                out = bytes(self._bytes_of.get(ch, 0) for ch in piece)
            else:
                out = self.full.decode([int(token)], skip_special_tokens=True).encode("utf-8")
        self._cache[token] = out
        return out


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, reversed (byte-level BPE writes every byte as one character)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}
