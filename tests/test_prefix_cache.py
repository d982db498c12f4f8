"""Encode once, ask many: the image LRU and the saved image-prefix KV states give the same logits as a fresh model,
and switching back to a recent image evaluates only the new question's tokens."""
import numpy as np
from PIL import Image

from conftest import rel_logits
from moondream_cpp import Moondream


def test_switching_images_restores_the_prefix_exactly(converted, photo, reference):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    other = Image.fromarray(np.asarray(photo)[:, ::-1].copy())  # a different picture
    q = "What is in the image?"
    with Moondream.load(text, mmproj, n_ctx=512) as md, Moondream.load(text, mmproj, n_ctx=512, image_cache_mb=0,
                                                                       state_cache_mb=0) as fresh:
        a1 = md.query(photo, q, max_tokens=8)
        md.query(photo, "And else?", max_tokens=8)
        assert len(md.cache.prefixes) == 0  # one image so far: its prefix lives in the KV cache alone, no saved copy
        b = md.query(other, q, max_tokens=8)
        assert len(md.cache.prefixes) == 1  # saved just before the other image overwrote it
        a2 = md.query(photo, "And the colours?", max_tokens=8)  # back to the first image
        t = a2.timings
        assert t["image_cached"] and t["prefix_restored"]
        assert t["prompt_evaluated"] == t["prompt_tokens"] - 1 - 64  # BOS and 64 image positions came from the cache
        assert b.timings["prefix_restored"] is False
        assert b.timings["prompt_evaluated"] == b.timings["prompt_tokens"] - 1  # a new image: all but BOS
        for img, question, got in [(photo, q, a1), (other, q, b), (photo, "And the colours?", a2)]:
            assert fresh.query(img, question, max_tokens=8).tokens == got.tokens
        restored = md.logits(other, "Which side?")  # restores the other image's prefix
        assert md.last_prefix_restored
        want = reference("2024-04-02").logits(other, "Which side?")
        assert rel_logits(restored[: len(want)], want) < 2e-3
        assert np.array_equal(restored, fresh.logits(other, "Which side?"))


def test_the_caches_stay_within_their_byte_budgets(converted, photo):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    with Moondream.load(text, mmproj, n_ctx=512, image_cache_mb=0.2, state_cache_mb=0.3) as md:
        for k in range(6):
            img = Image.fromarray(np.roll(np.asarray(photo), 7 * k, axis=1))
            md.query(img, "What?", max_tokens=1)
        assert sum(e.embeddings.nbytes for e in md.cache.images.values()) <= 0.2 * 2**20 or len(md.cache.images) == 1
        assert sum(len(b) for _, b in md.cache.prefixes.values()) <= 0.3 * 2**20
        assert len(md.cache.prefixes) < 6


def test_forget_context_evaluates_the_whole_prompt_again(converted, photo):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    with Moondream.load(text, mmproj, n_ctx=512) as md:
        q = "What is in the image?"
        first = md.query(photo, q, max_tokens=8)
        md.query(Image.fromarray(np.asarray(photo)[::-1].copy()), q, max_tokens=1)  # saves photo's prefix state
        assert len(md.cache.prefixes) == 1
        md.forget_context()
        again = md.query(photo, q, max_tokens=8)
        t = again.timings
        assert t["image_cached"] and not t["prefix_restored"]  # the embeddings stay; the KV state does not
        assert t["prompt_evaluated"] == t["prompt_tokens"]  # BOS included: nothing was left in the cache
        assert again.tokens == first.tokens
