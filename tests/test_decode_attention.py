"""One-token decode steps deep in the context, against the PyTorch reference.

This is the path our llama.cpp patch changes (patches/0001: flash-attention decode reads the KV cache row by row
and splits the live rows across threads), so it runs past the cache view's 256-row padding and the old split
threshold of 512 rows, with flash attention on and off and with a thread count that does not divide the rows."""
import numpy as np
import pytest
import torch

from conftest import rel_logits
from moondream_cpp import Moondream

QUESTION = "What is in the image?"
# about 750 prompt positions in all: long enough for several threads' KV chunks of several 32-row tiles
HISTORY = [(f"What is item {i}?", "It is a red square on the left of the picture, beside a blue one, "
            "under a grey sky.") for i in range(25)]
TOL = {"f32": 1e-3, "f16": 1e-2}
STEPS = 12


@pytest.mark.parametrize("kind,flash_attn,threads", [("f32", True, None), ("f16", True, 3), ("f32", False, None),
                                                     ("f16", True, 1)])
def test_decode_steps_deep_in_the_context_match_reference(converted, reference, photo, kind, flash_attn, threads):
    ref = reference("2024-04-02")
    with Moondream.load(*converted("2024-04-02", kind, kind), n_ctx=2048, flash_attn=flash_attn,
                        n_threads=threads) as md:
        with torch.no_grad():
            want, cache = ref.forward(ref.prompt_embeds(ref.encode_image(photo), QUESTION, HISTORY))
        md.logits(photo, QUESTION, HISTORY)  # the prompt, as one batch
        depth = len(md.cache.kv)
        assert depth > 700
        n = ref.n_real_tokens
        for step in range(STEPS):
            tok = int(torch.argmax(ref._masked(want[-1])))
            with torch.no_grad():
                want, cache = ref.forward(ref.embed([tok]), cache)
            md.context.decode_tokens([tok], depth + step, True)  # one token: the decode kernel
            md.cache.extend([tok])
            got, exp = md.context.logits()[:n], want[-1].numpy()[:n]
            err = rel_logits(got, exp)
            assert err < TOL[kind], f"step {step} at depth {depth + step}: logits relative error {err:.2e}"
            assert int(np.argmax(got)) == int(np.argmax(exp))
