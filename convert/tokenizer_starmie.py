"""The 06-21 tokenizer (moondream/starmie-v1): stored whole in the text GGUF (moondream.tokenizer.json, which the
runtime hands to the `tokenizers` library), plus a gpt2-style copy of its vocabulary so llama.cpp loads the file.
llama.cpp never tokenizes with that copy: it has no pre-tokenizer that matches starmie's."""
from __future__ import annotations

import json
from pathlib import Path

from gguf import TokenType

from moondream_cpp.errors import CheckpointError

from .tokenizer import Vocab


def _parse(path: Path) -> tuple[str, dict]:
    try:
        text = path.read_text(encoding="utf-8")
        tj = json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable tokenizer.json: {e}") from None
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise CheckpointError(f"{path} is not an HF tokenizer file (no \"model\" object)")
    try:  # the runtime loads it with the tokenizers library: a file it refuses must not become a model
        from tokenizers import Tokenizer
    except ImportError:
        pass
    else:
        try:
            Tokenizer.from_str(text)
        except Exception as e:  # the library raises its own exception types
            raise CheckpointError(f"{path}: the tokenizers library cannot load it: {str(e)[:200]}") from None
    return text, tj


def _unique_texts(by_id: dict[int, tuple[str, int]]) -> None:
    """llama.cpp aborts on an empty-named or repeated token text; such an entry is renamed in the GGUF copy only
    (the runtime reads ids and texts from the stored tokenizer.json)."""
    seen = set()
    for i in sorted(by_id):
        text, typ = by_id[i]
        if not text or text in seen:
            by_id[i] = (f"[STARMIE_{i}]", typ)
        seen.add(by_id[i][0])


def read_starmie(path: Path, n_rows: int, bos: int) -> tuple[Vocab, str]:
    """(the gpt2-style vocabulary of n_rows entries, the tokenizer.json text to store)."""
    text, tj = _parse(path)
    model = tj["model"]
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"{path}: expected a BPE tokenizer (starmie-v1 is one), got model type "
                              f"{model.get('type')!r}")
    try:
        by_id: dict[int, tuple[str, int]] = {}
        for t, i in model["vocab"].items():
            by_id[i] = (t, TokenType.NORMAL)
        for added in tj.get("added_tokens") or []:
            by_id[added["id"]] = (added["content"],
                                  TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    except (AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid HF tokenizer file: {e!r}") from None
    bad = [i for i, (t, _) in by_id.items() if isinstance(i, bool) or not isinstance(i, int) or i < 0
           or not isinstance(t, str)]
    if bad or not by_id:
        raise CheckpointError(f"{path}: token ids must be non-negative whole numbers and texts strings"
                              + (f" (id {str(bad[0])[:20]})" if bad else " (it has no tokens)"))
    n_real = max(by_id) + 1
    if n_real > n_rows:
        raise CheckpointError(f"{path} has {n_real} tokens but the model's embedding matrix only {n_rows} rows: it is "
                              "not this model's tokenizer")
    if bos not in by_id:
        raise CheckpointError(f"{path} has no token {bos}, which this revision uses as BOS and EOS")
    if not merges:
        raise CheckpointError(f"{path} has no BPE merges")
    _unique_texts(by_id)
    tokens, types = [], []
    for i in range(n_rows):
        tok, typ = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(tok)
        types.append(int(typ))
    return Vocab(tokens, types, merges, bos), text
