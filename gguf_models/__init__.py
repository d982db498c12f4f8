"""Known models (registry.json, data) and the bundled demo models."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
REGISTRY = json.loads((HERE / "registry.json").read_text())
DEMO = "moondream-demo"  # the default model: the 2025-architecture demo (answers, captions, detects, points)
DEMO_2024 = "moondream-demo-2024"  # the first demo (2024 architecture): a test fixture, and still a model to pick


def demo_pair(name: str = DEMO) -> tuple[Path, Path]:
    """A bundled demo model's text + mmproj GGUF files (shipped in the package, no download); the default demo
    unless `name` picks another bundled entry."""
    entry = REGISTRY[name]
    return HERE / entry["dir"] / entry["text"], HERE / entry["dir"] / entry["mmproj"]


def demo_checkpoint(name: str = DEMO_2024) -> Path:
    """The HF checkpoint a bundled demo was converted from, where it ships one (the 2024 demo does)."""
    return HERE / REGISTRY[name]["checkpoint"]


def bundled_names() -> list[str]:
    """The registry's bundled models, the default first."""
    return [n for n, e in REGISTRY.items() if e["kind"] == "bundled"]


DEMO_NOTICE = ("Using the bundled demo model: a tiny moondream2 (2025 architecture) trained on synthetic shapes, "
               "colours and letters, which answers, captions, detects and points on such pictures (not the real "
               "moondream). For real moondream: `moondream-cpp pull moondream2` (or convert an HF checkpoint with "
               "`moondream-cpp convert CHECKPOINT_DIR -o DIR`, adding --revision 2025-06-21 or the like for a 2025 "
               "one) and pass --model.")
