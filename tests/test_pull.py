"""`pull`, `list`, `rm`, `info` against a fake Hugging Face hub on loopback (HF_ENDPOINT), as real subprocesses:
downloads verified by checksum, a corrupted download, a cut connection, a killed pull that resumes, no network,
offline mode and a full disk."""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLI
from fakehub import FakeHub
from moondream_cpp.gguf_models import DEMO_2024, demo_checkpoint, demo_pair

ROOT = Path(__file__).resolve().parents[1]
TEXT, MMPROJ = demo_pair(DEMO_2024)  # the fake hub's models: the 2024 demo's f16 pair and its HF checkpoint
CK = demo_checkpoint(DEMO_2024)
BUNDLED = ["moondream-demo", "moondream-demo-2024"]  # what `list` always shows
CK_FILES = ["config.json", "model.safetensors", "tokenizer.json"]


def registry(text_sha=None):
    return {
        "demo-gguf": {"kind": "gguf", "repo": "test/demo-gguf", "revision": "v1",
                      "files": {"text": {"name": TEXT.name, "size": TEXT.stat().st_size, "sha256": text_sha},
                                "mmproj": {"name": MMPROJ.name, "size": None, "sha256": None}},
                      "quants": ["f16", "q8_0"], "default_quant": "f16"},
        "demo-ck": {"kind": "checkpoint", "repo": "test/demo-ck", "revision": "v1", "moondream_revision": "2024-04-02",
                    "files": CK_FILES, "quants": ["f16", "q8_0"], "default_quant": "q8_0"},
    }


def demo_hub() -> FakeHub:
    """A fake hub holding the registry()'s two models at revision v1 (started by `with`)."""
    h = FakeHub()
    h.add("test/demo-gguf", "v1", TEXT.name, TEXT.read_bytes())
    h.add("test/demo-gguf", "v1", MMPROJ.name, MMPROJ.read_bytes())
    for f in CK_FILES:
        h.add("test/demo-ck", "v1", f, (CK / f).read_bytes())
    return h


def env(home, hub_url):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    e.update(MOONDREAM_CPP_HOME=str(home), HF_ENDPOINT=hub_url, HF_HOME=str(home / "hf"), HOME=str(home))
    return e


def run(*args, home, hub_url, extra=None, preexec=None, timeout=300):
    e = env(home, hub_url)
    e.update(extra or {})
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout,
                          cwd=ROOT, preexec_fn=preexec)


def listed(home, hub_url):
    r = run("list", "--json", home=home, hub_url=hub_url)
    assert r.returncode == 0, r.stderr
    return {row["model"]: row for row in json.loads(r.stdout)}


def test_pull_a_published_pair_use_it_offline_then_remove_it(hub, home):
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "demo-gguf:f16"
    got = listed(home, hub.url)
    assert got["demo-gguf:f16"]["size"] == TEXT.stat().st_size + MMPROJ.stat().st_size
    stored = Path(got["demo-gguf:f16"]["where"])
    assert (stored / TEXT.name).read_bytes() == TEXT.read_bytes()  # verified, byte for byte
    n = len(hub.requests)
    r = run("chat", ROOT / "examples" / "shapes.png", "-m", "demo-gguf", "-p", "What color is the circle?",
            home=home, hub_url=hub.url)
    assert (r.returncode, r.stdout) == (0, "red\n"), r.stderr
    info = json.loads(run("info", "demo-gguf", "--json", home=home, hub_url=hub.url).stdout)
    assert info["text"]["arch"] == "phi2" and info["mmproj"]["projector"] == "mlp"
    assert info["text"]["revision"] == "2024-04-02" and info["mmproj"]["image_tokens"] == 64
    assert len(hub.requests) == n  # only pull touches the network
    assert all("/resolve/" in path for _, path, _ in hub.requests)  # ...and only for the files: no telemetry
    r = run("rm", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    assert "demo-gguf:f16" not in listed(home, hub.url)
    r = run("chat", ROOT / "examples" / "shapes.png", "-m", "demo-gguf", "-p", "?", home=home, hub_url=hub.url)
    assert r.returncode == 8 and "not downloaded yet" in r.stderr and "moondream-cpp pull demo-gguf" in r.stderr


def test_pull_a_checkpoint_converts_and_quantizes_it(hub, home):
    r = run("pull", "demo-ck", "--quant", "q8_0", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", "demo-ck:q8_0", "--json", home=home, hub_url=hub.url).stdout)
    assert info["text"]["weights"] == "Q8_0"
    r = run("query", ROOT / "examples" / "shapes.png", "How many shapes are there?", "-m", "demo-ck:q8_0",
            home=home, hub_url=hub.url)
    assert (r.returncode, r.stdout) == (0, "3\n"), r.stderr
    store = home / "models"
    assert sorted(p.name for p in store.iterdir()) == ["demo-ck"]  # the work area is gone


def test_a_corrupted_download_is_refused_and_leaves_no_model(hub, home):
    hub.files[("test/demo-gguf", "v1", MMPROJ.name)].corrupt = True
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 6
    assert "checksum mismatch" in r.stderr and MMPROJ.name in r.stderr and "Traceback" not in r.stderr
    assert "demo-gguf:f16" not in listed(home, hub.url)
    assert not list((home / "models").rglob("*.part")) and not list((home / "models").rglob("manifest.json"))
    hub.files[("test/demo-gguf", "v1", MMPROJ.name)].corrupt = False  # the hub is fixed: pull again works
    assert run("pull", "demo-gguf", home=home, hub_url=hub.url).returncode == 0


def test_a_registry_checksum_wins_over_the_hub(hub, home):
    (home / "registry.json").write_text(json.dumps(registry(text_sha="0" * 64)))
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 6 and "checksum mismatch" in r.stderr and "0" * 64 in r.stderr


def test_a_cut_connection_resumes_where_it_stopped(hub, home):
    hub.files[("test/demo-gguf", "v1", TEXT.name)].cut_after = 1536 * 1024  # after the first 1 MiB step
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    ranges = [rng for m, p, rng in hub.requests if m == "GET" and p.endswith(TEXT.name)]
    assert ranges == [None, f"bytes={1 << 20}-"]  # the retry asked for the rest only
    stored = Path(listed(home, hub.url)["demo-gguf:f16"]["where"])
    assert (stored / TEXT.name).read_bytes() == TEXT.read_bytes()


def test_a_killed_pull_resumes_on_the_next_run(hub, home):
    hub.files[("test/demo-gguf", "v1", TEXT.name)].trickle = 0.1  # 64 KiB every 0.1 s
    proc = subprocess.Popen([CLI, "pull", "demo-gguf"], env=env(home, hub.url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    part = home / "models" / ".partial" / "demo-gguf" / "src" / (TEXT.name + ".part")
    deadline = time.time() + 60
    while not (part.exists() and part.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < TEXT.stat().st_size
    hub.files[("test/demo-gguf", "v1", TEXT.name)].trickle = 0
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    last = [rng for m, p, rng in hub.requests if m == "GET" and p.endswith(TEXT.name)][-1]
    assert last == f"bytes={kept}-"  # the second run asked only for what the first had not received
    stored = Path(listed(home, hub.url)["demo-gguf:f16"]["where"])
    assert (stored / TEXT.name).read_bytes() == TEXT.read_bytes()


def test_no_network_offline_mode_and_unknown_names(home):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = run("pull", "demo-gguf", home=home, hub_url=closed, timeout=120)
    assert r.returncode == 6 and "could not download" in r.stderr and "Traceback" not in r.stderr
    r = run("pull", "demo-gguf", home=home, hub_url=closed, extra={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 6 and "HF_HUB_OFFLINE" in r.stderr
    r = run("pull", "no-such-model", home=home, hub_url=closed)
    assert r.returncode == 8 and "unknown model name 'no-such-model'" in r.stderr and "moondream2" in r.stderr
    r = run("pull", "demo-gguf", "--quant", "q3", home=home, hub_url=closed)
    assert r.returncode == 1 and "q3" in r.stderr
    r = run("rm", "demo-gguf", home=home, hub_url=closed)
    assert r.returncode == 8 and "not in the model store" in r.stderr


def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_full_disk_is_reported_and_leaves_no_model(hub, home, tmp_path):
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url, preexec=_file_size_limit(512 * 1024))
    assert r.returncode == 7, r.stderr
    assert "no space left" in r.stderr and "MOONDREAM_CPP_HOME" in r.stderr and "Traceback" not in r.stderr
    assert "demo-gguf:f16" not in listed(home, hub.url)
    r = run("convert", CK, "-o", tmp_path / "out", home=home, hub_url=hub.url, preexec=_file_size_limit(256 * 1024))
    assert r.returncode == 7 and "no space left" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.gguf"))


GOOD = {"kind": "gguf", "repo": "test/x", "revision": "v1",
        "files": {"text": {"name": "t.gguf"}, "mmproj": {"name": "m.gguf"}}}


@pytest.mark.parametrize("content,problem", [
    ("{not json", "invalid JSON at line 1 column 2"),
    (b"\xff\xfe{}", "it is not UTF-8 text"),
    ('["x"]', "it holds a JSON list, not an object of name -> entry"),
    ({"x": 3}, "entry 'x' is not a JSON object"),
    ({"x": {**GOOD, "kind": "zip"}}, "entry 'x' has kind 'zip'; it must be one of 'gguf', 'checkpoint'"),
    ({"x": {k: v for k, v in GOOD.items() if k != "repo"}}, "entry 'x' needs 'repo' (a string)"),
    ({"x": {**GOOD, "files": {"text": {"name": "t.gguf"}}}}, "entry 'x' needs 'files': {\"text\""),
    ({"x": {**GOOD, "files": {**GOOD["files"], "text": {"name": "t", "size": "big"}}}},
     "entry 'x' has files.text.size 'big'; it must be a byte count or null"),
    ({"x": {**GOOD, "files": {**GOOD["files"], "mmproj": {"name": "m", "sha256": "abc"}}}},
     "entry 'x' has files.mmproj.sha256 'abc'; it must be 64 hex digits or null"),
    ({"../x": GOOD}, "entry '../x' is not a valid model name: a name is a letter or digit, then"),
    ({"x y": GOOD}, "entry 'x y' is not a valid model name"),
    ({"x": {**GOOD, "files": {**GOOD["files"], "text": {"name": "../../t.gguf"}}}},
     "entry 'x' has files.text.name '../../t.gguf'; it must be a relative path inside the repo"),
    ({"x": {**GOOD, "kind": "checkpoint", "files": ["config.json", "/etc/passwd"]}},
     "entry 'x' has files[1].name '/etc/passwd'; it must be a relative path inside the repo"),
    ({"x": {**GOOD, "kind": "checkpoint", "files": "model.safetensors"}},
     "entry 'x' needs 'files': a list of the checkpoint's file names"),
    ({"x": {**GOOD, "quants": ["q3"]}}, "entry 'x' has quants ['q3']; each must be one of f16, q8_0"),
    ({"x": {**GOOD, "quants": ["f16"], "default_quant": "q8_0"}},
     "entry 'x' has default_quant 'q8_0', which is not among its quants"),
])
def test_a_bad_user_registry_is_named_with_its_problem(tmp_path, monkeypatch, content, problem):
    from moondream_cpp.errors import MoondreamError
    from moondream_cpp.registry import registry

    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(tmp_path))
    path = tmp_path / "registry.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(MoondreamError) as e:
        registry()
    assert str(e.value).startswith(f"{path} is not a valid model registry: {problem}")
    assert "Fix or delete the file" in str(e.value)


def test_a_bad_user_registry_stops_pull_and_list_with_a_message(home):
    (home / "registry.json").write_text(json.dumps({"demo-gguf": {**GOOD, "repo": 7}}))
    query = ["query", ROOT / "examples" / "shapes.png", "?", "-m", "demo-gguf"]
    for args in (["pull", "demo-gguf"], ["list", "--all"], query):
        r = run(*args, home=home, hub_url="http://127.0.0.1:9")
        assert r.returncode == 1, (args, r.stderr)
        assert f"{home / 'registry.json'} is not a valid model registry: entry 'demo-gguf' needs 'repo'" in r.stderr
        assert "Traceback" not in r.stderr


DOWNLOAD_PROBE = """
import sys
from pathlib import Path
from moondream_cpp import hub  # first: its environment must be in place before huggingface_hub is imported
from huggingface_hub import constants
telemetry_off = constants.HF_HUB_DISABLE_TELEMETRY
before = {k: v for k, v in vars(constants).items() if k.isupper()}
seen = []
hub.download("test/demo-gguf", sys.argv[1], "v1", Path(sys.argv[2]), on_progress=lambda *a: seen.append(a))
changed = [k for k, v in vars(constants).items() if k.isupper() and before.get(k) != v]
print(telemetry_off, changed, seen)
"""


def test_a_download_leaves_huggingface_hub_settings_alone(hub, tmp_path):
    dest = tmp_path / TEXT.name
    r = subprocess.run([sys.executable, "-c", DOWNLOAD_PROBE, TEXT.name, str(dest)], capture_output=True, text=True,
                       env=env(tmp_path, hub.url), timeout=120)
    assert r.returncode == 0, r.stderr
    mb = TEXT.stat().st_size // 10**6
    assert r.stdout.split(" ", 1) == ["True", f"[] [('downloading {TEXT.name} (MB)', 1, {mb}), "
                                              f"('downloading {TEXT.name} (MB)', {mb}, {mb})]\n"]
    assert dest.read_bytes() == TEXT.read_bytes()
