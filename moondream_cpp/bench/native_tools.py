"""llama.cpp's own programs on the same GGUF files and settings as ours: llama-bench (prefill, and decode at the
image prompt's depth) and llama-mtmd-cli (one question in a fresh process). scripts/build_native.sh builds them from
our llama.cpp tree into the checkout's build/native/bin; where they are missing, their rows are left out."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .processes import peak_of

REPO_TOOLS = Path(__file__).resolve().parents[2] / "build" / "native" / "bin"


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
    rc, peak, secs = peak_of([str(exe), "-m", str(text), "--mmproj", str(mmproj), "--image", str(image), "-p",
                              question, "-n", str(n_gen), "--temp", "0", "-t", str(threads), "-c", "2048",
                              "--no-warmup", "--ignore-eos", "--jinja",
                              "-ngl", str(DEFAULT.for_machine().n_gpu_layers)])
    return {"process_s": secs, "peak_rss_mb": peak} if rc == 0 else {"error": f"llama-mtmd-cli exit code {rc}"}
