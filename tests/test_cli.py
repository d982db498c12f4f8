"""The command line as a user runs it: real subprocesses."""
import subprocess
import sys

import pytest
from conftest import CLI

QUESTION = "What is in the image?"


def run(*args, stdin=None, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def cli_pair(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    r = run("convert", checkpoint("2024-04-02"), "-o", out, "--text-type", "f16", "--mmproj-type", "f16",
            "--name", "tiny")
    assert r.returncode == 0, r.stderr
    text, mmproj = out / "tiny-text-f16.gguf", out / "tiny-mmproj-f16.gguf"
    assert r.stdout.split() == [str(text), str(mmproj)]
    assert sorted(p.name for p in out.iterdir()) == [mmproj.name, text.name]  # no leftovers
    return out, text, mmproj


@pytest.fixture(scope="module")
def photo_file(photo, tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "photo.jpg"
    photo.save(p, quality=95)
    return p


def test_chat_prints_the_reference_answer(cli_pair, photo_file, reference):
    _, text, mmproj = cli_pair
    from PIL import Image

    _, want = reference("2024-04-02").generate(Image.open(photo_file), QUESTION, max_tokens=20)
    r = run("chat", photo_file, "-p", QUESTION, "--text", text, "--mmproj", mmproj, "--max-tokens", 20,
            "--gpu-layers", 0)
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n" and "gpu-layers" not in r.stderr


def test_gpu_layers_without_a_gpu_says_so(cli_pair, photo_file):
    from moondream_cpp.native import llama
    from moondream_cpp.settings import gpu_backends

    if llama().llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build has a usable GPU")  # CI's is CPU-only: there this runs
    _, text, mmproj = cli_pair
    plain = run("query", photo_file, QUESTION, "--text", text, "--mmproj", mmproj, "--max-tokens", 8)
    r = run("query", photo_file, QUESTION, "--text", text, "--mmproj", mmproj, "--max-tokens", 8, "--gpu-layers", 8)
    assert r.returncode == 0 and r.stdout == plain.stdout  # answered, on the CPU
    # a CUDA build on a machine without a working driver says that, not "no GPU backend"
    why = "but found no usable GPU" if gpu_backends() else "this llama.cpp build has no GPU backend"
    assert "--gpu-layers has no effect: " in r.stderr and why in r.stderr


def test_chat_with_model_dir_and_questions_on_stdin(cli_pair, photo_file, reference):
    out, _, _ = cli_pair
    from PIL import Image

    ref = reference("2024-04-02")
    img = Image.open(photo_file)
    _, a1 = ref.generate(img, QUESTION, max_tokens=12)
    _, a2 = ref.generate(img, "Anything else?", max_tokens=12, history=[(QUESTION, a1)])
    r = run("chat", photo_file, "--model", out, "--max-tokens", 12, stdin=f"{QUESTION}\nAnything else?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [a1, a2]


def test_convert_errors_are_clear(tmp_path):
    r = run("convert", tmp_path / "nope", "-o", tmp_path / "out")
    assert r.returncode == 3 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    r = run("convert", tmp_path, "-o", tmp_path / "out")
    assert r.returncode == 3 and "no config.json" in r.stderr
    r = run("chat", "x.png", "--max-tokens", "0")
    assert r.returncode == 2


def test_version_and_help():
    assert run("--version").stdout.startswith("moondream-cpp ")
    r = run("--help")
    assert r.returncode == 0 and "Exit codes" in r.stdout
    # the same command without its console script
    m = subprocess.run([sys.executable, "-m", "moondream_cpp", "--version"], capture_output=True, text=True)
    assert m.returncode == 0 and m.stdout == run("--version").stdout


@pytest.mark.parametrize("delay", [0.8, 2.5])  # while loading, and while waiting for a question
def test_ctrl_c_leaves_cleanly(delay, photo_file):
    import signal
    import time

    p = subprocess.Popen([CLI, "chat", str(photo_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
