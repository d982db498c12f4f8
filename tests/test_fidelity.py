"""Convert -> load -> compare with the PyTorch reference on the same weights (both real checkpoint layouts)."""
import numpy as np
import pytest
import torch

from conftest import LAYOUTS, rel, rel_logits
from moondream_cpp import Moondream

QUESTION = "What is in the image?"
TOL = {"f32": 1e-3, "f16": 1e-2}


def reference_greedy(ref, image, question, n):
    """Reference greedy tokens plus each step's top-1 margin: proof that the test checkpoint is decisive."""
    emb = ref.encode_image(image)
    logits, cache = ref.forward(ref.prompt_embeds(emb, question))
    ids, margins = [], []
    for _ in range(n):
        row = ref._masked(logits[-1])
        top2 = torch.topk(row, 2).values
        margins.append(float(top2[0] - top2[1]))
        tok = int(torch.argmax(row))
        if tok in ref._stop_ids():
            break
        ids.append(tok)
        logits, cache = ref.forward(ref.embed([tok]), cache)
    return ids, margins


@pytest.fixture(scope="module")
def models(converted):
    loaded = {}

    def get(layout, kind):
        if (layout, kind) not in loaded:
            loaded[(layout, kind)] = Moondream.load(*converted(layout, kind, kind), n_ctx=512)
        return loaded[(layout, kind)]

    yield get
    for m in loaded.values():
        m.close()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_image_embeddings_match_reference(models, reference, photo, layout, kind):
    md, ref = models(layout, kind), reference(layout)
    got = md.encode_image(photo).embeddings
    want = ref.encode_image(photo).numpy()
    assert got.shape == want.shape == (ref.ck.vision.n_patches, ref.ck.text.n_embd)
    err = rel(got, want)
    print(f"{layout} {kind}: image embedding relative error {err:.2e}")
    assert err < TOL[kind]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_next_token_logits_match_reference(models, reference, photo, layout, kind):
    md, ref = models(layout, kind), reference(layout)
    n = ref.n_real_tokens
    for history in [(), [("Is there a red square?", "Yes, on the left.")]]:
        got = md.logits(photo, QUESTION, history)[:n]
        want = ref.logits(photo, QUESTION, history)[:n]
        err = rel_logits(got, want)
        print(f"{layout} {kind} history={len(history)}: logits relative error {err:.2e}")
        assert err < TOL[kind]
        assert int(np.argmax(got)) == int(np.argmax(want))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_greedy_answer_identical(models, reference, photo, layout, kind):
    md, ref = models(layout, kind), reference(layout)
    want, margins = reference_greedy(ref, photo, QUESTION, 24)
    assert len(want) == 24, "the test checkpoint should not stop early"
    # decisive: every step's winner leads by far more than any numerical error seen above
    assert min(margins) > 0.3, f"test checkpoint not decisive enough: margins {sorted(margins)[:3]}"
    got = md.query(photo, QUESTION, max_tokens=24)
    assert got.tokens == want
    assert got.text == ref.tokenizer.decode(want).strip()
    assert got.finish_reason == "length"


def test_follow_up_reuses_the_image_prefix(models, reference, photo):
    md, ref = models("2024-04-02", "f32"), reference("2024-04-02")
    enc = md.encode_image(photo)
    first = md.query(enc, QUESTION, max_tokens=8)
    hist = [(QUESTION, first.text)]
    second = md.query(enc, "And what else?", max_tokens=8, history=hist)
    # only the new text is evaluated: BOS and the image rows stay in the KV cache
    assert second.timings["prompt_evaluated"] < second.timings["prompt_tokens"] - ref.ck.vision.n_patches
    assert second.timings["image_cached"] is True
    ids, _ = ref.generate(photo, "And what else?", max_tokens=8, history=hist)
    assert second.tokens == ids


def test_markers_and_stop_rule_follow_the_revision(models):
    old, new = models("moondream1", "f32"), models("2024-04-02", "f32")
    enc_old = old.encode_image(np.zeros((20, 30, 3), np.uint8))
    items = old.prompt_items(enc_old, "Hi?")
    assert items[0] == old.bos
    assert old.detokenize(items[1:4]) == "<image>"
    assert old.detokenize([t for t in items if not isinstance(t, tuple)][4:]).endswith("Answer: ")
    assert old.stop_ids == set(old.tokenize("<END>")) == {27, 10619, 29}
    enc_new = new.encode_image(np.zeros((20, 30, 3), np.uint8))
    items = new.prompt_items(enc_new, "Hi?")
    assert items[0] == new.bos and isinstance(items[1], tuple)
    assert new.detokenize(items[1 + enc_new.embeddings.shape[0]:]) == "\n\nQuestion: Hi?\n\nAnswer:"
    assert new.stop_ids == {50256}


def test_checkpoint_is_decisive_enough_to_catch_mistakes(models, reference, photo):
    """Known pitfalls (no BOS, letterboxed instead of stretched image) move the logits far beyond the tolerance."""
    md, ref = models("2024-04-02", "f32"), reference("2024-04-02")
    n = ref.n_real_tokens
    want = ref.logits(photo, QUESTION)[:n]
    enc = md.encode_image(photo)
    items = md.prompt_items(enc, QUESTION)
    md.evaluate(items[1:], {enc.key: enc})  # docs/architecture.md P6: no BOS
    assert rel_logits(md.context.logits()[:n], want) > 50 * TOL["f32"]
    from PIL import Image

    s = max(photo.size)
    boxed = Image.new("RGB", (s, s), (122, 116, 104))  # docs/architecture.md P3: llama.cpp's own letterboxing
    boxed.paste(photo, (0, 0))
    assert rel_logits(md.logits(boxed, QUESTION)[:n], want) > 50 * TOL["f32"]


def test_sampling_options(models, photo):
    md = models("2024-04-02", "f32")
    greedy = md.query(photo, QUESTION, max_tokens=12).tokens
    assert md.query(photo, QUESTION, max_tokens=12, temperature=1.0, top_p=1e-6, seed=1).tokens == greedy
    a = md.query(photo, QUESTION, max_tokens=12, temperature=5.0, seed=7).tokens
    assert a == md.query(photo, QUESTION, max_tokens=12, temperature=5.0, seed=7).tokens  # seeded: reproducible
    assert a != greedy  # a hot temperature leaves the greedy path
