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


def test_text_pages_leave_while_the_vision_tower_runs(converted, photo, reference):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    size_kb = text.stat().st_size // 1024
    with Moondream.load(text, mmproj, n_ctx=256, mmproj_on_demand=True) as md:
        md.logits(photo, "x")  # every weight used once
        assert resident_kb(text) > 0.8 * size_kb
        during = []
        open_vision = md._open_vision

        def spy():
            during.append(resident_kb(text))
            open_vision()

        md._open_vision = spy
        md.clear_image_cache()
        got = md.query(photo, QUESTION, max_tokens=8)
        assert during and during[0] < 0.05 * size_kb, (during, size_kb)
        assert md._mtmd is None
        assert resident_kb(text) > 0.8 * size_kb  # taken back at once, not fault by fault in the prefill
    ids, _ = reference("2024-04-02").generate(photo, QUESTION, max_tokens=8)
    assert got.tokens == ids


def test_release_is_a_no_op_for_a_file_not_mapped(tmp_path):
    f = tmp_path / "nothing.gguf"
    f.write_bytes(b"x")
    assert residency.mapped_ranges(f) == [] and residency.release(f) is False
