"""The model store holds what was pulled, whole, and only inside itself: names are never paths, the first download of
each file is recorded and a later change on the hub refused, small files are checked against the hub's git blob sha1,
downloaded GGUFs are validated before they are stored, two pulls of one model take turns, renames are synced, and a
damaged stored file is reported with the command that repairs it. Real CLI processes against the fake hub on
loopback."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLI
from test_pull import MMPROJ, TEXT, demo_hub, env, registry, run

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "examples" / "shapes.png"


@pytest.fixture
def hub():
    with demo_hub() as h:
        yield h


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    (h / "registry.json").write_text(json.dumps(registry()))
    return h


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
