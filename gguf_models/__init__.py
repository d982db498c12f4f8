"""Known models (registry.json, data) and the bundled demo model."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
REGISTRY = json.loads((HERE / "registry.json").read_text())


def demo_pair() -> tuple[Path, Path]:
    """The bundled demo model's text + mmproj GGUF files (shipped in the package, no download)."""
    entry = REGISTRY["moondream-demo"]
    return HERE / entry["dir"] / entry["text"], HERE / entry["dir"] / entry["mmproj"]


DEMO_NOTICE = ("Using the bundled demo model: a tiny moondream trained on synthetic shapes, colours and letters (not "
               "the real moondream). For real moondream: `moondream-cpp pull moondream2` (or convert an HF "
               "checkpoint with `moondream-cpp convert CHECKPOINT_DIR -o DIR`, adding --revision 2025-06-21 or the "
               "like for a 2025 one) and pass --model.")
