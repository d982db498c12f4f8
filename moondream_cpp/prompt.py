"""The model input for a question, position by position, exactly as the revision was trained (docs/architecture.md §4):
BOS, the image rows (between "<image>" markers in early revisions), the chat history, the question, the answer
prefix. A pure function of (revision, image, history, question): no model, no state.

An item is a token id (int) or an image row (image key, row index): the KV cache is described in the same items, so
a cached prefix is found by comparing lists.
"""
from __future__ import annotations

from typing import Callable, Sequence

from . import spec
from .errors import MoondreamError


def check_question(question, history=()) -> None:
    """A question is text with something in it, the history (question, answer) pairs of text: a caller's mistake
    is a clear error before the image is read or anything tokenized."""
    if not isinstance(question, str):
        raise MoondreamError(f"the question must be text, not {type(question).__name__}")
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise MoondreamError("the history must be a list of (question, answer) pairs")
    for k, turn in enumerate(history):
        if isinstance(turn, str) or not (isinstance(turn, Sequence) and len(turn) == 2
                                         and all(isinstance(t, str) for t in turn)):
            raise MoondreamError(f"history turn {k} must be a (question, answer) pair of text")
    if not question.strip():
        raise MoondreamError("the question is empty; ask something about the image")


def prompt_items(revision: spec.Revision, image_key: str, n_image_rows: int, question: str,
                 history: Sequence[tuple[str, str]], tokenize: Callable[[str], list[int]], bos: int) -> list:
    """Items of the prompt; `tokenize` turns text into ids without BOS and without parsing special tokens."""
    hist = "".join(spec.TURN_FORMAT.format(question=q, answer=a) for q, a in history)
    after = f"\n\n{hist}" + spec.QUESTION_FORMAT.format(question=question) + revision.answer_prefix
    items: list = [bos]
    if revision.image_markers:
        items += tokenize(spec.IMAGE_MARKERS[0])
        after = spec.IMAGE_MARKERS[1] + after
    items += [(image_key, j) for j in range(n_image_rows)]
    items += tokenize(after)
    return items


def is_image_row(item) -> bool:
    return isinstance(item, tuple)


def image_prefix_len(items: Sequence) -> int:
    """Positions up to and including the last image row (BOS, markers, image); 0 when there is no image."""
    return 1 + max((n for n, it in enumerate(items) if is_image_row(it)), default=-1)


def runs(items: Sequence, start: int, end: int, max_len: int):
    """(i, j, is_image) runs of items[start:end]: all token ids or all image rows, at most `max_len` long (one batch
    each; llama.cpp takes either ids or embeddings per batch)."""
    i = start
    while i < end:
        img = is_image_row(items[i])
        j = i
        while j < end and j - i < max_len and is_image_row(items[j]) == img:
            j += 1
        yield i, j, img
        i = j
