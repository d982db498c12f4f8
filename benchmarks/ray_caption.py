"""Batch captioning on Ray (moondream_cpp/ray_batch.py) on this machine: images/s with 1 and 2 actors of 1 CPU and 1
actor of 2 CPUs, against the single-machine run_batch at 1 and 2 threads, and each actor's peak RSS. One local Ray
cluster (loopback, the machine's CPUs) serves every Ray row. Prints JSON and writes
benchmarks/results/<machine>/ray_caption.json (docs/ray.md reads it).

    python benchmarks/ray_caption.py [--n 240] [--full-n 12] [--full-dir /work/bench-work/gguf] [--no-full]

Rates: `steady` counts the images after each actor's first (model load and warm-up excluded), `wall` the whole run
from the call to the last record (Ray actors starting and loading the model included). The full-size rows use
moondream-cpp bench's random-weight q4_k_m text + f16 mmproj, whose answers never stop: --max-tokens 32 bounds them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's single-machine mode: loopback only
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402
from training import synth  # noqa: E402

FULL_MAX_TOKENS = 32


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(2030)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, _ = synth.make_image(rng, synth.STYLES_ALL)
        img.save(folder / f"{i:04d}.png")
    return sorted(folder.glob("*.png"))


def actor_pids() -> list[str]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"ray::ActorBody" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


class ActorMemory:
    """Samples the memory of every Ray actor process of ours (process title ray::ActorBody) until stopped: the peak
    RSS of each, and the peak of their PSS summed (pages of the mapped GGUF files that actors share count once)."""

    def __init__(self):
        self.peak_mb: dict[int, float] = {}
        self.peak_pss_sum_mb = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        # smaps_rollup walks a process's page tables (25 ms for a full-size actor): read every 2 s, not to slow it
        while not self.stop.wait(2.0):
            pss_sum = 0.0
            for pid in actor_pids():
                try:
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                except OSError:
                    continue
                kb = {x.split(":")[0]: int(x.split()[1]) for x in rollup[1:] if x.endswith("kB")}
                self.peak_mb[int(pid)] = max(self.peak_mb.get(int(pid), 0), kb.get("Rss", 0) / 1024)
                pss_sum += kb.get("Pss", 0) / 1024
            self.peak_pss_sum_mb = max(self.peak_pss_sum_mb, pss_sum)

    def done(self) -> dict:
        self.stop.set()
        self.thread.join()
        return {"actor_peak_rss_mb": sorted(round(v) for v in self.peak_mb.values()),
                "actors_peak_pss_sum_mb": round(self.peak_pss_sum_mb)}


def rates(n: int, t0: float, stamps: list[float], warm: int) -> dict:
    steady = (len(stamps) - warm) / (stamps[-1] - stamps[warm - 1]) if len(stamps) > warm else None
    return {"images": n, "wall_s": round(stamps[-1] - t0, 2), "wall_images_per_s": round(n / (stamps[-1] - t0), 3),
            "steady_images_per_s": round(steady, 3) if steady else None}


def ray_row(images, pair, actors: int, cpus: int, max_tokens, tmp: Path) -> dict:
    from moondream_cpp.ray_batch import RayOptions, run_ray_batch
    from moondream_cpp.ray_captioner import collect_sources

    out = tmp / f"ray-{actors}x{cpus}.jsonl"
    stamps = []
    for _ in range(100):  # the actors of the row before are killed asynchronously: gone before this row counts
        if not actor_pids():
            break
        time.sleep(0.1)
    mem = ActorMemory()
    t0 = time.perf_counter()
    rep = run_ray_batch(collect_sources(map(str, images)), out, *pair, max_tokens=max_tokens,
                        options=RayOptions(actors=actors, actor_cpus=cpus),
                        on_record=lambda r: stamps.append(time.perf_counter()))
    peaks = mem.done()
    assert rep.written == len(images) and rep.errors == 0, rep
    return {"engine": "ray", "actors": actors, "cpus_per_actor": cpus, **rates(len(images), t0, stamps, actors),
            **peaks, "answers": answers(out)}


def plain_row(images, pair, threads: int, max_tokens, tmp: Path) -> dict:
    from moondream_cpp import Moondream
    from moondream_cpp.batch import run_batch

    out = tmp / f"plain-{threads}.jsonl"
    stamps = []
    t0 = time.perf_counter()
    with Moondream.load(*pair, n_threads=threads) as md:
        run_batch(md, images, out, max_tokens=max_tokens, on_record=lambda r: stamps.append(time.perf_counter()))
    return {"engine": "run_batch", "threads": threads, **rates(len(images), t0, stamps, 1), "answers": answers(out)}


def answers(out: Path) -> dict:
    return {r["path"]: r["answer"] for r in map(json.loads, out.read_text().splitlines())}


def with_load(row) -> dict:
    """A row with the machine's 1-minute load average after it (other work running beside it shows here)."""
    return {**row, "load_1min_after": round(os.getloadavg()[0], 2)}


def measure(name: str, images, pair, max_tokens, tmp: Path) -> dict:
    rows = [with_load(plain_row(images, pair, t, max_tokens, tmp)) for t in (1, 2)]
    rows += [with_load(ray_row(images, pair, a, c, max_tokens, tmp)) for a, c in ((1, 1), (2, 1), (1, 2))]
    # greedy answers do not depend on the engine or the actor that ran them, only on the threads of one model (the
    # order of its sums: random weights have near-ties): each row against run_batch on as many threads
    threads = {r.get("threads") or r["cpus_per_actor"]: r["answers"] for r in rows if r["engine"] == "run_batch"}
    for r in rows:
        r["same_answers_as_run_batch_same_threads"] = r["answers"] == threads[r.get("threads") or r["cpus_per_actor"]]
    for r in rows:
        r.pop("answers")
    by = {(r["engine"], r.get("actors"), r.get("cpus_per_actor"), r.get("threads")): r for r in rows}
    one, two = by[("ray", 1, 1, None)], by[("ray", 2, 1, None)]
    return {"model": name, "max_tokens": max_tokens, "rows": rows,
            "speedup_2_actors_over_1": round(two["steady_images_per_s"] / one["steady_images_per_s"], 2),
            "ray_1_actor_vs_run_batch_1_thread": round(
                one["steady_images_per_s"] / by[("run_batch", None, None, 1)]["steady_images_per_s"], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="images for the demo model")
    ap.add_argument("--full-n", type=int, default=12, help="images for the full-size model")
    ap.add_argument("--full-dir", default="/work/bench-work/gguf")
    ap.add_argument("--no-full", action="store_true")
    a = ap.parse_args()
    import ray

    from moondream_cpp.gguf_models import demo_pair

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results = {"command": "python " + " ".join(["benchmarks/ray_caption.py", *sys.argv[1:]]),
               "cpus": os.cpu_count(), "ray": ray.__version__, "models": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            images = make_images(tmp / "img", max(a.n, a.full_n))
            results["models"].append(measure("moondream-demo", images[:a.n], demo_pair(), None, tmp / "demo"))
            print(json.dumps(results["models"][-1], indent=1), flush=True)
            full = Path(a.full_dir)
            pair = (full / "moondream-bench-text-q4_k_m.gguf", full / "moondream-bench-mmproj-f16.gguf")
            if not a.no_full and pair[0].exists():
                results["models"].append(measure("full-size random q4_k_m + f16 mmproj", images[:a.full_n], pair,
                                                 FULL_MAX_TOKENS, tmp / "full"))
    finally:
        ray.shutdown()
    print(json.dumps(results, indent=1))
    write_json(benchmark_result("ray_caption"), results)


if __name__ == "__main__":
    main()
