"""An mmproj GGUF written by someone else with an unpadded vision MLP (as the published moondream2 one, 4304 wide) is
padded when a pull quantizes it: the same image embeddings as the PyTorch reference, and every matrix quantized."""
import json

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import rel
from fakehub import FakeHub
from moondream_cpp import Moondream, spec
from moondream_cpp.convert import convert
from moondream_cpp.convert.pad_gguf import FF_KEY, pad_vision_mlp
from test_pull import ROOT, run


@pytest.fixture(scope="module")
def unpadded(checkpoint, tmp_path_factory):
    """The test checkpoint converted the way other converters write it: the vision MLP at its own width."""
    mp = pytest.MonkeyPatch()
    mp.setattr(spec, "VISION_FF_MULTIPLE", 1)
    try:
        out = convert(checkpoint("2024-04-02"), tmp_path_factory.mktemp("unpadded"), "f32", "f32", name="wide")
    finally:
        mp.undo()
    n_ff = GGUFReader(out.mmproj).fields[FF_KEY].contents()
    assert n_ff % 32, "the case the padding is for"
    return out


def test_padding_keeps_every_value_and_adds_only_zeros(unpadded, tmp_path):
    dst = tmp_path / "padded.gguf"
    assert pad_vision_mlp(unpadded.mmproj, dst)
    a, b = GGUFReader(unpadded.mmproj), GGUFReader(dst)
    n_ff = a.fields[FF_KEY].contents()
    width = -(-n_ff // 32) * 32
    assert b.fields[FF_KEY].contents() == width
    keys = {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.") and k != FF_KEY}
    assert keys == {k: f.contents() for k, f in b.fields.items() if not k.startswith("GGUF.") and k != FF_KEY}
    new = {t.name: t for t in b.tensors}
    assert list(new) == [t.name for t in a.tensors]
    grown = 0
    for t in a.tensors:
        old, got = np.asarray(t.data), np.asarray(new[t.name].data)
        if old.shape == got.shape:
            np.testing.assert_array_equal(got, old)
            continue
        grown += 1
        assert ".ffn_" in t.name
        kept = tuple(slice(0, n) for n in old.shape)
        np.testing.assert_array_equal(got[kept], old)
        added = got.copy()
        added[kept] = 0
        assert not added.any()  # nothing but zeros added
        assert sorted(got.shape) == sorted(width if n == n_ff else n for n in old.shape)
    n_blocks = a.fields["clip.vision.block_count"].contents()
    assert grown == 3 * n_blocks  # fc1 weight and bias, fc2 weight, in every block
    assert not pad_vision_mlp(dst, tmp_path / "again.gguf")  # nothing left to pad: nothing written
    assert not (tmp_path / "again.gguf").exists()


def test_padded_tower_encodes_as_the_reference(unpadded, reference, photo, tmp_path):
    dst = tmp_path / "padded.gguf"
    assert pad_vision_mlp(unpadded.mmproj, dst)
    want = reference("2024-04-02").encode_image(photo).numpy()
    with Moondream.load(unpadded.text, dst, n_ctx=512) as md:
        got = md.encode_image(photo).embeddings
    assert rel(got, want) < 1e-3


def test_pull_pads_then_quantizes_a_published_style_mmproj(unpadded, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    text, mmproj = unpadded.text, unpadded.mmproj
    (home / "registry.json").write_text(json.dumps({"wide": {
        "kind": "gguf", "repo": "test/wide", "revision": "v1",
        "files": {"text": {"name": text.name, "size": None, "sha256": None},
                  "mmproj": {"name": mmproj.name, "size": None, "sha256": None}},
        "quants": ["f16", "q8_0"], "default_quant": "f16"}}))
    with FakeHub() as hub:
        hub.add("test/wide", "v1", text.name, text.read_bytes())
        hub.add("test/wide", "v1", mmproj.name, mmproj.read_bytes())
        r = run("pull", "wide", "--quant", "q8_0", home=home, hub_url=hub.url)
        assert r.returncode == 0, r.stderr
        stored = sorted((home / "models" / "wide" / "q8_0").glob("*.gguf"))
        r = run("query", ROOT / "examples" / "shapes.png", "What is this?", "-m", "wide:q8_0", "--max-tokens", "4",
                home=home, hub_url=hub.url)
        assert r.returncode == 0, r.stderr
    (got,) = [p for p in stored if "mmproj" in p.name]
    g = GGUFReader(got)
    assert g.fields[FF_KEY].contents() % 32 == 0
    types = {t.name: t.tensor_type.name for t in g.tensors if t.name.startswith("v.blk.")}
    assert {ty for n, ty in types.items() if n.endswith(".weight") and ".ln" not in n} == {"Q8_0"}
    assert not any(p.name.endswith("-padded.gguf") for p in stored)  # the intermediate file is gone
