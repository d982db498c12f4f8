"""Output folders checked before any work starts: one that cannot be written fails at once, saying what to do,
instead of as a bare OSError after a model load or a conversion."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import MoondreamError


def writable_dir(path: str | Path, option: str, *, for_file: bool = False) -> Path:
    """Make `path` (parents too) if missing and prove a file can be created in it; else MoondreamError naming
    `option`, the command-line option that gave it (the directory itself, or with for_file a file in it)."""
    path = Path(path)
    want = "a file in a writable directory" if for_file else "a writable directory"
    if path.exists() and not path.is_dir():
        raise MoondreamError(f"{path} is a file, not a directory; give {option} {want}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise MoondreamError(f"cannot write to {path} ({e.strerror or e}); give {option} {want}") from None
    return path
