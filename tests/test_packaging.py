"""One import package: convert/, cli/ and gguf_models/ install as moondream_cpp subpackages, never top-level; the
bundled demos (each file the registry names) ship in the wheel and the sdist, and an installed copy lists them."""
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = json.loads((ROOT / "gguf_models" / "registry.json").read_text())  # read here, not through the package
BUNDLED = {name: e for name, e in REGISTRY.items() if e["kind"] == "bundled"}


def source_tree(dest: Path) -> Path:
    """The project's package sources copied to `dest`: a build here would reuse a stale build/lib or egg-info (files
    a past build copied stay in the wheel even once pyproject.toml no longer names them)."""
    import shutil

    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("moondream_cpp", "convert", "cli", "gguf_models"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def bundled_files(prefix: str) -> set[str]:
    """Every GGUF file the registry's bundled entries name, as archive paths under `prefix`."""
    return {f"{prefix}/{e['dir']}/{e[role]}" for e in BUNDLED.values() for role in ("text", "mmproj")}


def test_wheel_layout_and_plain_install(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(source_tree(tmp_path / "src"))], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("moondream_cpp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"moondream_cpp"}
    for must in ["moondream_cpp/convert/__init__.py", "moondream_cpp/cli/main.py", "moondream_cpp/spec.py",
                 "moondream_cpp/reference/model.py", "moondream_cpp/gguf_models/__init__.py",
                 "moondream_cpp/gguf_models/registry.json",
                 "moondream_cpp/gguf_models/demo/moondream-demo-text-f16.gguf",
                 "moondream_cpp/gguf_models/demo/moondream-demo-mmproj-f16.gguf",
                 "moondream_cpp/gguf_models/demo/checkpoint/model.safetensors"]:
        assert must in names
    assert {"moondream-demo", "moondream-demo-2024"} <= set(BUNDLED)
    gguf_files = {n for n in names if n.startswith("moondream_cpp/gguf_models/") and n.endswith(".gguf")}
    assert gguf_files == bundled_files("moondream_cpp/gguf_models")  # both demos, and no stray GGUF beside them
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    probe = "import moondream_cpp.convert as c, moondream_cpp.cli.main as m; print(c.__file__); print(m.__file__)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(target)) for line in r.stdout.splitlines())
    # the installed copy finds its bundled demos: `moondream-cpp list` shows both, their files' sizes, in the install
    r = subprocess.run([sys.executable, "-m", "moondream_cpp", "list", "--json"], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin",
                                          "MOONDREAM_CPP_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(BUNDLED)
    for name, e in BUNDLED.items():
        folder = target / "moondream_cpp" / "gguf_models" / e["dir"]
        assert Path(rows[name]["where"]) == folder
        assert rows[name]["size"] == sum((folder / e[role]).stat().st_size for role in ("text", "mmproj"))


def test_sdist_carries_the_bundled_demos(tmp_path):
    probe = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_sdist(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                       cwd=source_tree(tmp_path / "src"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sdist = tmp_path / r.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert bundled_files("gguf_models") <= names
    assert "gguf_models/demo/checkpoint/model.safetensors" in names
