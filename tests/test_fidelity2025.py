"""The 2025 family through our converter and llama.cpp against the PyTorch reference (moondream_cpp/reference/md2025):
per-crop vision features, the projected image embeddings, next-token logits and greedy answers, on a one-tile image,
a 1024x768 image (3x4 tiles) and a tall one, for a GPT-2-tokenizer revision and the 06-21 (starmie) one."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import rel, rel_logits, scene

from moondream_cpp import Moondream, spec2025

REVISIONS = ["2025-04-14", "2025-06-21"]
IMAGES = {"small": (300, 200), "1024x768": (1024, 768), "tall": (400, 1300)}  # W x H
TILINGS = {"small": (1, 1), "1024x768": (3, 4), "tall": (6, 2)}  # worked by hand from upstream's tiling rule
FEATURE_TOL, EMBED_TOL, LOGIT_TOL = 1e-3, 1e-3, 1e-3


@pytest.fixture(scope="module")
def models(pair2025):
    loaded = {}

    def get(revision, text_type="f32", mmproj_type="f32"):
        key = (revision, text_type, mmproj_type)
        if key not in loaded:
            loaded[key] = Moondream.load(*pair2025(revision, text_type, mmproj_type), n_threads=2)
        return loaded[key]

    yield get
    for md in loaded.values():
        md.close()


def prompt_ids(md, question=None, caption=None) -> list[int]:
    """The prompt after the image prefix, built from spec2025's template and the model's tokenizer."""
    rev = spec2025.REVISIONS_2025[md.revision.name]
    if caption is not None:
        return list(rev.captions[caption])
    return list(rev.query.before) + md.tokenize(spec2025.template_text(rev.query, question)) + list(rev.query.after)


@pytest.mark.parametrize("revision", REVISIONS)
@pytest.mark.parametrize("image", list(IMAGES))
def test_crops_features_and_embeddings_match_the_reference(models, reference2025, revision, image):
    md, ref = models(revision), reference2025(revision)
    img = scene(*IMAGES[image])
    crops, _ = md.multicrop.crops_of(img)
    g, local, tiling = ref.crops(img)
    assert tiling == crops.tiling == TILINGS[image]
    assert np.array_equal(g, crops.global_crop) and np.array_equal(local, crops.local)  # two implementations agree
    want = ref.crop_features(img).numpy()
    width = md.multicrop.feature_length
    views = [crops.global_crop, *crops.local]
    with md.vision.session() as encode_crop:
        for k in sorted({0, 1, len(views) - 1}):  # the global view, the first and the last local crop
            rows = encode_crop(views[k])
            assert np.all(rows[:, width:] == 0)  # the pass-through pads with exact zeros
            err = rel(rows[:, :width], want[k])
            assert err < FEATURE_TOL, (k, err)
    emb = md.encode_image(img).embeddings
    err = rel(emb, ref.image_embeddings(img).numpy())
    print(f"{revision} {image}: embeddings rel err {err:.2e}")
    assert err < EMBED_TOL


@pytest.mark.parametrize("kind", ["f32", "f16"])
@pytest.mark.parametrize("revision", REVISIONS)
def test_logits_and_greedy_answers_match_the_reference(models, reference2025, revision, kind):
    md, ref = models(revision, kind, kind), reference2025(revision)
    rev = spec2025.REVISIONS_2025[revision]
    for image in IMAGES:
        img = scene(*IMAGES[image])
        rows = ref.image_embeddings(img)  # the reference's own image rows, computed once per image
        err = rel(md.encode_image(img).embeddings, rows.numpy())
        print(f"{revision} {kind} {image}: embeddings rel err {err:.2e}")
        assert err < EMBED_TOL
        asks = [dict(question="What is in the picture?")] + [dict(caption=c) for c in rev.captions]
        for ask in asks:
            ids = prompt_ids(md, **ask)
            got = md.logits(img, ask.get("question"), caption=ask.get("caption"))
            want = ref.logits(rows, ids).numpy()
            n = want.shape[0]
            err = rel_logits(got[:n], want)
            print(f"{revision} {kind} {image} {ask}: logits rel err {err:.2e}")
            assert err < LOGIT_TOL, (image, ask, err)
            a = (md.caption(img, ask["caption"], temperature=0, max_tokens=8) if "caption" in ask
                 else md.query(img, ask["question"], temperature=0, max_tokens=8))
            assert a.tokens == ref.generate(rows, ids, 8, masked=rev.masked)[: len(a.tokens)], (image, ask)
            assert len(a.tokens) == 8 or a.finish_reason == "stop"


def test_prefix_attention_matters(models, reference2025):
    """A causal-only prefix moves the logits far beyond the tolerance, and llama.cpp matches the prefix mask."""
    md, ref = models("2025-04-14"), reference2025("2025-04-14")
    img = scene(*IMAGES["small"])
    rows = ref.image_embeddings(img)
    ids = prompt_ids(md, question="What is in the picture?")
    prefix, causal = ref.logits(rows, ids).numpy(), ref.logits(rows, ids, causal_only=True).numpy()
    got = md.logits(img, "What is in the picture?")[: prefix.shape[0]]
    moved, err = rel_logits(causal, prefix), rel_logits(got, prefix)
    print(f"causal-only moves the logits {moved:.2e}; llama.cpp is {err:.2e} from the prefix-attention reference")
    assert moved > 10 * LOGIT_TOL and moved > 30 * err
    assert err < LOGIT_TOL
