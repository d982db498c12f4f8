"""Evaluating a prompt: keep what the KV cache already holds (moondream_cpp/prompt_cache.py), then send the rest to
llama.cpp in batches of token ids or embedding rows."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import PromptTooLongError
from .native_handles import TextContext
from .prompt import image_prefix_len, is_image_row, runs
from .prompt_cache import Plan, PromptCache
from .token_embeddings import TokenEmbeddings


def evaluate(ctx: TextContext, cache: PromptCache, items: list, images: dict,
             token_embeddings: TokenEmbeddings | None, prefix_attention: bool = False, *,
             chunk: int | None = None, between: Callable[[], None] | None = None) -> Plan:
    """Bring the KV cache to hold `items`, the last one's logits ready; `images` maps image keys to EncodedImage.
    `prefix_attention`: the image prefix (BOS + image) is one batch whose rows attend to each other (2025).
    `chunk`: at most this many positions a batch (else the context's n_batch), and `between()` runs after every
    batch but the last (other sequences decode meanwhile: moondream_cpp/parallel.py)."""
    if len(items) > ctx.n_ctx:
        raise PromptTooLongError(f"the prompt needs {len(items)} positions but the context holds {ctx.n_ctx}; ask a "
                                 "shorter question, clear the chat history, or load with a larger n_ctx")
    plan = cache.plan(items, whole_prefix=prefix_attention)
    prefix, n, i = image_prefix_len(items), len(items), plan.keep
    size = min(ctx.n_batch, chunk or ctx.n_batch)

    def done(i: int, j: int) -> None:  # items[i:j] went into the KV cache
        cache.extend(items[i:j])
        if between is not None and j < n:
            between()

    try:
        if prefix_attention and i < prefix:  # plan() keeps all of the prefix or none of it
            ctx.decode_rows_bidirectional(embedding_rows(items[:prefix], images, token_embeddings), 0, prefix == n)
            done(0, prefix)
            i = prefix
        if token_embeddings is not None and i < prefix:
            # the image prefix (BOS, markers, image) goes in as embeddings, its tokens' rows beside the image's: one
            # pass over the weights per batch, not one more for a lone BOS. What follows it stays token batches, so
            # a question costs the same evaluation whether its image's prefix was cached or not: the same logits.
            while i < prefix:
                j = min(i + size, prefix)
                ctx.decode_rows(embedding_rows(items[i:j], images, token_embeddings), i, j == n)
                done(i, j)
                i = j
        for i, j, img in runs(items, i, n, size):
            if img:
                key = items[i][0]
                ctx.decode_rows(images[key].embeddings[items[i][1]: items[j - 1][1] + 1], i, j == n)
            else:
                ctx.decode_tokens(items[i:j], i, j == n)
            done(i, j)
    except BaseException:  # a failed decode or a Ctrl-C between a decode and its record
        cache.reset()  # what llama.cpp holds is no longer known
        raise
    return plan


def embedding_rows(items: list, images: dict, token_embeddings: TokenEmbeddings) -> np.ndarray:
    """float32 [len(items), n_embd]: a token's row of the embedding table, an image position's embedding."""
    out = np.empty((len(items), token_embeddings.n_embd), dtype=np.float32)
    toks = [(n, t) for n, t in enumerate(items) if not is_image_row(t)]
    if toks:
        out[[n for n, _ in toks]] = token_embeddings.rows([t for _, t in toks])
    for i, j, img in runs(items, 0, len(items), len(items)):
        if img:  # one image's rows are consecutive: copied as slices
            for a, b in _same_image(items, i, j):
                key, first = items[a]
                out[a:b] = images[key].embeddings[first: first + b - a]
    return out


def _same_image(items: list, i: int, j: int):
    a = i
    while a < j:
        b = a
        while b < j and items[b][0] == items[a][0]:
            b += 1
        yield a, b
        a = b
