"""Our converted GGUF pair in llama.cpp's own tools, built from the same vendored sources by CMakeLists.txt
(scripts/build_native.sh): llama-mtmd-cli and llama-server --mmproj give the same greedy answers as our runtime, for
images already at the model's input size (so llama.cpp's own resize never differs from moondream's stretch). The
2024 demo: llama.cpp's tools run a 2024 moondream as it is (a 2025 one needs our multi-crop and prefix attention)."""
import base64
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from moondream_cpp import Moondream
from moondream_cpp.gguf_models import DEMO_2024, demo_pair
from test_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("MOONDREAM_CPP_NATIVE_BIN", ROOT / "build" / "native" / "bin"))
pytestmark = pytest.mark.skipif(not (BIN / "llama-server").exists() and not os.environ.get("CI"),
                                reason="native tools not built (bash scripts/build_native.sh; CI builds them)")
QUESTIONS = [("shapes.png", "What color is the circle?"), ("shapes.png", "How many shapes are there?"),
             ("shapes.png", "What shape is the blue object?"), ("letter.png", "What letter is written?"),
             ("two-circles.png", "Is the purple circle at the top or the bottom?")]


@pytest.fixture(scope="module")
def at_input_size(tmp_path_factory):
    """The examples stretched to the model's input size as moondream does, saved as PNG."""
    text, mmproj = demo_pair(DEMO_2024)
    d = tmp_path_factory.mktemp("sized")
    with Moondream.load(text, mmproj) as md:
        size = md.image_size
        out = {}
        for name, q in QUESTIONS:
            p = d / name
            Image.open(ROOT / "examples" / name).convert("RGB").resize((size, size), Image.BICUBIC).save(p)
            out[(name, q)] = (p, md.query(p, q, max_tokens=16).text)
    return out


def test_llama_mtmd_cli_answers_as_we_do(at_input_size):
    text, mmproj = demo_pair(DEMO_2024)
    for (name, q), (path, ours) in at_input_size.items():
        r = subprocess.run([str(BIN / "llama-mtmd-cli"), "-m", str(text), "--mmproj", str(mmproj), "--image",
                            str(path), "-p", q, "--temp", "0", "-n", "16", "-t", "2", "--no-warmup", "--jinja"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == ours, (name, q, r.stdout, ours)


def test_llama_server_with_mmproj_answers_as_we_do(at_input_size):
    text, mmproj = demo_pair(DEMO_2024)
    port = free_port()
    p = subprocess.Popen([str(BIN / "llama-server"), "-m", str(text), "--mmproj", str(mmproj), "--port", str(port),
                          "-t", "2", "-c", "512", "--no-warmup"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if json.loads(urllib.request.urlopen(url + "/health", timeout=1).read()).get("status") == "ok":
                    break
            except OSError:
                assert p.poll() is None, p.stderr.read()[-2000:]
            time.sleep(0.1)
        for (name, q), (path, ours) in at_input_size.items():
            b64 = base64.b64encode(path.read_bytes()).decode()
            body = {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}},
                {"type": "text", "text": q}]}], "temperature": 0, "max_tokens": 16}
            req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            got = json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]["message"]["content"]
            assert got.strip() == ours, (name, q, got, ours)
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_lockstep_with_llama_server_runs_the_same_work_on_both_sides():
    """The Python-vs-native measurement: llama-server's own timings must say it prefilled exactly our prompt's
    length (or, prompt cached, one position) and decoded the same number of tokens, else lockstep raises; each
    ratio is one turn's ours over native."""
    from moondream_cpp.bench.versus_native import TOKENS, lockstep

    text, mmproj = demo_pair(DEMO_2024)
    r = lockstep(BIN / "llama-server", text, mmproj, ROOT / "examples" / "shapes.png", 2, pairs=2, decode_pairs=3)
    with Moondream.load(text, mmproj) as md:
        assert r["depth"] == md.query(ROOT / "examples" / "shapes.png", "Describe this image.",
                                      max_tokens=1).timings["prompt_tokens"]
    assert r["tokens"] == TOKENS and [x["fresh"] for x in r["rows"]] == [True, True, False, False, False]
    assert r["decode_ratio"]["n"] == 5 and r["prefill_ratio"]["n"] == 2  # prefill only from the fresh turns
    want = sorted(round(x["ours_decode"] / x["native_decode"], 3) for x in r["rows"])
    assert r["decode_ratio"]["range"] == [want[0], want[-1]]
    assert 0 < r["python_share_of_decode_median"] < 1
