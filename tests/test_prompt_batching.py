"""An image prompt goes to llama.cpp as one batch of embeddings, its tokens' rows read from the GGUF by us
(moondream_cpp/token_embeddings.py). Those rows must be exactly what llama.cpp's own lookup (get_rows) gives: the
same tokens, batched the same way, as ids and as our rows, must give bit-identical logits. (The image prompt as a
whole is checked against the PyTorch reference in test_fidelity.py.)"""
import numpy as np
import pytest

from moondream_cpp import Moondream
from moondream_cpp.gguf_header import read_header


def _last_logits(md, decode, data) -> np.ndarray:
    md.cache.reset()
    decode(data, 0, True)
    return md.context.logits().copy()


@pytest.mark.parametrize("text_type", ["f32", "f16", "q8_0", "q5_k_m", "q4_k_m"])
def test_our_rows_are_llamas_lookup(converted, text_type):
    text, mmproj = converted("2024-04-02", text_type, "q8_0")
    embd_type = next(t.ggml_type for t in read_header(text).tensors if t.name == "token_embd.weight")
    with Moondream.load(text, mmproj, n_ctx=256) as md:
        toks = [md.bos] + md.tokenize("\n\nQuestion: What is in the image, and what colour is it?\n\nAnswer:")
        by_id = _last_logits(md, md.context.decode_tokens, toks)
        by_row = _last_logits(md, md.context.decode_rows, md.token_embeddings.rows(toks))
        other = _last_logits(md, md.context.decode_tokens, toks[:-1] + [toks[-1] + 1])
    print(f"{text_type}: token_embd is {embd_type}")
    assert not np.array_equal(by_id, other)  # the logits do depend on the rows: the check can fail
    np.testing.assert_array_equal(by_row, by_id)


def test_rows_repeat_and_order(converted):
    from moondream_cpp.token_embeddings import TokenEmbeddings

    text, _ = converted("2024-04-02", "q4_k_m", "q8_0")
    entry = next(t for t in read_header(text).tensors if t.name == "token_embd.weight")
    emb = TokenEmbeddings(text, entry)
    ids = [0, 5, 5, entry.ne[1] - 1, 17]
    rows = emb.rows(ids)
    assert rows.shape == (5, entry.ne[0]) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[1], rows[2])
    np.testing.assert_array_equal(rows[[3, 0]], TokenEmbeddings(text, entry).rows([ids[3], 0]))
    assert emb.rows([]).shape == (0, entry.ne[0])
