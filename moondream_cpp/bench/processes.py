"""Measurements in fresh processes: a measurement module's one JSON line, the median of repeats, and the peak RSS of
a command on its own (not of the benchmark process that starts it)."""
from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time


def child(args: list[str], timeout: float = 1800, module: str = "measure") -> dict:
    """Run a measurement (moondream_cpp.bench.<module>) in a fresh process; its JSON line, or an error record."""
    p = subprocess.run([sys.executable, "-m", f"moondream_cpp.bench.{module}", *args], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode < 0:  # a native crash leaves no Python error line: name the signal
        return {"error": f"killed by {signal.Signals(-p.returncode).name}"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """The median of every number over the runs without an error, and how many those were."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "no runs"}
    out = {k: statistics.median(r[k] for r in ok) for k in ok[0] if isinstance(ok[0][k], (int, float))}
    out["runs"] = len(ok)
    return out


# A small process forks and execs the command and reports the child's peak RSS. The kernel carries a process's peak
# across exec, and Python spawns children with vfork: waiting on our own child directly would report *this* (large)
# process's peak, not the command's.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_of(cmd: list[str]) -> tuple[int, float, float]:
    """Run cmd; (exit code, peak RSS MB of that command alone, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    try:
        rc, kb = map(int, p.stdout.split())
    except ValueError:
        return p.returncode or 1, 0.0, secs
    return rc, kb / 1024, secs


def stop(p) -> None:
    """Terminate a child process, killing it if it has not ended in 30 s."""
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
