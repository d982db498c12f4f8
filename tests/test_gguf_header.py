"""Our GGUF header reader against gguf-py's GGUFReader on our converted files, and its cache by file identity."""
import os
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from moondream_cpp import Moondream, gguf_check, gguf_header
from moondream_cpp.gguf_header import read_header

PAIRS = [("f32", "f32"), ("q4_k_m", "q8_0")]  # float files, and a K-quant text model with a 32-block mmproj


def _theirs(field):
    """A GGUFReader field's value in the form our reader gives it (numeric arrays as lists)."""
    value = field.contents()
    return value.tolist() if isinstance(value, np.ndarray) else value


@pytest.mark.parametrize("text_type,mmproj_type", PAIRS)
def test_header_agrees_with_gguf_py(converted, text_type, mmproj_type):
    for path in converted("2024-04-02", text_type, mmproj_type):
        ours, ref = read_header(path), GGUFReader(path)
        assert ours.version == ref.fields["GGUF.version"].contents()
        fields = {name: f for name, f in ref.fields.items() if not name.startswith("GGUF.")}
        assert list(ours.values) == list(fields)  # every key, in file order
        for name, f in fields.items():
            vtype, sub = ours.types[name]
            assert [vtype] + ([sub] if sub is not None else []) == f.types, name
            value = ours.values[name]
            got = value.tolist() if isinstance(value, np.ndarray) else value
            assert got == _theirs(f) and type(got) is type(_theirs(f)), name
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
        for t, r in zip(ours.tensors, ref.tensors):
            assert t.ne == tuple(int(n) for n in r.shape), t.name  # both in ggml order
            assert t.type == r.tensor_type and t.ggml_type == r.tensor_type.name, t.name
            assert (t.offset, t.nbytes) == (r.data_offset, r.n_bytes), t.name
        floats = {GGMLQuantizationType.F32, GGMLQuantizationType.F16}
        quantized = {t.type for t in ours.tensors} - floats
        assert quantized if text_type != "f32" else not quantized  # the quantized case reads block types
    assert ours.types["clip.vision.image_mean"] == (GGUFValueType.ARRAY, GGUFValueType.FLOAT32)


def test_checked_files_carry_the_header_entries(converted):
    text, mmproj = converted("2024-04-02", "q4_k_m", "q8_0")
    info = gguf_check.check_text(text)
    ref = {t.name: t for t in GGUFReader(text).tensors}
    entry = info.file.entries["token_embd.weight"]
    r = ref["token_embd.weight"]
    assert (entry.offset, entry.nbytes, entry.type) == (r.data_offset, r.n_bytes, r.tensor_type)
    assert set(info.file.entries) == set(ref) == set(info.file.tensors)
    assert set(gguf_check.check_mmproj(mmproj).file.entries) == {t.name for t in GGUFReader(mmproj).tensors}


def test_a_load_parses_each_header_once(converted, monkeypatch, tmp_path):
    for path in converted("2024-04-02", "f32", "f32"):
        os.link(path, tmp_path / path.name)
    gguf_header._cache.clear()
    parsed = []
    real = gguf_header._parse
    monkeypatch.setattr(gguf_header, "_parse", lambda *a, **k: parsed.append(1) or real(*a, **k))
    with Moondream.load(tmp_path, n_ctx=256):  # find_pair, check_pair and the token embedding: one header each
        pass
    assert len(parsed) == 2


def test_a_file_changed_on_disk_is_parsed_again(converted, tmp_path):
    f32_text, _ = converted("2024-04-02", "f32", "f32")
    q_text, _ = converted("2024-04-02", "q4_k_m", "q8_0")
    path = tmp_path / "model.gguf"
    shutil.copy(f32_text, path)
    assert read_header(path).tensors[0].type == GGMLQuantizationType.F32
    shutil.copy(q_text, tmp_path / "new.gguf")
    os.replace(tmp_path / "new.gguf", path)  # another file under the same name
    assert read_header(path).tensors == read_header(q_text).tensors
    before = read_header(path)
    with open(path, "r+b") as fh:  # rewritten in place: same inode and size, a later modification time
        fh.write(open(f32_text, "rb").read(16))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert read_header(path) is not before


def test_the_cache_is_bounded(converted, tmp_path):
    text, _ = converted("2024-04-02", "f32", "f32")
    copies = []
    for i in range(gguf_header.CACHE_SIZE + 3):
        copies.append(tmp_path / f"{i}.gguf")
        os.link(text, copies[-1])  # another path: another entry
        read_header(copies[-1])
    assert len(gguf_header._cache) == gguf_header.CACHE_SIZE


def test_headers_are_read_only(converted):
    header = read_header(converted("2024-04-02", "f32", "f32")[0])
    with pytest.raises(TypeError):
        header.values["general.name"] = "changed"
    with pytest.raises(ValueError):
        header.values["tokenizer.ggml.token_type"][0] = 0
