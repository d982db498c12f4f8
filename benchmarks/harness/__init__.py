"""What the repo's benchmark and experiment scripts share, and the installed package does not need: the machine's
short name and where a script's result goes.

* benchmarks/results/<machine>/<benchmark>.json: the current result of each benchmark on each machine (older runs live
  in git history, not as dated copies);
* experiments/<topic>/<machine>.json: an experiment's result, beside its script and README.

A script run as `python benchmarks/X.py` or `python experiments/T/X.py` reaches this package with
`sys.path.append(ROOT)` (appended: the installed moondream_cpp still wins over the source folder)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

_NOISE = re.compile(r"\((?:r|tm)\)|\bprocessor\b|\bcpu\b|@.*$", re.IGNORECASE)


def slug(name: str, cores: int | None = None) -> str:
    """A machine's short name for file names: 'AMD EPYC' with 2 cores -> 'amd-epyc-2c', 'Intel(R) Xeon(R)
    Processor' -> 'intel-xeon-2c', 'NVIDIA H200' (no cores given) -> 'nvidia-h200'."""
    words = re.sub(r"[^a-z0-9]+", "-", _NOISE.sub(" ", name).lower()).strip("-")
    return f"{words}-{cores}c" if cores else words


def machine() -> str:
    """This machine's slug: its CPU's name and core count."""
    from moondream_cpp.bench import cpu_name

    return slug(cpu_name(), os.cpu_count())


def benchmark_result(name: str) -> Path:
    """benchmarks/results/<this machine>/<name>.json, its folder made."""
    path = RESULTS / machine() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def experiment_result(folder: Path, tag: str = "") -> Path:
    """<an experiment's folder>/<this machine>[-tag].json."""
    return Path(folder) / f"{machine()}{'-' + tag if tag else ''}.json"


def write_json(path: Path, obj) -> Path:
    """Write obj as indented JSON and say where it went."""
    path.write_text(json.dumps(obj, indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return path
