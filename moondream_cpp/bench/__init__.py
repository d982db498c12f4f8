"""`moondream-cpp bench`: speed and memory of full-size moondream on this machine, measured side by side in one run.

Builds (or reuses) a random-weight full-size moondream1 checkpoint and its GGUF variants through our own converter,
then measures every variant in fresh processes (median of `repeats`), the PyTorch reference in fp32 and bf16, and
llama.cpp's native llama-bench where it is built (scripts/build_native.sh). Also measures the machine's memory read
bandwidth and each variant's decode roofline.
"""
from __future__ import annotations

import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import spec
from ..outputs import writable_dir
from .fullsize import write_checkpoint
from .memory import decode_bytes, memory_bandwidth_gbs  # noqa: F401  (the bench's names for them)

TEXT_TYPES = ("f16", "q8_0", "q5_k_m", "q4_k_m")
VARIANTS = [  # (name, text type, mmproj type, extra measure args)
    ("f16", "f16", "f16", []),
    ("q8_0", "q8_0", "q8_0", []),
    ("q5_k_m", "q5_k_m", "q8_0", []),
    ("q4_k_m", "q4_k_m", "q8_0", []),
    ("q4_k_m + bf16 mmproj", "q4_k_m", "bf16", []),
    ("q4_k_m, vision kept loaded", "q4_k_m", "q8_0", ["--settings", '{"mmproj_on_demand": false}']),
    ("q4_k_m --low-ram", "q4_k_m", "q8_0", ["--low-ram"]),
]


ROOFLINE_PAIRS = 24  # decodes, each between two reads of the memory (moondream_cpp/bench/roofline.py)


def _child(args: list[str], timeout: float = 1800, module: str = "measure") -> dict:
    """Run a measurement (moondream_cpp.bench.<module>) in a fresh process; its JSON line, or an error record."""
    p = subprocess.run([sys.executable, "-m", f"moondream_cpp.bench.{module}", *args], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode < 0:  # a native crash leaves no Python error line: name the signal
        return {"error": f"killed by {signal.Signals(-p.returncode).name}"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
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


def _peak_of(cmd: list[str]) -> tuple[int, float, float]:
    """Run cmd; (exit code, peak RSS MB of that command alone, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    try:
        rc, kb = map(int, p.stdout.split())
    except ValueError:
        return p.returncode or 1, 0.0, secs
    return rc, kb / 1024, secs


def bench_image(work: Path) -> Path:
    """A 640x480 test picture (speed does not depend on what it shows)."""
    image = Path(work) / "photo.png"
    if not image.exists():
        from PIL import Image

        y, x = np.mgrid[0:480, 0:640]
        Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(image)
    return image


def _converted_before_padding(mmproj: Path) -> bool:
    """An mmproj written before the converter padded the vision MLP (spec.VISION_FF_MULTIPLE) measures old code."""
    from ..gguf_header import read_header

    try:
        width = {t.name: t for t in read_header(mmproj).tensors}["v.blk.0.ffn_up.weight"].ne[0]
    except (OSError, KeyError, ValueError):
        return True
    return width % spec.VISION_FF_MULTIPLE != 0


def build_models(work: Path, log: Callable[[str], None]) -> dict:
    """The checkpoint and every GGUF file the variants need (reused when present). Records conversion memory."""
    from ..convert.quantize import quantize

    ck = work / "checkpoint"
    info = {}
    if not (ck / "model.safetensors").exists():
        log("writing a random full-size checkpoint (3.7 GB)")
        write_checkpoint(ck)
    f16 = work / "gguf"
    text = f16 / "moondream-bench-text-f16.gguf"
    mmproj = f16 / "moondream-bench-mmproj-f16.gguf"
    if text.exists() and _converted_before_padding(mmproj):
        log("the GGUF files predate the converter's vision MLP padding: converting again")
        shutil.rmtree(f16)
    if not text.exists():
        log("converting to f16 (peak RSS measured)")
        rc, peak, secs = _peak_of([sys.executable, "-m", "moondream_cpp", "convert", str(ck), "-o", str(f16),
                                   "--name", "moondream-bench"])
        if rc != 0:
            raise RuntimeError("conversion failed")
        info["convert_f16"] = {"peak_rss_mb": round(peak, 1), "seconds": round(secs, 1)}
        (work / "convert.json").write_text(json.dumps(info["convert_f16"]))
    elif (work / "convert.json").exists():
        info["convert_f16"] = json.loads((work / "convert.json").read_text())
    files = {("text", "f16"): text, ("mmproj", "f16"): f16 / "moondream-bench-mmproj-f16.gguf"}
    for kind, types in (("text", TEXT_TYPES[1:]), ("mmproj", ("q8_0", "bf16"))):
        for q in types:
            dst = f16 / f"moondream-bench-{kind}-{q}.gguf"
            if not dst.exists():
                log(f"quantizing {kind} to {q}")  # bf16 from f16 too: speed does not depend on the values
                tmp = dst.with_suffix(".tmp")
                quantize(files[(kind, "f16")], tmp, q)
                tmp.replace(dst)
            files[(kind, q)] = dst
    info["files"] = {f"{k}-{q}": str(p) for (k, q), p in files.items()}
    info["sizes_mb"] = {f"{k}-{q}": round(p.stat().st_size / 2**20, 1) for (k, q), p in files.items()}
    info["_paths"] = files
    return info


def llama_bench_settings(text: Path | None = None) -> list[str]:
    """llama-bench arguments for our default settings (flash attention, extra weight layouts, mapping, batch sizes),
    as they are decided for this machine and the text model at `text`."""
    from ..gguf_check import check_text
    from ..settings import DEFAULT

    cfg = DEFAULT.for_machine(check_text(text).quant if text else None)
    return ["-fa", str(int(cfg.flash_attn)), "--repack", str(int(cfg.extra_bufts)),
            "-lm", "auto" if cfg.mmap else "none", "-b", str(cfg.n_batch), "-ub", str(cfg.n_ubatch),
            "-ngl", str(cfg.n_gpu_layers)]


def native_bench(tools: Path, text: Path, threads: int, n_prompt: int, n_gen: int, repeats: int) -> dict | None:
    """llama.cpp's own llama-bench on the text model, on our default settings (threads, batch sizes, flash attention,
    repacking): prefill of n_prompt tokens from an empty context, and decode of n_gen tokens after n_prompt (as ours
    decodes after the image prompt); decode from an empty context too, for reference."""
    exe = tools / "llama-bench"
    if not exe.exists():
        return None
    common = [str(exe), "-m", str(text), "-t", str(threads), "-r", str(repeats), *llama_bench_settings(text),
              "-o", "json"]
    out = {}
    for extra in (["-p", str(n_prompt), "-n", "0"], ["-p", "0", "-n", str(n_gen), "-d", f"0,{n_prompt}"]):
        p = subprocess.run(common + extra, capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
        for r in json.loads(p.stdout):
            if r.get("n_prompt"):
                out["prefill_tok_s"] = r.get("avg_ts")
            elif r.get("n_depth"):
                out["decode_tok_s"] = r.get("avg_ts")
                out["decode_depth"] = r.get("n_depth")
            else:
                out["decode_tok_s_depth0"] = r.get("avg_ts")
    return out


def native_mtmd(tools: Path, text: Path, mmproj: Path, image: Path, question: str, threads: int,
                n_gen: int) -> dict | None:
    """llama.cpp's own llama-mtmd-cli answering one question in a fresh process (load, encode, prefill, n_gen
    tokens): its wall time and peak RSS."""
    from ..settings import DEFAULT

    exe = tools / "llama-mtmd-cli"
    if not exe.exists():
        return None
    rc, peak, secs = _peak_of([str(exe), "-m", str(text), "--mmproj", str(mmproj), "--image", str(image), "-p",
                               question, "-n", str(n_gen), "--temp", "0", "-t", str(threads), "-c", "2048",
                               "--no-warmup", "--ignore-eos", "--jinja",
                               "-ngl", str(DEFAULT.for_machine().n_gpu_layers)])
    return {"process_s": secs, "peak_rss_mb": peak} if rc == 0 else {"error": f"llama-mtmd-cli exit code {rc}"}


def run(work: Path, *, repeats: int = 3, threads: int | None = None, image: Path | None = None,
        with_torch: bool = True, tools: Path | None = None, variants=None,
        log: Callable[[str], None] = lambda s: None) -> dict:
    from ..runtime import default_threads
    from ..settings import DEFAULT, LOW_RAM

    work = writable_dir(work, "--work")
    threads = threads or default_threads()
    image = image or bench_image(work)
    models = build_models(work, log)
    paths = models.pop("_paths")
    res = {"machine": {"cpu": _cpu_name(), "threads": threads, "python": platform.python_version(),
                       "llama_cpp": _llama_info()},
           "settings": {"repeats": repeats, "tokens": 32, "n_ctx": 2048, "image": str(image)}, "models": models}
    res["variants"] = {}
    bws = []
    for name, tq, mq, extra in variants or VARIANTS:
        log(f"measuring {name} ({repeats} fresh processes, the memory bandwidth before each)")
        args = ["--text", str(paths[("text", tq)]), "--mmproj", str(paths[("mmproj", mq)]), "--image", str(image),
                "--threads", str(threads), *extra]
        runs, bw_runs = [], []
        for _ in range(repeats):  # the shared machine's bandwidth drifts: each variant's roofline from its own minutes
            bw_runs.append(memory_bandwidth_gbs(threads))
            runs.append(_child(args))
        bws += bw_runs
        bw = statistics.median(bw_runs)
        m = _median(runs)
        if "error" not in m:
            ctx = int(m["prefill_tokens"] + m["generated"] / 2)
            kv = (LOW_RAM if "--low-ram" in extra else DEFAULT).kv_type
            per_tok = decode_bytes(paths[("text", tq)], ctx, kv)
            m["read_bandwidth_gbs"] = round(bw, 1)
            m["decode_roofline_tok_s"] = round(bw * 1e9 / per_tok, 2)
            m["decode_vs_roofline"] = round(m["decode_tok_s"] / m["decode_roofline_tok_s"], 3)
            m["followup_ttft_vs_cold"] = round(m["followup_ttft_s"] / m["cold_s"], 4)
        res["variants"][name] = m
    res["decode_roofline_paired"] = {}
    for name, tq, mq, extra in variants or VARIANTS:
        if name in ("q4_k_m", "q4_k_m --low-ram"):
            log(f"decode of {name} against the roofline, {ROOFLINE_PAIRS} pairs in one process")
            res["decode_roofline_paired"][name] = _child(
                ["--text", str(paths[("text", tq)]), "--mmproj", str(paths[("mmproj", mq)]), "--image", str(image),
                 "--threads", str(threads), "--pairs", str(ROOFLINE_PAIRS), *extra], module="roofline")
    res["machine"]["read_bandwidth_gbs"] = round(statistics.median(bws), 1) if bws else None
    res["machine"]["read_bandwidth_range_gbs"] = [round(min(bws), 1), round(max(bws), 1)] if bws else None
    if with_torch:
        for dt in ("fp32", "bf16"):
            log(f"measuring the PyTorch reference, {dt}")
            args = ["--engine", "torch", "--checkpoint", str(work / "checkpoint"), "--dtype", dt, "--image",
                    str(image), "--threads", str(threads)]
            res["variants"][f"pytorch {dt}"] = _median([_child(args, timeout=3600) for _ in range(repeats)])
    tools = tools or Path(__file__).resolve().parents[2] / "build" / "native" / "bin"
    nb = {}
    for tq in TEXT_TYPES:
        n_prompt = int(res["variants"].get("f16", {}).get("prefill_tokens", 752))
        r = native_bench(tools, paths[("text", tq)], threads, n_prompt, 32, repeats)
        if r is not None:
            nb[tq] = r
    res["native_llama_bench"] = nb or None
    if (tools / "llama-server").exists() and ("text", "q4_k_m") in paths:
        from .versus_native import lockstep

        log("our Python path against llama-server, q4_k_m, turn about")
        res["python_vs_native"] = lockstep(tools / "llama-server", paths[("text", "q4_k_m")],
                                           paths[("mmproj", "q8_0")], image, threads, log=log)
    from .measure import QUESTION

    mt = [native_mtmd(tools, paths[("text", "q4_k_m")], paths[("mmproj", "q8_0")], image, QUESTION, threads, 32)
          for _ in range(repeats)]
    res["native_mtmd_cli_q4_k_m"] = _median(mt) if mt[0] is not None else None
    return res


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _llama_info() -> str:
    try:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # pragma: no cover - informational only
        return "?"
