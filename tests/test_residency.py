"""With the vision tower on demand, the text model's mapped weights are handed back while it runs (so the two are
never resident together) and taken back after, with answers unchanged. Measured in /proc/self/smaps."""
import os
import sys

import pytest

from moondream_cpp import Moondream, residency

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")

QUESTION = "What is in the image?"


def resident_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (the kernel's count, not ours)."""
    want, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) >= 6 and head[5] == want
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def embedding_bytes(path) -> int:
    import gguf

    return int(next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight").n_bytes)


def test_text_pages_leave_while_the_vision_tower_runs(converted, photo, reference):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    size_kb = text.stat().st_size // 1024
    with Moondream.load(text, mmproj, n_ctx=256, mmproj_on_demand=True) as md:
        md.logits(photo, "x")  # every weight used once
        assert resident_kb(text) > 0.8 * (size_kb - embedding_bytes(text) // 1024)
        during = []
        open_vision = md.vision.open

        def spy():
            during.append(resident_kb(text))
            open_vision()

        md.vision.open = spy
        md.clear_image_cache()
        got = md.query(photo, QUESTION, max_tokens=8)
        assert during and during[0] < 0.05 * size_kb, (during, size_kb)
        assert not md.vision.is_open
        # taken back at once (not fault by fault in the prefill), all but the token embedding, of which the prompt
        # reads a few rows
        embd_kb = embedding_bytes(text) // 1024
        assert 0.8 * (size_kb - embd_kb) < resident_kb(text) < size_kb - 0.5 * embd_kb, (size_kb, embd_kb)
    ids, _ = reference("2024-04-02").generate(photo, QUESTION, max_tokens=8)
    assert got.tokens == ids


def test_release_is_a_no_op_for_a_file_not_mapped(tmp_path):
    f = tmp_path / "nothing.gguf"
    f.write_bytes(b"x")
    assert residency.mapped_ranges(f) == [] and residency.release(f) is False


def test_a_batch_keeps_the_vision_tower_loaded_unless_low_ram(converted, photo):
    from PIL import Image
    import numpy as np

    text, mmproj = converted("2024-04-02", "f32", "f32")
    images = [Image.fromarray(np.roll(np.asarray(photo), 7 * k, axis=1)) for k in range(3)]  # three new images
    for low_ram, opens_expected in [(False, 0), (True, 2)]:  # opened at load, used by the first image
        with Moondream.load(text, mmproj, n_ctx=256, low_ram=low_ram) as md:
            opened = []
            open_vision = md.vision.open
            md.vision.open = lambda: (opened.append(1), open_vision())
            with md.batch_mode():
                for im in images:
                    md.query(im, QUESTION, max_tokens=2)
            assert len(opened) == opens_expected
            assert not md.vision.is_open  # on demand again after the batch
