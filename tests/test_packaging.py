"""One import package: convert/, cli/ and gguf_models/ install as moondream_cpp subpackages, never top-level."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_plain_install(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
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
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    probe = "import moondream_cpp.convert as c, moondream_cpp.cli.main as m; print(c.__file__); print(m.__file__)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(target)) for line in r.stdout.splitlines())
