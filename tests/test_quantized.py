"""Quantized pairs load and answer through the installed llama.cpp build (no AMX miscompile crash here)."""
import pytest

from conftest import rel_logits
from moondream_cpp import Moondream

QUESTION = "What is in the image?"
# centred relative logit error against the f32 pair: loose ceilings, the measured values are printed
CEILING = {"q8_0": 0.03, "q5_k_m": 0.08, "q4_k_m": 0.15}


@pytest.fixture(scope="module")
def f32_logits(converted, photo):
    with Moondream.load(*converted("2024-04-02", "f32", "f32"), n_ctx=256) as md:
        return md.logits(photo, QUESTION)[: md.n_real_tokens]


@pytest.mark.parametrize("text_type", ["q8_0", "q5_k_m", "q4_k_m"])
def test_quantized_pair_answers(converted, photo, f32_logits, text_type):
    text, mmproj = converted("2024-04-02", text_type, "q8_0")
    with Moondream.load(text, mmproj, n_ctx=256) as md:
        assert md.text_info.quant != "F32" and md.mmproj_info.file.tensors["mm.0.weight"][1] == "Q8_0"
        err = rel_logits(md.logits(photo, QUESTION)[: md.n_real_tokens], f32_logits)
        print(f"{text_type} text + q8_0 mmproj: logits relative error vs f32 {err:.2e}")
        assert err < CEILING[text_type]
        answer = md.query(photo, QUESTION, max_tokens=16)
        assert len(answer.tokens) == 16 and answer.text


def test_quantized_mmproj_types(converted, photo):
    for mm_type in ["q5_0", "q4_0"]:
        with Moondream.load(*converted("2024-04-02", "f16", mm_type), n_ctx=256) as md:
            assert md.query(photo, QUESTION, max_tokens=4).text
