"""The prompt cache without a model: a fake llama.cpp side that records what it holds, so every plan (what is kept,
restored, evaluated), the eviction order and the byte accounting are checked against hand-made expectations."""
import numpy as np
import pytest

from moondream_cpp.prompt_cache import PromptCache
from moondream_cpp.vision import EncodedImage

BYTES_PER_POSITION = 10


class FakeKV:
    """Holds a sequence of items like llama.cpp's KV cache; a state is a buffer of 10 bytes per position."""

    def __init__(self):
        self.held: list = []
        self.saved: dict[int, list] = {}  # id(buffer) -> the items it holds
        self.refuse_loads = False
        self.calls: list = []

    def truncate(self, n):
        self.calls.append(("truncate", n))
        del self.held[n:]

    def save_state(self, max_bytes):
        size = len(self.held) * BYTES_PER_POSITION
        if size > max_bytes:
            return None
        buf = bytearray(size)
        self.saved[id(buf)] = list(self.held)
        return buf

    def load_state(self, buf):
        if self.refuse_loads:
            self.held = []
            return False
        self.held = list(self.saved[id(buf)])
        return True

    def clear(self):
        self.held = []

    def evaluate(self, cache, items):
        """What prefill does after the plan: llama.cpp gets items[keep:], the cache records them."""
        plan = cache.plan(items)
        assert self.held == cache.kv == list(items[: plan.keep])  # the plan left both sides agreeing
        self.held += items[plan.keep:]
        cache.extend(items[plan.keep:])
        return plan


BOS = 0


def prompt(image: str, question: int, n_rows: int = 4) -> list:
    return [BOS] + [(image, j) for j in range(n_rows)] + [100 + question, 200]


def prefix_bytes(n_rows: int = 4) -> int:
    return (1 + n_rows) * BYTES_PER_POSITION


@pytest.fixture
def kv():
    return FakeKV()


def test_reuses_the_longest_cached_prefix_and_always_evaluates_the_last_item(kv):
    cache = PromptCache(kv, 10**6, 10**6)
    first = kv.evaluate(cache, prompt("A", 1))
    assert (first.keep, first.restored) == (0, False)
    again = kv.evaluate(cache, prompt("A", 1))
    assert again.keep == len(prompt("A", 1)) - 1  # its logits are needed
    follow = kv.evaluate(cache, prompt("A", 2))
    assert follow.keep == 5 and not cache.prefixes  # BOS + 4 rows kept; one image: no saved copy


def test_an_image_prefix_is_saved_when_overwritten_and_restored_on_return(kv):
    cache = PromptCache(kv, 10**6, 10**6)
    kv.evaluate(cache, prompt("A", 1))
    b = kv.evaluate(cache, prompt("B", 1))
    assert b.keep == 1 and not b.restored  # only BOS in common
    assert list(cache.prefixes) == ["A"] and cache.prefixes["A"][0] == prompt("A", 1)[:5]
    assert len(cache.prefixes["A"][1]) == prefix_bytes()  # saved from the prefix alone, the question cut first
    back = kv.evaluate(cache, prompt("A", 3))
    assert back.restored and back.keep == 5
    assert list(cache.prefixes) == ["B", "A"]  # B saved as it was overwritten; A used most recently
    assert cache.prefix_nbytes() == 2 * prefix_bytes()


def test_saved_prefixes_are_evicted_least_recently_used_first_within_the_byte_bound(kv):
    cache = PromptCache(kv, 10**6, 2 * prefix_bytes())
    for name in "ABC":
        kv.evaluate(cache, prompt(name, 1))
    assert list(cache.prefixes) == ["A", "B"]
    plan = kv.evaluate(cache, prompt("A", 2))  # C saved as it is overwritten: B, not A (wanted now), goes
    assert plan.restored
    assert list(cache.prefixes) == ["C", "A"]
    assert cache.prefix_nbytes() <= cache.state_bytes
    assert not kv.evaluate(cache, prompt("B", 2)).restored  # B was evicted: evaluated afresh


def test_a_state_larger_than_the_bound_is_not_kept(kv):
    cache = PromptCache(kv, 10**6, prefix_bytes() - 1)
    kv.evaluate(cache, prompt("A", 1))
    plan = kv.evaluate(cache, prompt("B", 1))
    assert not cache.prefixes and plan.keep == 1


def test_no_prefix_states_when_their_bound_is_zero(kv):
    cache = PromptCache(kv, 10**6, 0)
    kv.evaluate(cache, prompt("A", 1))
    kv.evaluate(cache, prompt("B", 1))
    assert not cache.prefixes and ("truncate", 5) not in kv.calls  # nothing cut down for a save


def test_a_refused_state_is_dropped_and_the_prompt_evaluated_whole(kv):
    cache = PromptCache(kv, 10**6, 10**6)
    kv.evaluate(cache, prompt("A", 1))
    kv.evaluate(cache, prompt("B", 1))
    kv.refuse_loads = True
    plan = kv.evaluate(cache, prompt("A", 2))
    assert (plan.keep, plan.restored) == (0, False) and "A" not in cache.prefixes


def test_forget_keeps_images_and_drops_states_and_the_kv(kv):
    cache = PromptCache(kv, 10**6, 10**6)
    cache.add_image(EncodedImage(np.zeros((4, 2), np.float32), "A"))
    kv.evaluate(cache, prompt("A", 1))
    kv.evaluate(cache, prompt("B", 1))
    cache.forget()
    assert cache.kv == [] and kv.held == [] and not cache.prefixes and "A" in cache.images
    assert kv.evaluate(cache, prompt("A", 1)).keep == 0


def test_the_image_lru_is_bounded_by_bytes_and_keeps_the_newest(kv):
    row = np.zeros((4, 2), np.float32)  # 32 bytes each
    cache = PromptCache(kv, 3 * row.nbytes, 0)
    for key in "ABC":
        cache.add_image(EncodedImage(row.copy(), key))
    assert cache.image("A") is not None  # A becomes the most recent
    cache.add_image(EncodedImage(row.copy(), "D"))
    assert list(cache.images) == ["C", "A", "D"] and cache.image_nbytes() == 3 * row.nbytes
    cache.add_image(EncodedImage(np.zeros((100, 2), np.float32), "E"))  # alone over the bound: still kept
    assert list(cache.images) == ["E"]


def test_limited_bounds_apply_inside_the_block_only(kv):
    cache = PromptCache(kv, 1000, 1000)
    with cache.limited(10, 0):
        assert (cache.image_bytes, cache.state_bytes) == (10, 0)
    assert (cache.image_bytes, cache.state_bytes) == (1000, 1000)


def test_a_bidirectional_prefix_is_kept_whole_or_not_at_all():
    """2025 prefixes attend both ways: BOS evaluated beside image A must not be kept for image B (state saving
    off, so nothing is restored either)."""
    kv, cache = FakeKV(), PromptCache(FakeKV(), 10**9, 0)
    cache.store = kv
    kv.evaluate(cache, prompt("A", 1))
    assert cache.plan(prompt("B", 1), whole_prefix=True).keep == 0  # only BOS was common: dropped
    assert kv.held == []
    kv.evaluate(cache, prompt("A", 1))
    assert cache.plan(prompt("A", 2), whole_prefix=True).keep == 5  # the whole prefix is common: kept
    assert cache.plan(prompt("A", 2), whole_prefix=False).keep == 5
