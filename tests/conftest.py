"""Shared fixtures: scaled-down checkpoints in both real layouts, converted once per test session."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import make_checkpoint  # noqa: E402
from vocab import gpt2_vocab  # noqa: E402

LAYOUTS = ["moondream1", "2024-04-02"]
# the console script of the environment running the tests (CI does not put .venv/bin on PATH)
CLI = str(Path(sys.executable).with_name("moondream-cpp"))


def pytest_configure(config):
    # a shell's background job starts with SIGINT ignored, and children inherit that: the Ctrl-C tests need the
    # default disposition in the processes they spawn (a handled signal is reset to default across exec)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        os.environ["MOONDREAM_CPP_TEST_VOCAB"] = str(gpt2_vocab())  # fetched once, before any test needs it
    except RuntimeError as e:
        raise pytest.UsageError(str(e))
    # no test, nor any process a test starts, may touch the user's model store or hub cache, or reach a real hub
    base = Path(tempfile.mkdtemp(prefix="moondream-cpp-tests-"))
    config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(var, None)
    os.environ.update(MOONDREAM_CPP_HOME=str(base / "home"), HF_HOME=str(base / "hf"),
                      HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Each test starts with an empty model store and hub cache of its own."""
    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(tmp_path / "moondream-cpp-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def rel(a, b) -> float:
    """Relative error ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def rel_logits(a, b) -> float:
    """Relative error of logits up to a constant shift (softmax ignores it), so a shared bias cannot hide errors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return rel(a - a.mean(), b - b.mean())


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("md")


@pytest.fixture(scope="session")
def checkpoint(workdir):
    made = {}

    def get(layout: str = "2024-04-02", **kw) -> Path:
        key = (layout, tuple(sorted(kw.items())))
        if key not in made:
            made[key] = make_checkpoint(workdir / f"ck-{layout}-{len(made)}", layout=layout, **kw)
        return made[key]

    return get


@pytest.fixture(scope="session")
def converted(checkpoint, workdir):
    """converted(layout, text_type, mmproj_type) -> (text.gguf, mmproj.gguf), each conversion done once."""
    from moondream_cpp.convert import convert

    done = {}

    def get(layout="2024-04-02", text_type="f32", mmproj_type="f32"):
        key = (layout, text_type, mmproj_type)
        if key not in done:
            out = convert(checkpoint(layout), workdir / f"gguf-{layout}", text_type, mmproj_type, name="tiny")
            done[key] = (out.text, out.mmproj)
        return done[key]

    return get


@pytest.fixture(scope="session")
def reference(checkpoint):
    from moondream_cpp.reference import ReferenceMoondream

    refs = {}

    def get(layout="2024-04-02"):
        if layout not in refs:
            refs[layout] = ReferenceMoondream(checkpoint(layout))
        return refs[layout]

    return get


@pytest.fixture(scope="session")
def checkpoint2025(workdir):
    """checkpoint2025(revision, dtype) -> a scaled 2025 checkpoint directory (tests/checkpoints2025.py), made once."""
    from checkpoints2025 import make_checkpoint_2025

    made = {}

    def get(revision: str = "2025-04-14", dtype: str = "f16") -> Path:
        key = (revision, dtype)
        if key not in made:
            made[key] = make_checkpoint_2025(workdir / f"ck25-{revision}-{dtype}", revision=revision, dtype=dtype)
        return made[key]

    return get


@pytest.fixture(scope="session")
def pair2025(checkpoint2025, workdir):
    """pair2025(revision, text_type, mmproj_type) -> (text.gguf, mmproj.gguf) of a scaled 2025 model, made once.
    06-21 checkpoints are bf16 (as upstream's), the others f16."""
    from moondream_cpp.convert import convert

    done = {}

    def get(revision: str = "2025-04-14", text_type: str = "f32", mmproj_type: str = "f32"):
        key = (revision, text_type, mmproj_type)
        if key not in done:
            ck = checkpoint2025(revision, "bf16" if revision == "2025-06-21" else "f16")
            out = convert(ck, workdir / f"gguf25-{revision}-{text_type}-{mmproj_type}", text_type, mmproj_type,
                          revision=revision, name="tiny25")
            done[key] = (out.text, out.mmproj)
        return done[key]

    return get


@pytest.fixture(scope="session")
def reference2025(checkpoint2025):
    from moondream_cpp.crops import resize_vips_like
    from moondream_cpp.reference.md2025 import Reference2025

    refs = {}

    def get(revision: str = "2025-04-14"):
        if revision not in refs:
            dtype = "bf16" if revision == "2025-06-21" else "f16"
            # the same resizer as the runtime (libvips' arithmetic in PIL; experiments/resize-pil-vs-vips): the
            # crop geometry and everything after it stay the reference's own
            refs[revision] = Reference2025.load(checkpoint2025(revision, dtype), revision=revision,
                                                resize=resize_vips_like)
        return refs[revision]

    return get


def scene(width: int, height: int, seed: int = 3) -> Image.Image:
    """A structured picture of any size (gradients, blocks, noise): crops of it differ from each other."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 255 / width, y * 255 / height, (x * 3 + y * 5) % 256], -1).astype(np.float64)
    for _ in range(12):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = max(4, min(width, height) // 8)
        a[max(0, cy - r): cy + r, max(0, cx - r): cx + r] = rng.integers(0, 256, 3)
    a += rng.normal(0, 12, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A non-square image with structure (gradients + shapes), so preprocessing and patch order matter."""
    rng = np.random.default_rng(7)
    h, w = 90, 150
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], -1)
    a[20:50, 30:70] = [255, 0, 0]
    a[50:80, 100:140] = [0, 0, 255]
    a += rng.normal(0, 20, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def slow_model(checkpoint, workdir):
    """Random weights that never stop talking and are wide enough to take seconds for a long answer."""
    from moondream_cpp.convert import convert

    out = convert(checkpoint(t_embd=512, t_layers=6, t_heads=8), workdir / "slow", "f16", "f16", name="slow")
    return out.text.parent


@pytest.fixture
def hub():
    """A fake hub on loopback holding the models of test_pull.registry() (the pull and store tests share it)."""
    from test_pull import demo_hub

    with demo_hub() as h:
        yield h


@pytest.fixture
def home(tmp_path):
    """A model store whose user registry.json names the fake hub's models."""
    import json

    from test_pull import registry

    h = tmp_path / "home"
    h.mkdir()
    (h / "registry.json").write_text(json.dumps(registry()))
    return h
