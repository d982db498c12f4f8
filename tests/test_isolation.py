"""The test suite never touches the user's model store, hub cache or a real hub."""
import os
import subprocess
import sys
from pathlib import Path

from moondream_cpp import store


def test_store_is_a_fresh_temporary_directory(tmp_path):
    assert store.home() == tmp_path / "moondream-cpp-home"
    assert not store.home().exists()  # nothing carried over from another test
    user = Path("~/.cache/moondream-cpp").expanduser()
    assert user not in store.home().parents and store.home() != user


def test_child_processes_inherit_the_isolation(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import os; from moondream_cpp import store; "
                          "print(store.home()); print(os.environ['HF_ENDPOINT']); print(os.environ['HF_HOME'])"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "moondream-cpp-home"), "http://127.0.0.1:9", str(tmp_path / "hf-home")]
    assert os.environ["HF_ENDPOINT"].startswith("http://127.0.0.1:")
