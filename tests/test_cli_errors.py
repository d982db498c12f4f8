"""Every command's user errors: one line naming the problem and what to do, its documented exit code, no traceback."""
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLI
from moondream_cpp.gguf_models import demo_pair

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "examples" / "shapes.png"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A model directory whose text GGUF lost its second half, and a file that is no image."""
    d = tmp_path_factory.mktemp("broken")
    text, mmproj = demo_pair()
    (d / text.name).write_bytes(text.read_bytes()[: text.stat().st_size // 2])
    shutil.copy(mmproj, d / mmproj.name)
    (d / "notes.png").write_text("not an image")
    (d / "q.jsonl").write_text('{"image": "x.png", "question": "?", "answers": ["a"]}\n')
    (d / "binary.jsonl").write_bytes(b"GGUF\x03\x00\xed\xa0\x80 not text")
    return d


CASES = [
    # (command line, exit code, words the message must hold)
    (["chat", "missing.png", "-p", "hi"], 4, "missing.png: no such image file"),
    (["query", "missing.png", "What?"], 4, "no such image file"),
    (["caption", "missing.png"], 4, "no such image file"),
    (["chat", "{d}/notes.png", "-p", "hi"], 4, "is not a readable image"),
    (["chat", str(IMG), "-p", "hi", "-m", "no-such-model"], 8, "unknown model name 'no-such-model'"),
    (["query", str(IMG), "What?", "-m", "moondream2"], 8, "moondream-cpp pull moondream2"),
    (["query", str(IMG), "What?", "-m", "moon dream"], 8, "is not a model name"),
    (["query", str(IMG), "What?", "-m", "moondream2:q3_k"], 1, "moondream2 comes in f16, q8_0, q5_k_m, q4_k_m"),
    (["query", str(IMG), "What?", "-m", "./moondream2"], 8, "./moondream2: no such model directory or file"),
    (["info", "no-such-model"], 8, "known models: moondream-demo"),
    (["eval", "{d}/q.jsonl", "-m", "nope"], 8, "unknown model name"),
    (["eval", "{d}/binary.jsonl", "-m", "nope"], 1, "is not a text file (byte 6 is not UTF-8)"),
    (["eval", "{d}", "-m", "nope"], 1, "is a directory; give eval a JSON-lines file"),
    (["chat", str(IMG), "-p", "hi", "-m", "{d}"], 3, "is truncated"),
    (["info", "{d}"], 3, "is truncated"),
    (["info", "{d}/notes.png"], 3, "not a readable GGUF"),
    # a 2024 moondream has no long caption (the default 2025 demo has)
    (["caption", str(IMG), "--length", "long", "-m", "moondream-demo-2024"], 1, "must be one of short, normal"),
    # an unwritable --out fails before the model is even looked up (-m names none)
    (["caption", str(IMG), "-o", "{d}/notes.png/out.jsonl", "-m", "nope"], 1, "give --out a file in a writable"),
    (["caption", str(IMG), "-o", "{d}", "-m", "nope"], 1, "is a directory; name a file"),
    (["pull", "moondream-demo"], 1, "bundled"),
    (["rm", "moondream-demo"], 1, "bundled"),
    (["pull", "moondream-demo-2024"], 1, "bundled"),
    (["rm", "moondream-demo-2024"], 1, "bundled"),
    (["chat", str(IMG), "--max-tokens", "0"], 2, ""),
    (["query", str(IMG), "What?", "--gpu-layers", "-1"], 2, "--gpu-layers"),
    (["bench", "--work", "{d}/notes.png"], 2, "is a file"),  # refused before 12 GB of models are written
    (["bench", "--work", "{d}/notes.png/work"], 1, "cannot write to"),
    (["convert", str(ROOT / "gguf_models/demo/checkpoint"), "-o", "{d}/notes.png"], 1, "is a file, not a directory"),
    (["convert", str(ROOT / "gguf_models/demo/checkpoint"), "-o", "{d}/notes.png/x"], 1, "give -o/--out-dir a"),
]


@pytest.mark.parametrize("args,code,words", CASES, ids=[" ".join(c[0][:2]) + f"->{c[1]}" for c in CASES])
def test_error(args, code, words, broken, tmp_path):
    args = [a.format(d=broken) for a in args]
    r = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"MOONDREAM_CPP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    if code != 2:
        assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_pull_into_an_unwritable_store_says_which_setting_to_change(broken, tmp_path):
    home = broken / "notes.png" / "home"  # under a file: no directory can be made there
    r = subprocess.run([CLI, "pull", "moondream2"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"MOONDREAM_CPP_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "could not write the model store" in r.stderr and "set MOONDREAM_CPP_HOME to a writable" in r.stderr
    assert "[Errno" not in r.stderr
