"""Fuzz the model-file checks: seeded mutations of the bundled demo GGUF pair's headers (scripts/gguf_mutations.py),
each run through `moondream-cpp query`. Every mutation must either load and answer (exit 0) or be refused as a bad
model file (exit 3); none may crash (a signal: llama.cpp aborts), fail otherwise (a traceback, another exit code) or
hang.

    python scripts/fuzz_gguf.py [--count 2000] [--seed 0] [--only I] [--save]

Each mutation runs the CLI's own main() in a child forked from this process after the imports, so it costs what the
command costs after its start-up (the interpreter and imports, ~2 s, are paid once). Prints a JSON summary: counts
per outcome, the slowest mutations, every failure with the line that reproduces it (--only I). --save also writes it
to benchmarks/results/<machine>/fuzz_gguf.json. Exits 1 when a mutation failed.
"""
from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import os
import random
import select
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # gguf_bytes, gguf_mutations
sys.path.append(str(ROOT))  # benchmarks.harness (appended: the installed moondream_cpp wins)
os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort must not start gdb on the child

from gguf_bytes import dumps, loads  # noqa: E402
from gguf_mutations import mutate  # noqa: E402

DEMO = ROOT / "gguf_models" / "demo"
FILES = {"text": DEMO / "moondream-demo-text-f16.gguf", "mmproj": DEMO / "moondream-demo-mmproj-f16.gguf"}
ARCH = {"text": "phi2", "mmproj": "clip"}
IMAGE = ROOT / "examples" / "shapes.png"
HANG_S = 30  # a child still running after this is a hang


def mutated(seed: int, index: int, originals: dict) -> tuple[dict[str, bytes], str]:
    """Mutation `index` of run `seed`: the changed file(s)' bytes and what was done, reproducible from (seed, index)."""
    rng = random.Random(f"{seed}:{index}")
    changed, notes = {}, []
    for _ in range(2 if rng.random() < 0.15 else 1):  # sometimes two changes at once
        which = rng.choice(["text", "mmproj"])
        g = changed.get(which) or copy.deepcopy(originals[which])
        notes.append(f"{which}: {mutate(rng, g, ARCH[which])}")
        changed[which] = g
    return {k: dumps(g) for k, g in changed.items()}, "; ".join(notes)


def run_cli(argv: list[str]) -> tuple[str, float, str]:
    """(outcome, seconds, output tail) of `moondream-cpp ARGV` run by a forked child."""
    from moondream_cpp.cli.main import main as cli_main

    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the CLI, its output into the pipe, its exit status ours
        code = 1
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            faulthandler.dump_traceback_later(HANG_S - 5, exit=True)  # a hang says where it hangs
            sys.argv = ["moondream-cpp", *argv]
            cli_main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    out, deadline = b"", time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(r, 65536) if ready else b""
        if ready and not chunk:
            break
        out = (out + chunk)[-4000:]
    else:
        os.kill(pid, signal.SIGKILL)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    tail = out.decode("utf-8", "replace").strip()[-600:]
    if time.monotonic() >= deadline:
        return "hang", seconds, tail
    if os.WIFSIGNALED(status):
        return f"crash:{signal.Signals(os.WTERMSIG(status)).name}", seconds, tail
    code = os.WEXITSTATUS(status)
    return {0: "answered", 3: "refused"}.get(code, f"exit:{code}"), seconds, tail


def fuzz(count: int, seed: int, only: int | None = None, log=None) -> dict:
    import moondream_cpp.cli.main  # noqa: F401  (what every child runs, imported once)
    import moondream_cpp.image  # noqa: F401
    import moondream_cpp.native as native
    from moondream_cpp import Moondream  # noqa: F401

    native.llama()  # the native library loaded once, before the children
    originals = {k: loads(p.read_bytes()) for k, p in FILES.items()}
    load_before = os.getloadavg()[0]  # the times mean little on a busy machine: say how busy it was
    outcomes, times, failures, slowest, examples = {}, [], [], [], {}
    indices = [only] if only is not None else range(count)
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-") as tmp:
        for i in indices:
            files, what = mutated(seed, i, originals)
            paths = dict(FILES)
            for which, data in files.items():
                paths[which] = Path(tmp) / f"{i}-{which}.gguf"
                paths[which].write_bytes(data)
            outcome, seconds, tail = run_cli(["query", str(IMAGE), "What is this?", "--text", str(paths["text"]),
                                              "--mmproj", str(paths["mmproj"]), "--threads", "1",
                                              "--max-tokens", "4"])
            for p in paths.values():
                if p.parent == Path(tmp):
                    p.unlink()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            times.append(seconds)
            row = {"index": i, "mutation": what, "outcome": outcome, "seconds": round(seconds, 3),
                   "output": tail.splitlines()[-1][:300] if tail else ""}
            slowest = sorted(slowest + [row], key=lambda x: -x["seconds"])[:5]
            examples.setdefault(outcome, row)
            if outcome not in ("answered", "refused"):
                failures.append({**row, "output": tail})
            if log:
                log(f"{i:5d} {outcome:14s} {seconds:6.3f}s  {what}")
    return {"count": len(times), "seed": seed, "outcomes": outcomes, "failures": len(failures),
            "max_seconds": round(max(times), 3), "mean_seconds": round(statistics.fmean(times), 3),
            "median_seconds": round(statistics.median(times), 3), "slowest": slowest,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
            "an_example_of_each_outcome": examples, "failed": failures[:50]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, default=None, help="Run mutation I of the seed alone.")
    ap.add_argument("--save", action="store_true", help="Also write benchmarks/results/<machine>/fuzz_gguf.json.")
    ap.add_argument("--verbose", "-v", action="store_true", help="A line per mutation on stderr.")
    args = ap.parse_args()
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose or args.only is not None else None
    summary = fuzz(args.count, args.seed, args.only, log)
    if args.save:
        from benchmarks.harness import benchmark_result, machine, write_json

        write_json(benchmark_result("fuzz_gguf"), {"machine": machine(), **summary})
    print(json.dumps(summary, indent=1))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
