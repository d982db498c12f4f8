"""The benchmark's outputs: JSON, a PNG chart and a markdown table with the targets stated as met or not."""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [("load_s", "load s"), ("encode_ms", "encode ms"), ("prefill_tok_s", "prefill tok/s"),
           ("decode_tok_s", "decode tok/s"), ("decode_roofline_tok_s", "roofline tok/s"),
           ("cold_s", "cold answer s"), ("cold_ttft_s", "cold TTFT s"),
           ("another_first_token_s", "same image, new question: first token s"),
           ("another_ttft_s", "... first text s"), ("followup_first_token_s", "chat follow-up: first token s"),
           ("peak_rss_mb", "peak RSS MB")]


def _with_ci(s: dict) -> str:
    """A median ratio and its 95% confidence interval (stats.summary), as the tables show them."""
    lo, hi = s["ci"]
    if lo is None:
        return f"{s['median']:.3f}x (too few runs for a 95% interval)"
    return f"{s['median']:.3f}x (95% CI {lo:.3f}-{hi:.3f})"


def _shown(s: dict, bar: float) -> bool:
    """Met only when the whole confidence interval clears the bar, not just the median."""
    return s["ci"][0] is not None and s["ci"][0] >= bar


def targets(res: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the targets of issue 5, from ratios measured in this run."""
    v = res["variants"]
    q4, low = v.get("q4_k_m", {}), v.get("q4_k_m --low-ram", {})
    out = []
    paired = (res.get("decode_roofline_paired") or {}).get("q4_k_m") or {}
    if "decode_vs_roofline" in paired:
        s = paired["decode_vs_roofline"]
        out.append((f"decode >= 0.8x the memory roofline at q4_k_m (median of {s['n']} decodes of "
                    f"{paired['tokens']} tokens, each between two reads of the memory as long as itself, and its "
                    "95% CI; met when the whole interval is >= 0.8)",
                    f"{_with_ci(s)}: {paired['decode_tok_s_median']:.1f} tok/s against {paired['read_gbs_median']}"
                    " GB/s", _shown(s, 0.8)))
    elif "decode_vs_roofline" in q4:
        out.append(("decode >= 0.8x the memory roofline at q4_k_m", f"{q4['decode_vs_roofline']:.2f}x",
                    q4["decode_vs_roofline"] >= 0.8))
    pv = res.get("python_vs_native")
    nb = (res.get("native_llama_bench") or {}).get("q4_k_m")
    if pv:
        d, p = pv["decode_ratio"], pv["prefill_ratio"]
        how = (f"{d['n']} turns about with llama-server, {p['n']} of them with a fresh prefill"
               if pv["native"] == "llama-server" else
               f"{d['n']} interleaved llama-bench rounds, each the fastest of {pv.get('reps_per_round', 1)} runs a "
               "side")
        out.append((f"our Python path within 3% of native {pv['native']} (q4_k_m; the median ratio of {how}, and "
                    "its 95% CI: met when the whole interval is >= 0.97; our time outside llama.cpp per decoded "
                    "token)",
                    f"decode {_with_ci(d)}, prefill {_with_ci(p)}; Python "
                    f"{100 * pv['python_share_of_decode_median']:.2f}% of decode", _shown(d, 0.97) and _shown(p, 0.97)))
    elif nb and "decode_tok_s" in q4 and nb.get("decode_tok_s"):
        r_dec = q4["decode_tok_s"] / nb["decode_tok_s"]
        r_pre = q4["prefill_tok_s"] / nb["prefill_tok_s"] if nb.get("prefill_tok_s") else None
        shown = f"decode {r_dec:.3f}x" + (f", prefill {r_pre:.3f}x" if r_pre else "")
        out.append(("our Python path within 3% of native llama-bench (q4_k_m; one shot each in this run, measured "
                    "minutes apart)", shown, r_dec >= 0.97 and (r_pre is None or r_pre >= 0.97)))
    peers = {k: r["cold_s"] for k, r in v.items() if k.startswith("pytorch") and "cold_s" in r}
    ours = {k: r["cold_s"] for k, r in v.items() if not k.startswith("pytorch") and "cold_s" in r}
    if ours and peers:
        best, mine = min(peers, key=peers.get), min(ours, key=ours.get)
        out.append(("cold first answer faster than every CPU peer",
                    f"{mine} {ours[mine]:.1f} s vs {best} {peers[best]:.1f} s", ours[mine] < peers[best]))
    if "another_first_token_s" in q4:
        r, t = q4["another_first_token_s"] / q4["cold_s"], q4["another_ttft_s"] / q4["cold_s"]
        out.append(("follow-up answer <= 5% of the cold answer (time to first token of another question about the "
                    "same image; to its first text in brackets)",
                    f"{100 * r:.1f}% ({q4['another_first_token_s']:.2f} s of {q4['cold_s']:.1f} s; first text "
                    f"{100 * t:.1f}%)", r <= 0.05))
    if "followup_first_token_s" in q4:
        r = q4["followup_first_token_s"] / q4["cold_s"]
        out.append(("the same with chat history (random weights: the answer's text does not re-tokenize to the "
                    f"generated ids, so its {q4.get('followup_evaluated', 0):.0f} tokens are evaluated again)",
                    f"{100 * r:.1f}%", r <= 0.05))
    if "peak_rss_mb" in q4:
        out.append(("peak RSS <= 1.5 GB, q4_k_m + q8_0 mmproj, n_ctx 2048", f"{q4['peak_rss_mb']:.0f} MB",
                    q4["peak_rss_mb"] <= 1500))
    if "peak_rss_mb" in low:
        out.append(("--low-ram peak RSS <= 1.2 GB", f"{low['peak_rss_mb']:.0f} MB", low["peak_rss_mb"] <= 1200))
    conv = res.get("models", {}).get("convert_f16")
    if conv:
        out.append(("full-size conversion to f16 with peak RSS <= 1 GB", f"{conv['peak_rss_mb']:.0f} MB",
                    conv["peak_rss_mb"] <= 1000))
    return out


def markdown(res: dict, command: str) -> str:
    m = res["machine"]
    rng = m.get("read_bandwidth_range_gbs")
    bw = f"{m['read_bandwidth_gbs']} GB/s" + (f" (median; {rng[0]}-{rng[1]} before the runs, each variant's "
                                              "roofline from its own)" if rng else "")
    lines = [f"Measured by `{command}` on {m['cpu']}, {m['threads']} threads, read bandwidth "
             f"{bw}; random full-size moondream1 weights; median of "
             f"{res['settings']['repeats']} fresh processes; {res['settings']['tokens']} generated tokens.", "",
             "| variant | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in res["variants"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = [("-" if r.get(k) is None else f"{r[k]:.2f}" if r[k] < 100 else f"{r[k]:.0f}") for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    nb = res.get("native_llama_bench")
    if nb:
        lines += ["", "Native llama-bench (same GGUF and settings: threads, batch sizes, flash attention, repacking):",
                  "",
                  "| text type | prefill tok/s | decode tok/s after the prompt | decode tok/s, empty context |",
                  "|---|---|---|---|"]

        def num(x):
            return "-" if x is None else f"{x:.2f}"

        for q, r in nb.items():
            lines.append(f"| {q} | {num(r.get('prefill_tok_s'))} | {num(r.get('decode_tok_s'))} "
                         f"(depth {r.get('decode_depth', '-')}) | {num(r.get('decode_tok_s_depth0'))} |")
    paired = res.get("decode_roofline_paired")
    if paired:
        lines += ["", "Decode against the roofline in pairs (`python -m moondream_cpp.bench.roofline`, one process: "
                  "each decode between two reads of the memory lasting about as long as itself):", "",
                  "| variant | pairs | decode tok/s | read GB/s (range) | roofline tok/s | decode / roofline (95% CI) "
                  "| fastest decode / fastest read |", "|---|---|---|---|---|---|---|"]
        for name, r in paired.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error']} | | | | | |")
                continue
            lo, hi = r["read_gbs_range"]
            lines.append(f"| {name} | {r['pairs']} | {r['decode_tok_s_median']:.2f} | {r['read_gbs_median']} "
                         f"({lo}-{hi}) | {r['roofline_tok_s_median']:.2f} | {_with_ci(r['decode_vs_roofline'])} | "
                         f"{r['best_decode_vs_best_read']:.3f}x |")
    mt = res.get("native_mtmd_cli_q4_k_m")
    if mt and "error" not in mt:
        lines += ["", "Native llama-mtmd-cli, q4_k_m + q8_0 mmproj, one question in a fresh process: "
                  f"{mt['process_s']:.1f} s (load + encode + prefill + 32 tokens), "
                  f"peak RSS {mt['peak_rss_mb']:.0f} MB."]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t, got, ok in targets(res):
        lines.append(f"| {t} | {got} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def chart(res: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n, r in res["variants"].items() if "error" not in r]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (key, title) in zip(axes, [("cold_s", "cold first answer (s)"), ("decode_tok_s", "decode tok/s"),
                                       ("prefill_tok_s", "prefill tok/s"), ("peak_rss_mb", "peak RSS (MB)")]):
        vals = [res["variants"][n].get(key) or 0 for n in names]
        ax.barh(names, vals, color=["#888" if n.startswith("pytorch") else "#2a7" for n in names])
        ax.set_title(title)
        ax.invert_yaxis()
        if key == "decode_tok_s":
            for i, n in enumerate(names):
                roof = res["variants"][n].get("decode_roofline_tok_s")
                if roof:
                    ax.plot([roof, roof], [i - 0.4, i + 0.4], "k--", lw=1)
    fig.suptitle(f"moondream on {res['machine']['cpu']} ({res['machine']['threads']} threads); dashed: roofline")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def write(res: dict, results_dir: Path, docs: Path | None, command: str) -> dict:
    results_dir.mkdir(parents=True, exist_ok=True)
    res = {**res, "command": command, "targets": [{"target": t, "measured": g, "met": ok}
                                                   for t, g, ok in targets(res)]}
    (results_dir / "bench.json").write_text(json.dumps(res, indent=1) + "\n")
    chart(res, results_dir / "bench.png")
    if docs is not None:
        text = docs.read_text() if docs.exists() else ""
        table = markdown(res, command)
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            text = text[: text.index(start) + len(start)] + "\n" + table + text[text.index(end):]
        else:
            text += f"\n{start}\n{table}{end}\n"
        docs.write_text(text)
    return res
