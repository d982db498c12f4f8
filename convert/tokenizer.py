"""GGUF tokenizer metadata (gpt2 BPE, pre-tokenizer phi-2) from a checkpoint's tokenizer.json
(docs/architecture.md §6.1)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType as T
from gguf import TokenType

from moondream_cpp import spec
from moondream_cpp.errors import CheckpointError


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int


def read_vocab(checkpoint_dir: Path, n_rows: int, file: Path | None = None) -> Vocab:
    """The checkpoint's tokenizer.json (or `file`) as a GGUF vocabulary of n_rows entries."""
    path = file or checkpoint_dir / "tokenizer.json"
    if not path.exists():
        raise CheckpointError(f"no tokenizer.json in {checkpoint_dir}: copy the checkpoint's tokenizer files too")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
        model = tj["model"]
        pre = tj.get("pre_tokenizer") or {}
        if not isinstance(model, dict) or not isinstance(pre, dict):
            raise TypeError("model and pre_tokenizer must be objects")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid HF tokenizer file: {e!r}") from None
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise CheckpointError(f"{path}: expected a GPT-2 style byte-level BPE tokenizer (as phi-1.5's), got model "
                              f"{model.get('type')!r} with pre-tokenizer {pre.get('type')!r}")
    try:
        by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in model["vocab"].items()}
        for added in tj.get("added_tokens", []):
            # added tokens are stored as raw text (llama.cpp matches user-defined tokens verbatim, like HF does)
            by_id[added["id"]] = (added["content"],
                                  TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    except (AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid HF tokenizer file: {e!r}") from None
    _check_tokens(path, by_id)
    n_real = max(by_id) + 1
    if n_real > n_rows:
        raise CheckpointError(f"tokenizer has {n_real} tokens but the embedding matrix only {n_rows} rows")
    tokens, types = [], []
    for i in range(n_rows):
        tok, typ = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(tok)
        types.append(int(typ))
    merges = [m if isinstance(m, str) else " ".join(map(str, m)) for m in model.get("merges") or []]
    if not merges:
        raise CheckpointError(f"{path} has no BPE merges; a GPT-2 style tokenizer needs its merges list")
    bos = next((i for i, (t, _) in by_id.items() if t == spec.BOS_TOKEN), None)
    if bos is None:
        raise CheckpointError(f"{path} has no {spec.BOS_TOKEN} token, which moondream uses as BOS and EOS")
    return Vocab(tokens, types, merges, bos)


def _check_tokens(path: Path, by_id: dict) -> None:
    """Ids are whole numbers, texts non-empty and each text once: llama.cpp aborts on a vocabulary that lists a token
    text twice (it maps texts to ids both ways)."""
    if not by_id:
        raise CheckpointError(f"{path} has no tokens")
    seen: dict[str, int] = {}
    for i, (text, _) in by_id.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0 or not isinstance(text, str) or not text:
            raise CheckpointError(f"{path}: token {str(text)[:40]!r} with id {str(i)[:20]} is not a non-empty text "
                                  "with a non-negative whole-number id")
        if text in seen:
            raise CheckpointError(f"{path}: the token {text[:40]!r} has two ids ({seen[text]} and {i})")
        seen[text] = i


def vocab_keys(v: Vocab, pre: str = "phi-2") -> list[tuple]:
    """(key, value, type, subtype) rows for the text GGUF. pre: phi-2, the GPT-2 regex, not 'default'
    (docs/architecture.md P4); 'default' where llama.cpp only loads the vocabulary and never tokenizes with it."""
    return [
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.pre", pre, T.STRING, None),
        ("tokenizer.ggml.tokens", v.tokens, T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", v.types, T.ARRAY, T.INT32),
        ("tokenizer.ggml.merges", v.merges, T.ARRAY, T.STRING),
        ("tokenizer.ggml.bos_token_id", v.bos_id, T.UINT32, None),
        ("tokenizer.ggml.eos_token_id", v.bos_id, T.UINT32, None),
        ("tokenizer.ggml.unknown_token_id", v.bos_id, T.UINT32, None),
        ("tokenizer.ggml.add_bos_token", True, T.BOOL, None),  # moondream starts with BOS (docs/architecture.md P6)
        ("tokenizer.ggml.add_eos_token", False, T.BOOL, None),
    ]
