"""Every bad input gets a clear MoondreamError naming the problem; llama.cpp never sees it; the process lives on."""
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFValueType as T
from PIL import Image

from moondream_cpp import Moondream
from moondream_cpp.convert import mmproj_keys, mmproj_tensors
from moondream_cpp.convert.checkpoint import load_checkpoint
from moondream_cpp.convert.gguf_out import write_gguf
from moondream_cpp.errors import ImageError, ModelFileError, MoondreamError, PromptTooLongError
from conftest import CLI


@pytest.fixture(scope="module")
def pair(converted):
    return converted("2024-04-02", "f32", "f32")


@pytest.fixture(scope="module")
def md(pair):
    m = Moondream.load(*pair, n_ctx=128)
    yield m
    m.close()


def still_works(md):
    assert md.query(np.full((30, 40, 3), 128, np.uint8), "What?", max_tokens=3).tokens


def write_mmproj(path, checkpoint_dir, keys_edit=None, drop=None):
    ck = load_checkpoint(checkpoint_dir)
    keys = [keys_edit(k) if keys_edit else k for k in mmproj_keys(ck, "f32")]
    tensors = [t for t in mmproj_tensors(ck, "f32") if t.name != drop]
    write_gguf(path, "clip", keys, tensors)
    return path


# ------------------------------------------------------------------ model files
def test_truncated_gguf(pair, tmp_path):
    cut = tmp_path / "cut.gguf"
    data = pair[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        Moondream.load(cut, pair[1])
    cut.write_bytes(data[:1000])  # cut inside the header
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        Moondream.load(cut, pair[1])


def test_empty_and_non_gguf_files(pair, tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        Moondream.load(empty, pair[1])
    junk = tmp_path / "junk.gguf"
    junk.write_text("hello, not a model")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        Moondream.load(pair[0], junk)
    with pytest.raises(ModelFileError, match="no such file"):
        Moondream.load(tmp_path / "missing.gguf", pair[1])


def test_swapped_files_and_wrong_arch(pair, tmp_path):
    with pytest.raises(ModelFileError, match="mmproj file .* given as the text model"):
        Moondream.load(pair[1], pair[0])
    other = tmp_path / "llama.gguf"
    raw = bytearray(pair[1].read_bytes())
    i = raw.index(b"clip")
    raw[i: i + 4] = b"bert"
    other.write_bytes(raw)
    with pytest.raises(ModelFileError, match="architecture 'bert'"):
        Moondream.load(pair[0], other)


def test_width_mismatch(pair, checkpoint, workdir):
    from moondream_cpp.convert import convert

    narrow = convert(checkpoint("2024-04-02", t_embd=128), workdir / "narrow", "f32", "f32", name="narrow")
    with pytest.raises(ModelFileError, match="do not belong together.*width 128.*width 256"):
        Moondream.load(pair[0], narrow.mmproj)


def test_wrong_typed_key_is_caught_before_llama_cpp_aborts(pair, checkpoint, tmp_path):
    def int32_size(k):
        return (k[0], k[1], T.INT32, k[3]) if k[0] == "clip.vision.image_size" else k

    bad = write_mmproj(tmp_path / "bad-type.gguf", checkpoint("2024-04-02"), keys_edit=int32_size)
    with pytest.raises(ModelFileError, match="clip.vision.image_size has type INT32.*UINT32"):
        Moondream.load(pair[0], bad)
    # proof that the check matters: llama.cpp itself kills the process on this file
    probe = ("import llama_cpp, sys; from llama_cpp import mtmd_cpp as M; "
             f"m = llama_cpp.llama_model_load_from_file({str(pair[0])!r}.encode(), "
             "llama_cpp.llama_model_default_params()); "
             "p = M.mtmd_context_params_default(); p.use_gpu = False; p.warmup = False; "
             f"M.mtmd_init_from_file({str(bad)!r}.encode(), m, p); print('survived')")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "survived" not in r.stdout


def test_missing_tensor(pair, checkpoint, tmp_path):
    bad = write_mmproj(tmp_path / "no-k.gguf", checkpoint("2024-04-02"), drop="v.blk.0.attn_k.weight")
    with pytest.raises(ModelFileError, match="missing tensor.*v.blk.0.attn_k.weight"):
        Moondream.load(pair[0], bad)


# ------------------------------------------------------------------ images
def test_non_image_empty_and_missing(md, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(ImageError, match="not a readable image"):
        md.encode_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        md.encode_image(empty)
    with pytest.raises(ImageError, match="no such image"):
        md.encode_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        md.encode_image(tmp_path)
    png = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(ImageError):
        md.encode_image(png)
    for wrong in (None, 3.5, ["a.png"]):  # not an image of any kind: said so, no TypeError from deep inside
        with pytest.raises(ImageError, match=f"not {type(wrong).__name__}"):
            md.encode_image(wrong)
    still_works(md)


def test_question_and_history_of_the_wrong_shape(md):
    img = np.full((30, 40, 3), 128, np.uint8)
    for question, history, words in [(5, (), "question must be text"), ("What?", "ab", "list of"),
                                     ("What?", [("a", "b", "c")], "turn 0"), ("What?", [("a", "b"), "ab"], "turn 1"),
                                     ("What?", [("a", None)], "turn 0")]:
        with pytest.raises(MoondreamError, match=words):
            md.query(img, question, history=history, max_tokens=2)
    assert md.query(img, "What?", history=[("a", "b")], max_tokens=2).tokens
    still_works(md)


def test_decompression_bomb(md, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 megapixels in a few kilobytes
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageError, match="megapixel limit .a decompression bomb"):
        md.encode_image(bomb)
    still_works(md)


def _same(md, a, b):
    np.testing.assert_array_equal(md.encode_image(a).embeddings, md.encode_image(b).embeddings)


def test_grayscale_rgba_cmyk_16bit_and_gif(md, tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    # greyscale -> the same grey in all three channels
    _same(md, Image.fromarray(grey, "L"), Image.fromarray(np.repeat(grey[..., None], 3, -1)))
    # RGBA -> alpha dropped, as moondream's convert("RGB")
    rgba = np.concatenate([rgb, rng.integers(0, 256, (48, 64, 1), dtype=np.uint8)], -1)
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    _same(md, p, Image.fromarray(rgb))
    # CMYK JPEG -> PIL's CMYK->RGB conversion
    p = tmp_path / "c.jpg"
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(p, quality=95)
    _same(md, p, Image.open(p).convert("RGB"))
    # 16-bit greyscale PNG: the full range scaled to 8 bits (a plain convert would clip it all to white)
    p = tmp_path / "g16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(p)
    assert Image.open(p).mode.startswith("I")
    _same(md, p, Image.fromarray(grey, "L"))
    # animated GIF -> its first frame
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    _same(md, p, frames[0])
    still_works(md)


# ------------------------------------------------------------------ prompts
def test_question_longer_than_context(md):
    with pytest.raises(PromptTooLongError, match="positions but the context holds 128"):
        md.query(np.zeros((20, 20, 3), np.uint8), "why " * 300)
    with pytest.raises(MoondreamError, match="empty"):
        md.query(np.zeros((20, 20, 3), np.uint8), "   ")
    still_works(md)


def test_cli_reports_errors_without_traceback(pair, tmp_path):
    notimg = tmp_path / "x.png"
    notimg.write_text("nope")
    img = tmp_path / "ok.png"
    Image.new("RGB", (30, 20), (9, 9, 9)).save(img)
    cases = [
        ([str(notimg), "-p", "hi", "--text", str(pair[0]), "--mmproj", str(pair[1])], 4, "not a readable image"),
        ([str(img), "-p", "hi", "--text", str(pair[1]), "--mmproj", str(pair[0])], 3, "given as the text model"),
        ([str(img), "-p", "hi", "--text", str(pair[0])], 1, "pass both --text and --mmproj"),
    ]
    for args, code, msg in cases:
        r = subprocess.run([CLI, "chat", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == code, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
