"""The model store holds what was pulled, whole, and only inside itself: names are never paths, the first download of
each file is recorded and a later change on the hub refused, small files are checked against the hub's git blob sha1,
downloaded GGUFs are validated before they are stored, two pulls of one model take turns, renames are synced, and a
damaged stored file is reported with the command that repairs it. Real CLI processes against the fake hub on
loopback."""
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLI
from test_pull import BUNDLED, CK, MMPROJ, TEXT, env, listed, registry, run

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "examples" / "shapes.png"


def in_dir(cwd, *args, home):
    e = env(home, "http://127.0.0.1:9")
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=e, timeout=300, cwd=cwd)


def test_a_bare_name_is_a_model_name_never_a_directory_of_that_name(home, tmp_path):
    work = tmp_path / "work"
    for d in ("moondream2", "mymodel"):
        (work / d).mkdir(parents=True)
        shutil.copy(TEXT, work / d)
        shutil.copy(MMPROJ, work / d)
    question = [IMG, "What color is the circle?"]
    r = in_dir(work, "query", *question, "-m", "moondream2", home=home)
    assert r.returncode == 8 and "moondream2 is not downloaded yet" in r.stderr, r.stderr  # not ./moondream2
    r = in_dir(work, "query", *question, "-m", "mymodel", home=home)
    assert r.returncode == 8 and "unknown model name 'mymodel'" in r.stderr
    assert "write it as a path: ./mymodel" in r.stderr
    r = in_dir(work, "info", "mymodel", home=home)
    assert r.returncode == 8 and "./mymodel" in r.stderr
    for path in ("./moondream2", work / "mymodel", "mymodel/"):
        r = in_dir(work, "query", *question, "-m", path, home=home)
        assert (r.returncode, r.stdout) == (0, "red\n"), (path, r.stderr)


@pytest.mark.parametrize("ref", ["../x", "a b", "x:../../q", ".."])
def test_a_name_that_is_no_name_is_refused_by_every_command(home, tmp_path, ref):
    for args in (["pull", ref], ["rm", ref]):
        r = in_dir(tmp_path, *args, home=home)
        assert r.returncode == 8 and "is not a model name" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_a_user_registry_name_cannot_write_outside_the_store(hub, home, tmp_path):
    reg = registry()
    (home / "registry.json").write_text(json.dumps({"../../escape": reg["demo-gguf"]}))
    r = run("list", "--all", home=home, hub_url=hub.url)
    assert r.returncode == 1 and "entry '../../escape' is not a valid model name" in r.stderr
    r = run("pull", "../../escape", home=home, hub_url=hub.url)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "escape").exists() and not (home / "escape").exists()
    reg["demo-gguf"]["files"]["text"]["name"] = "../../../escape.gguf"
    (home / "registry.json").write_text(json.dumps(reg))
    r = run("pull", "demo-gguf", home=home, hub_url=hub.url)
    assert r.returncode == 1 and "it must be a relative path inside the repo" in r.stderr
    assert not list(tmp_path.rglob("escape*"))


def gets(hub, name):
    return [rng for method, path, rng in hub.requests if method == "GET" and path.endswith("/" + name)]


def reserialized(path: Path) -> bytes:
    """The same JSON in other bytes: what a changed small file on the hub looks like to a converter that parses it."""
    return json.dumps(json.loads(path.read_text())).encode()


def test_small_files_are_checked_against_the_hubs_git_blob_sha1(hub, home):
    hub.files[("test/demo-ck", "v1", "config.json")].served = reserialized(CK / "config.json")
    r = run("pull", "demo-ck", "--quant", "f16", home=home, hub_url=hub.url)
    data = (CK / "config.json").read_bytes()
    blob = hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()
    assert r.returncode == 6, r.stderr
    assert "checksum mismatch for test/demo-ck/config.json@v1" in r.stderr and f"git blob sha1 {blob}" in r.stderr
    assert "demo-ck:f16" not in listed(home, hub.url)


def test_what_the_first_pull_received_is_locked_and_a_change_on_the_hub_refused(hub, home):
    r = run("pull", "demo-ck", "--quant", "f16", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    lock_file = home / "models" / "demo-ck" / "lock.json"
    locked = json.loads(lock_file.read_text())["sources"]["test/demo-ck@v1"]
    assert locked["files"] == {f.name: {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
                               for f in (CK / n for n in ("config.json", "model.safetensors", "tokenizer.json"))}
    assert locked["commit"] == hub.commit("test/demo-ck", "v1")
    # the tag now names other files: a consistent hub (its ETag matches), only the lock file can tell
    hub.add("test/demo-ck", "v1", "tokenizer.json", reserialized(CK / "tokenizer.json"))
    for args in (["pull", "demo-ck", "--quant", "q8_0"], ["pull", "demo-ck:f16", "--force"]):
        r = run(*args, home=home, hub_url=hub.url)
        assert r.returncode == 6, (args, r.stderr)
        assert "tokenizer.json" in r.stderr and str(lock_file) in r.stderr and "delete" in r.stderr, r.stderr
        assert "moved tag" in r.stderr and "nothing was installed" in r.stderr
    assert gets(hub, "model.safetensors") == [None]  # refused before any file was fetched again: one GET, the first
    assert sorted(listed(home, hub.url)) == ["demo-ck:f16", *BUNDLED]  # the stored f16 is left alone
    assert run("rm", "demo-ck", home=home, hub_url=hub.url).returncode == 0
    r = run("pull", "demo-ck", "--quant", "f16", home=home, hub_url=hub.url)
    assert r.returncode == 6 and str(lock_file) in r.stderr  # removing the model keeps what was trusted
    lock_file.unlink()  # the user trusts the change
    r = run("pull", "demo-ck", "--quant", "f16", home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    new = json.loads(lock_file.read_text())["sources"]["test/demo-ck@v1"]["files"]["tokenizer.json"]
    assert new["sha256"] == hashlib.sha256(reserialized(CK / "tokenizer.json")).hexdigest()


def test_a_changed_lfs_file_is_refused_before_it_is_downloaded(hub, home):
    assert run("pull", "demo-gguf", home=home, hub_url=hub.url).returncode == 0
    changed = bytearray(MMPROJ.read_bytes())
    changed[-1] ^= 1  # one weight's bit: still a valid GGUF
    hub.add("test/demo-gguf", "v1", MMPROJ.name, bytes(changed))
    before = len(gets(hub, MMPROJ.name))
    r = run("pull", "demo-gguf", "--quant", "q8_0", home=home, hub_url=hub.url)
    assert r.returncode == 6 and MMPROJ.name in r.stderr and "nothing was downloaded" in r.stderr, r.stderr
    for data in (changed, MMPROJ.read_bytes()):  # what the hub has now, what was locked
        assert hashlib.sha256(data).hexdigest() in r.stderr
    assert len(gets(hub, MMPROJ.name)) == before
    assert "demo-gguf:q8_0" not in listed(home, hub.url)


def test_a_downloaded_gguf_that_fails_our_checks_is_never_stored(hub, home):
    hub.add("test/demo-gguf", "v1", MMPROJ.name, MMPROJ.read_bytes()[: MMPROJ.stat().st_size // 2])
    for quant in ("f16", "q8_0"):  # published as it is, and quantized first
        r = run("pull", "demo-gguf", "--quant", quant, home=home, hub_url=hub.url)
        assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
        assert "not a valid moondream GGUF pair, so nothing was stored" in r.stderr and MMPROJ.name in r.stderr
    assert sorted(listed(home, hub.url)) == BUNDLED
    assert not (home / "models" / "demo-gguf" / "lock.json").exists()  # a refused download is not trusted
    hub.add("test/demo-gguf", "v1", MMPROJ.name, MMPROJ.read_bytes())  # the hub is fixed: pull works
    assert run("pull", "demo-gguf", home=home, hub_url=hub.url).returncode == 0


def _start_pull(home, hub, *args):
    return subprocess.Popen([CLI, "pull", "demo-gguf", *args], env=env(home, hub.url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.mark.parametrize("second_quant", ["f16", "q8_0"])
def test_two_pulls_of_one_model_take_turns(hub, home, second_quant):
    hub.files[("test/demo-gguf", "v1", TEXT.name)].trickle = 0.15  # 64 KiB each: ~4 s for the text file
    first = _start_pull(home, hub)
    part = home / "models" / ".partial" / "demo-gguf" / "src" / (TEXT.name + ".part")
    deadline = time.time() + 60
    while not (part.exists() and part.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.02)
    second = _start_pull(home, hub, "--quant", second_quant)
    out2, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert (first.returncode, out1) == (0, "demo-gguf:f16\n"), err1
    assert (second.returncode, out2) == (0, f"demo-gguf:{second_quant}\n"), err2
    assert "waiting for another pull of demo-gguf to end" in err2
    got = listed(home, hub.url)
    assert (Path(got["demo-gguf:f16"]["where"]) / TEXT.name).read_bytes() == TEXT.read_bytes()
    # one whole download per pull that needed one: the second never wrote into the first's .part
    assert gets(hub, TEXT.name) == [None] * (1 if second_quant == "f16" else 2)


FSYNC_PROBE = """
import os, sys
events = []
real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
def fsync(fd):
    events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
    return real_fsync(fd)
def replace(a, b, **kw):
    events.append(("rename", os.path.abspath(b)))
    return real_replace(a, b, **kw)
os.fsync, os.replace = fsync, replace
from moondream_cpp import store
store.pull("demo-gguf")
print(repr(events))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fsync's file from /proc")
def test_files_and_directories_are_synced_around_the_rename_into_the_store(hub, home):
    r = subprocess.run([sys.executable, "-c", FSYNC_PROBE], capture_output=True, text=True, env=env(home, hub.url),
                       timeout=300, cwd=home)
    assert r.returncode == 0, r.stderr
    events = eval(r.stdout)
    final = str(home / "models" / "demo-gguf" / "f16")
    i = events.index(("rename", final))
    synced_before = {path for op, path in events[:i] if op == "fsync"}
    build = str(home / "models" / ".partial" / "demo-gguf" / "build-f16")
    for name in (TEXT.name, MMPROJ.name, "manifest.json"):
        assert f"{build}/{name}" in synced_before, (name, events)
    assert build in synced_before
    assert ("fsync", str(home / "models" / "demo-gguf")) in events[i + 1:]


def test_a_truncated_stored_file_is_reported_as_damaged_with_its_repair(hub, home):
    assert run("pull", "demo-gguf", home=home, hub_url=hub.url).returncode == 0
    stored = Path(listed(home, hub.url)["demo-gguf:f16"]["where"]) / TEXT.name
    with open(stored, "r+b") as f:
        f.truncate(TEXT.stat().st_size // 2)
    repair = "moondream-cpp pull demo-gguf:f16 --force"
    row = listed(home, hub.url)["demo-gguf:f16"]
    assert f"{TEXT.name} is {TEXT.stat().st_size // 2} bytes, not the {TEXT.stat().st_size}" in row["damaged"]
    assert repair in row["damaged"]
    table = run("list", home=home, hub_url=hub.url)
    assert "damaged" in table.stdout and "--force" in table.stdout
    for args in (["query", IMG, "What color is the circle?", "-m", "demo-gguf"], ["info", "demo-gguf:f16"]):
        r = run(*args, home=home, hub_url=hub.url)
        assert r.returncode == 3 and "is damaged" in r.stderr and repair in r.stderr, (args, r.stderr)
    r = run(*repair.split()[1:], home=home, hub_url=hub.url)
    assert r.returncode == 0, r.stderr
    assert stored.read_bytes() == TEXT.read_bytes() and listed(home, hub.url)["demo-gguf:f16"]["damaged"] is None
    n = len(gets(hub, TEXT.name))
    assert run("pull", "demo-gguf", home=home, hub_url=hub.url).returncode == 0  # intact: nothing fetched
    assert run("pull", "demo-gguf", "--force", home=home, hub_url=hub.url).returncode == 0  # fetched again
    assert len(gets(hub, TEXT.name)) == n + 1
    r = run("query", IMG, "What color is the circle?", "-m", "demo-gguf", home=home, hub_url=hub.url)
    assert (r.returncode, r.stdout) == (0, "red\n"), r.stderr
