"""Converter behaviour: what it refuses, how it writes, what it records, and the published GGUF layout."""
import json
import shutil

import numpy as np
import pytest
from gguf import GGUFValueType as T
from safetensors.numpy import load_file, save_file

from moondream_cpp import Moondream, gguf_check, spec
from moondream_cpp.convert import convert, mmproj_keys, mmproj_tensors, text_keys, text_tensors
from moondream_cpp.convert.checkpoint import load_checkpoint
from moondream_cpp.convert.gguf_out import write_gguf
from moondream_cpp.errors import CheckpointError


def copy_ck(src, dst, edit_tensors=None, edit_config=None):
    shutil.copytree(src, dst)
    if edit_tensors:
        w = load_file(str(dst / "model.safetensors"))
        edit_tensors(w)
        save_file(w, str(dst / "model.safetensors"))
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_records_revision_metadata(converted):
    for layout, markers, prefix, stop, gelu in [("moondream1", True, "Answer: ", "end_marker", "erf"),
                                                 ("2024-04-02", False, "Answer:", "eos", "tanh")]:
        text, mmproj = converted(layout, "f32", "f32")
        k = gguf_check.check_text(text).file.keys
        assert k[spec.MD_REVISION] == layout and k[spec.MD_IMAGE_MARKERS] == markers
        assert k[spec.MD_ANSWER_PREFIX] == prefix and k[spec.MD_STOP_RULE] == stop and k[spec.MD_VISION_GELU] == gelu
        assert k["tokenizer.ggml.pre"] == "phi-2" and k["tokenizer.ggml.add_bos_token"] is True
        assert k["tokenizer.ggml.bos_token_id"] == k["tokenizer.ggml.eos_token_id"] == 50256
        assert len(k["tokenizer.ggml.tokens"]) == 50304  # padded to the embedding rows
        mm = gguf_check.check_mmproj(mmproj)
        assert mm.file.keys["clip.vision.block_count"] == 4 and mm.n_blocks_run == 3  # 3 real blocks + duplicate
        assert mm.file.keys["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(
            spec.REVISIONS[layout].vision_eps)


def test_refuses_layouts_llama_cpp_cannot_run(checkpoint, tmp_path):
    src = checkpoint("2024-04-02")
    p = spec.PROJECTION_PREFIX

    def jan(w):
        w["vision_encoder.projection.mlp1.fc1.weight"] = w.pop(p + "fc1.weight")

    with pytest.raises(CheckpointError, match="January-2024"):
        load_checkpoint(copy_ck(src, tmp_path / "jan", jan))

    def multicrop(w):
        w[p + "fc1.weight"] = np.zeros((1024, 256), np.float16)

    with pytest.raises(CheckpointError, match="multi-crop"):
        load_checkpoint(copy_ck(src, tmp_path / "mc", multicrop))

    def extra(w):
        w["vision_encoder.encoder.model.visual.attn_pool.latent"] = np.zeros((1, 4), np.float16)

    with pytest.raises(CheckpointError, match="does not know.*attn_pool"):
        load_checkpoint(copy_ck(src, tmp_path / "extra", extra))

    def missing(w):
        del w["text_model.transformer.h.1.mlp.fc2.bias"]

    with pytest.raises(CheckpointError, match="missing 1 tensor"):
        load_checkpoint(copy_ck(src, tmp_path / "missing", missing))

    with pytest.raises(CheckpointError, match="cannot tell which moondream revision.*--revision"):
        load_checkpoint(copy_ck(src, tmp_path / "norev", edit_config=lambda c: c.pop("moondream_revision")))
    assert load_checkpoint(tmp_path / "norev", revision="2024-03-13").revision.name == "2024-03-13"
    with pytest.raises(CheckpointError, match="unknown text type"):
        convert(src, tmp_path / "o", text_type="q3_k")


def test_interrupted_conversion_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import moondream_cpp.convert as conv

    calls = {"n": 0}

    def boom(name):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        conv.convert(checkpoint("2024-04-02"), tmp_path / "out", "q8_0", "f16", on_tensor=boom)
    assert list((tmp_path / "out").iterdir()) == []


def test_reads_bf16_checkpoints(checkpoint, tmp_path):
    src = checkpoint("2024-04-02")

    def to_bf16(w):
        name = "text_model.lm_head.linear.bias"
        w[name] = (w[name].astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)

    dst = copy_ck(src, tmp_path / "bf16", to_bf16)
    raw = (tmp_path / "bf16" / "model.safetensors").read_bytes()
    hdr = raw[8: 8 + int.from_bytes(raw[:8], "little")].replace(b'"U16"', b'"BF16"')
    (dst / "model.safetensors").write_bytes(raw[:8] + hdr + raw[8 + len(hdr):])
    got = load_checkpoint(dst).tensors.get("text_model.lm_head.linear.bias")
    want = load_checkpoint(src).tensors.get("text_model.lm_head.linear.bias")
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_published_vikhyatk_layout_answers_like_the_reference(checkpoint, reference, photo, tmp_path):
    """The 2024 vikhyatk/moondream2 files: no pre-tokenizer, add_bos false, no moondream keys, f16 patch kernel."""
    ck = load_checkpoint(checkpoint("2024-04-02"))
    ours = {k for k in spec.MOONDREAM_KEYS} | {"tokenizer.ggml.pre", "tokenizer.ggml.add_eos_token",
                                               "phi2.rope.freq_base"}
    keys = []
    for k in text_keys(ck, "f16"):
        if k[0] in ours:
            continue
        if k[0] == "tokenizer.ggml.add_bos_token":
            k = (k[0], False, T.BOOL, None)
        if k[0] == "tokenizer.ggml.token_type":  # pads written as USER_DEFINED in the published file
            k = (k[0], [4 if t == 5 else t for t in k[1]], k[2], k[3])
        keys.append(k)
    write_gguf(tmp_path / "moondream2-text-model-f16.gguf", "phi2", keys, text_tensors(ck, "f16"))
    mm_tensors = mmproj_tensors(ck, "f16")
    for t in mm_tensors:
        if t.name == "v.patch_embd.weight":
            t.dtype = np.float16
    mm_keys = [(k[0], 1e-6, k[2], k[3]) if k[0].endswith("layer_norm_epsilon") else k for k in mmproj_keys(ck, "f16")]
    write_gguf(tmp_path / "moondream2-mmproj-f16.gguf", "clip", mm_keys, mm_tensors)

    with Moondream.load(tmp_path, n_ctx=256) as md:
        assert md.revision.name == spec.DEFAULT_REVISION and not md.text_info.has_our_metadata
        assert md.prompt_items(md.encode_image(photo), "x")[0] == 50256  # BOS inserted all the same
        ids, _ = reference("2024-04-02").generate(photo, "What is in the image?", max_tokens=16)
        assert md.query(photo, "What is in the image?", max_tokens=16).tokens == ids


def test_big_tensors_written_slice_by_slice_hold_the_same_values(checkpoint, tmp_path, monkeypatch):
    """The sliced writer (used for tensors over CHUNK_BYTES, e.g. the full-size embedding) writes exactly what a
    whole-tensor cast would: checked against safetensors' own reader, through gguf-py's reader."""
    import gguf

    from moondream_cpp.convert import gguf_out

    monkeypatch.setattr(gguf_out, "CHUNK_BYTES", 4096)  # every 2-D tensor here is sliced, most into many slices
    ck = load_checkpoint(checkpoint("2024-04-02"))
    out = tmp_path / "sliced.gguf"
    write_gguf(out, "phi2", text_keys(ck, "f16"), text_tensors(ck, "f16"))
    source = load_file(str(ck.path / "model.safetensors"))
    names = dict(spec.TEXT_TENSORS) | spec.expand(spec.TEXT_BLOCK_TENSORS, ck.text.n_layer)
    got = {t.name: t for t in gguf.GGUFReader(out).tensors}
    sliced = 0
    for hf, gg in names.items():
        want = source[hf].astype(np.float32)
        want = want.astype(np.float16) if want.ndim > 1 else want
        data = np.asarray(got[gg].data).reshape(want.shape)
        assert data.dtype == want.dtype and np.array_equal(data, want), gg
        sliced += want.ndim > 1 and want.size * 4 > 4096
    assert sliced >= 4


def test_vision_mlp_padded_with_zeros_to_a_32_multiple(checkpoint, converted):
    """SigLIP's MLP width (4304; the test checkpoint's 464) is no multiple of 32: the mmproj carries it padded with
    zeros (fc1 rows and bias, fc2 columns), the checkpoint's own values unchanged, so q8_0 can quantize fc2."""
    from gguf import GGUFReader

    ck = load_checkpoint(checkpoint("2024-04-02"))
    n_ff = ck.vision.n_ff
    assert n_ff % 32 == 16  # the case the padding is for
    width = -(-n_ff // 32) * 32
    _, mmproj = converted("2024-04-02", "f32", "f32")
    r = GGUFReader(mmproj)
    assert r.fields["clip.vision.feed_forward_length"].contents() == width
    t = {x.name: x for x in r.tensors}
    V = spec.VISION_PREFIX + "blocks.1.mlp."
    fc1 = np.asarray(t["v.blk.1.ffn_down.weight"].data).reshape(width, -1)
    fc1_b = np.asarray(t["v.blk.1.ffn_down.bias"].data)
    fc2 = np.asarray(t["v.blk.1.ffn_up.weight"].data).reshape(-1, width)
    np.testing.assert_array_equal(fc1[:n_ff], ck.tensors.get(V + "fc1.weight"))
    np.testing.assert_array_equal(fc1_b[:n_ff], ck.tensors.get(V + "fc1.bias"))
    np.testing.assert_array_equal(fc2[:, :n_ff], ck.tensors.get(V + "fc2.weight"))
    assert not fc1[n_ff:].any() and not fc1_b[n_ff:].any() and not fc2[:, n_ff:].any()
    # the point of it: every vision matrix of a q8_0 mmproj is q8_0 (fc2 used to stay f16)
    _, q8 = converted("2024-04-02", "f16", "q8_0")
    types = {x.name: x.tensor_type.name for x in GGUFReader(q8).tensors if x.name.startswith("v.blk.")}
    assert {ty for n, ty in types.items() if n.endswith(".weight") and ".ln" not in n} == {"Q8_0"}


# ------------------------------------------------------------------ config.json and weights llama.cpp cannot run
@pytest.mark.parametrize("edit,message", [
    (lambda c: c["phi_config"].update(partial_rotary_factor=1.5), "96 rotary dimensions.*head size .64"),
    (lambda c: c["phi_config"].update(rotary_dim=15), "15 rotary dimensions"),
    (lambda c: c["phi_config"].update(num_attention_heads=0), "head count is 0"),
    (lambda c: c["phi_config"].update(num_attention_heads=3), "width 256 is not a multiple of the 3 heads"),
    (lambda c: c["phi_config"].update(num_attention_heads="four"), "num_attention_heads is 'four', not a whole"),
    (lambda c: c["phi_config"].update(max_position_embeddings=-5), "context length is -5"),
    (lambda c: c["phi_config"].update(max_position_embeddings=40), "40 positions cannot hold the 64 image"),
    (lambda c: c["phi_config"].update(layer_norm_eps=-1e-5), "epsilon -1e-05"),
    (lambda c: c["vision_config"].update(num_heads=0), "vision head count is 0"),
    (lambda c: c["vision_config"].update(num_heads=5), "vision width 128 is not a multiple of the 5 heads"),
    (lambda c: c.update(moondream_name="../../evil"), "moondream_name '../../evil' is not a plain name"),
    (lambda c: c.update(moondream_revision=["2024-04-02"]), "unknown revision"),
])
def test_config_values_llama_cpp_cannot_run_are_refused(checkpoint, tmp_path, edit, message):
    """The converter used to write these (or fail with a traceback); the files aborted llama.cpp at load or at the
    first decode (tests/test_hostile_models.py shows the same values in a GGUF do)."""
    ck = copy_ck(checkpoint("2024-04-02"), tmp_path / "ck", edit_config=edit)
    with pytest.raises(CheckpointError, match=message):
        convert(ck, tmp_path / "out", "f32", "f32")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_token_listed_twice_is_refused(checkpoint, tmp_path):
    """llama.cpp aborts on a vocabulary with one text under two ids; the converter refuses to write one."""
    ck = copy_ck(checkpoint("2024-04-02"), tmp_path / "ck")
    tj = json.loads((ck / "tokenizer.json").read_text())
    tj["added_tokens"].append(dict(id=50300, content="the", special=False))
    (ck / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(CheckpointError, match="the token 'the' has two ids"):
        convert(ck, tmp_path / "out", "f32", "f32")


def test_shards_named_outside_the_checkpoint_are_refused(checkpoint, tmp_path):
    ck = copy_ck(checkpoint("2024-04-02"), tmp_path / "ck")
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../model.safetensors"}}))
    with pytest.raises(CheckpointError, match="names shard '../model.safetensors', not a file in"):
        load_checkpoint(ck)
    (ck / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a valid index"):
        load_checkpoint(ck)


def _safetensors_with(path, edit_header, tail=b""):
    """A two-tensor safetensors file whose JSON header `edit_header` changed (lengths fixed up, data kept)."""
    save_file({"a": np.arange(8, dtype=np.float16).reshape(2, 4), "b": np.arange(3, dtype=np.float32)}, str(path))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8: 8 + n])
    edit_header(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:] + tail)
    return path


@pytest.mark.parametrize("edit,tail,message", [
    (lambda h: h["b"].update(shape=[7]), b"", "b of shape .7. .F32. needs 28 bytes but its header gives it 12"),
    (lambda h: h["a"].update(shape=[4, 4]), b"", "a of shape .4, 4. .F16. needs 32 bytes but its header gives it 16"),
    (lambda h: h["a"].update(data_offsets=[0, 16]), b"", "starts at byte .*overlap or leave a gap"),
    (lambda h: h["a"].update(data_offsets=[16, 32]), b"\0" * 4, "overlap or leave a gap"),
    (lambda h: None, b"\0" * 8, "trailing bytes"),
    (lambda h: h["a"].update(data_offsets=[-16, 0]), b"", "malformed entry"),
    (lambda h: h["a"].update(shape=[2.0, 4]), b"", "malformed entry"),
    (lambda h: h.update(a=[1, 2]), b"", "malformed entry"),
])
def test_safetensors_headers_are_checked_like_the_safetensors_library(tmp_path, edit, tail, message):
    """Each header lies (an oversize shape used to read the next tensor's bytes as its own): ours refuses it, as the
    safetensors library does; an honest file reads the same values through both."""
    from safetensors import safe_open

    from moondream_cpp.convert.checkpoint import SafetensorsFiles

    good = _safetensors_with(tmp_path / "good.safetensors", lambda h: None)
    with safe_open(str(good), "numpy") as f:
        np.testing.assert_array_equal(SafetensorsFiles([good]).get("a"), f.get_tensor("a").astype(np.float32))
    bad = _safetensors_with(tmp_path / "bad.safetensors", edit, tail)
    with pytest.raises(CheckpointError, match=message):
        SafetensorsFiles([bad])
    with pytest.raises(Exception):
        with safe_open(str(bad), "numpy") as f:
            [f.get_tensor(k) for k in f.keys()]
