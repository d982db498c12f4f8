"""The 2025 family at f16 and quantized, against the PyTorch reference on a multi-crop image: f16 within the f32
bound, quantized errors reported with loose ceilings (as tests/test_quantized.py does for 2024)."""
from __future__ import annotations

import pytest
from conftest import rel, rel_logits, scene

from moondream_cpp import Moondream, spec2025

QUESTION = "What is in the picture?"
REVISION = "2025-04-14"
# (text, mmproj) -> ceilings on the embeddings' and the logits' relative error vs the fp32 reference
PAIRS = {("f16", "f16"): (1e-3, 1e-3), ("q8_0", "q8_0"): (0.05, 0.05), ("q4_k_m", "q8_0"): (0.05, 0.2)}


@pytest.fixture(scope="module")
def want(reference2025):
    ref = reference2025(REVISION)
    img = scene(1024, 768)
    rows = ref.image_embeddings(img)
    return img, rows.numpy(), ref


@pytest.mark.parametrize("pair", list(PAIRS), ids=lambda p: f"{p[0]}+{p[1]}")
def test_quantized_2025_pair(pair2025, want, pair):
    img, rows, ref = want
    with Moondream.load(*pair2025(REVISION, *pair), n_threads=2) as md:
        emb_err = rel(md.encode_image(img).embeddings, rows)
        rev = spec2025.REVISIONS_2025[REVISION]
        ids = [*rev.query.before, *md.tokenize(" " + QUESTION), *rev.query.after]
        logits = ref.logits(rows_tensor(rows), ids).numpy()
        err = rel_logits(md.logits(img, QUESTION)[: logits.shape[0]], logits)
        print(f"2025 {pair[0]} text + {pair[1]} mmproj: embeddings {emb_err:.2e}, logits {err:.2e}")
        assert emb_err < PAIRS[pair][0] and err < PAIRS[pair][1]
        assert md.query(img, QUESTION, max_tokens=6, temperature=0).text


def rows_tensor(rows):
    import torch

    return torch.from_numpy(rows)
