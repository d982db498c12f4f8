"""The GPT-2 vocabulary the test tokenizers are built from: llama.cpp's own test file, shipped in the llama-cpp-python
source distribution that scripts/install.sh downloads (vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf).

install.sh keeps a copy beside its wheel cache; where it is missing (an old cache, another venv) the tests fetch the
sdist from the package index once and keep the one file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the pinned version (pyproject.toml); its sdist carries the file
NAME = "ggml-vocab-gpt-2.gguf"
MEMBER = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/models/{NAME}"


def cache_dir() -> Path:
    """Where install.sh keeps its wheels (scripts/install.sh: MOONDREAM_CPP_WHEELS or the user cache)."""
    if os.environ.get("MOONDREAM_CPP_WHEELS"):
        return Path(os.environ["MOONDREAM_CPP_WHEELS"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moondream-cpp" / "wheels"


def gpt2_vocab() -> Path:
    """The vocabulary file, fetched on first use; raises RuntimeError saying how to get it where it cannot be had."""
    explicit = os.environ.get("MOONDREAM_CPP_TEST_VOCAB")
    if explicit:
        if not Path(explicit).is_file():
            raise RuntimeError(f"MOONDREAM_CPP_TEST_VOCAB={explicit} is not a file")
        return Path(explicit)
    path = cache_dir() / NAME
    if not path.is_file():
        _fetch(path)
    return path


def _fetch(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if p.returncode != 0 or not sdists:
            raise RuntimeError(f"the tests need {NAME} from the llama-cpp-python {LLAMA_CPP_PYTHON} source "
                               f"distribution, and pip could not download it ({p.stderr.strip()[-300:]}). Run "
                               "`bash scripts/install.sh test,torch` with the package index reachable, or set "
                               f"MOONDREAM_CPP_TEST_VOCAB to a copy of {NAME}")
        with tarfile.open(sdists[0]) as tar:
            data = tar.extractfile(MEMBER).read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, dest)  # concurrent test runs never see half a file
