"""The benchmark's parts that run fast: the full-size layout (checked against the spec's parameter count), one
measurement process on the demo model (the 2024 demo: the bench's 2024 measurements, an f16 text file, its own small
vocabulary), the report's targets and table, and where `moondream-cpp bench` writes."""
import json
import subprocess
import sys
from pathlib import Path

from moondream_cpp.bench import fullsize
from moondream_cpp.bench.report import markdown, targets
from moondream_cpp.gguf_models import DEMO_2024, demo_pair

ROOT = Path(__file__).resolve().parents[1]


def test_full_size_layout_is_moondream1():
    shapes = fullsize.tensor_shapes()
    assert len(shapes) == 578 and fullsize.n_params() == 1_857_482_608  # docs/architecture.md §1.1 and §1.5
    assert shapes["vision_encoder.encoder.model.visual.blocks.26.mlp.fc1.weight"] == (4304, 1152)
    assert shapes["text_model.lm_head.linear.weight"] == (51200, 2048)
    tok = fullsize.byte_bpe_tokenizer()
    assert len(tok["model"]["vocab"]) == 50256 and tok["added_tokens"][0]["id"] == 50256


def test_one_measurement_process():
    text, mmproj = demo_pair(DEMO_2024)
    r = subprocess.run([sys.executable, "-m", "moondream_cpp.bench.measure", "--text", str(text), "--mmproj",
                        str(mmproj), "--image", str(ROOT / "examples" / "shapes.png"), "--tokens", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["prefill_tokens"] > 64 and m["decode_tok_s"] > 0 and m["peak_rss_mb"] > 10
    # a trained model's answer re-tokenizes to the ids it generated: the chat follow-up evaluates only its new turn
    # ("\n\nQuestion: What colour is it?\n\nAnswer:" in the demo's vocabulary), not the image or the past answer
    assert m["followup_evaluated"] <= 20
    assert m["another_evaluated"] <= 20  # another question about the same image: its own tokens only
    # the first token is sampled after the prompt is evaluated, before any text can be shown, and within the answer
    assert 0 < m["another_first_token_s"] <= m["another_ttft_s"] <= m["another_s"]
    assert 0 < m["followup_first_token_s"] <= m["followup_ttft_s"] <= m["followup_s"]


def test_targets_and_table():
    v = {"q4_k_m": {"decode_tok_s": 10.0, "decode_roofline_tok_s": 20.0, "decode_vs_roofline": 0.5,
                    "prefill_tok_s": 100.0, "cold_s": 8.0, "followup_ttft_s": 0.2, "another_ttft_s": 0.5,
                    "another_first_token_s": 0.3, "followup_first_token_s": 0.15, "followup_evaluated": 30,
                    "peak_rss_mb": 1400.0},
         "pytorch bf16": {"cold_s": 9.0}}
    res = {"machine": {"cpu": "x", "threads": 2, "read_bandwidth_gbs": 20}, "settings": {"repeats": 3, "tokens": 32},
           "variants": v, "native_llama_bench": {"q4_k_m": {"decode_tok_s": 10.2, "prefill_tok_s": 100.0}},
           "models": {"convert_f16": {"peak_rss_mb": 300.0}}}
    got = {t: ok for t, _, ok in targets(res)}
    assert got["decode >= 0.8x the memory roofline at q4_k_m"] is False
    assert got["cold first answer faster than every CPU peer"] is True
    assert [ok for t, ok in got.items() if t.startswith("our Python path within 3%")] == [True]  # 10.0 / 10.2
    assert [ok for t, ok in got.items() if t.startswith("follow-up answer")] == [True]  # 0.3 / 8.0 < 5%
    v["q4_k_m"]["another_first_token_s"] = 0.5  # 6.25%: the first token is what counts
    assert [ok for t, _, ok in targets(res) if t.startswith("follow-up answer")] == [False]
    assert got["full-size conversion to f16 with peak RSS <= 1 GB"] is True
    # paired runs, when the run has them, decide it instead of the one-shot numbers: met only when the whole 95%
    # confidence interval of the median ratio clears 0.97, whatever the median
    res["python_vs_native"] = {"native": "llama-server", "decode_ratio": {"median": 1.0, "ci": [0.96, 1.04], "n": 30},
                               "prefill_ratio": {"median": 1.01, "ci": [0.99, 1.02], "n": 30},
                               "python_share_of_decode_median": 0.004}
    row = [(m, ok) for t, m, ok in targets(res) if t.startswith("our Python path within 3%")]
    assert row == [("decode 1.000x (95% CI 0.960-1.040), prefill 1.010x (95% CI 0.990-1.020); Python 0.40% of "
                    "decode", False)]
    res["python_vs_native"]["decode_ratio"]["ci"] = [0.975, 1.03]
    assert [ok for t, _, ok in targets(res) if t.startswith("our Python path within 3%")] == [True]
    res["python_vs_native"]["decode_ratio"]["ci"] = [None, None]  # too few pairs for an interval: not shown
    assert [ok for t, _, ok in targets(res) if t.startswith("our Python path within 3%")] == [False]
    # llama-bench rounds say how each round compared its runs
    res["python_vs_native"].update(native="llama-bench", reps_per_round=3)
    name = [t for t, _, _ in targets(res) if t.startswith("our Python path within 3%")][0]
    assert "native llama-bench" in name and name.count("fastest of 3 runs") == 1
    # the paired roofline measurement decides the decode target the same way
    res["decode_roofline_paired"] = {"q4_k_m": {"decode_vs_roofline": {"median": 0.85, "ci": [0.79, 0.9], "n": 24},
                                                "tokens": 32, "decode_tok_s_median": 30.0, "read_gbs_median": 35.0,
                                                "read_gbs_range": [30.0, 40.0], "pairs": 24,
                                                "roofline_tok_s_median": 35.3, "best_decode_vs_best_read": 0.7}}
    roof = [(m, ok) for t, m, ok in targets(res) if t.startswith("decode >= 0.8x")]
    assert roof == [("0.850x (95% CI 0.790-0.900): 30.0 tok/s against 35.0 GB/s", False)]
    res["decode_roofline_paired"]["q4_k_m"]["decode_vs_roofline"]["ci"] = [0.81, 0.9]
    assert [ok for t, _, ok in targets(res) if t.startswith("decode >= 0.8x")] == [True]
    assert "| q4_k_m | 24 | 30.00 | 35.0 (30.0-40.0) | 35.30 | 0.850x (95% CI 0.810-0.900) | 0.700x |" in markdown(
        res, "moondream-cpp bench")
    assert "| q4_k_m |" in markdown(res, "moondream-cpp bench")


def test_peak_of_measures_the_command_not_the_benchmark_process():
    from moondream_cpp.bench.processes import peak_of

    big = bytearray(400 * 2**20)  # this process's peak rises by 400 MB (bytearray touches every page)
    rc, mb, _ = peak_of([sys.executable, "-c", "b = bytearray(100 * 2**20)"])
    assert rc == 0 and 100 <= mb < 200, mb
    assert peak_of([sys.executable, "-c", "raise SystemExit(3)"])[0] == 3
    del big


def test_decode_bytes_counts_the_kv_cache_at_its_type():
    from moondream_cpp.bench import decode_bytes
    from moondream_cpp.gguf_check import check_text

    text, _ = demo_pair(DEMO_2024)
    info = check_text(text)
    values = 2 * info.n_layer * info.n_embd * 700  # K and V values at 700 positions
    f16, q8 = decode_bytes(text, 700), decode_bytes(text, 700, "q8_0")
    assert f16 - decode_bytes(text, 0) == values * 2  # f16: 2 bytes a value
    assert abs((f16 - q8) - values * (2 - 34 / 32)) <= 1  # q8_0: 34 bytes a block of 32


def test_median_ci_is_the_binomial_order_statistics_interval():
    from moondream_cpp.bench.stats import median_ci, summary

    # the 95% interval for a median from n samples spans the k-th smallest to the k-th largest sample, k the largest
    # with P(Binomial(n, 1/2) <= k - 1) <= 2.5%, worked by hand: n=20: P(<= 5) = 0.0207, P(<= 6) = 0.0577 -> k=6;
    # n=10: P(<= 1) = 0.0107, P(<= 2) = 0.0547 -> 2; n=40: P(<= 13) = 0.0192, P(<= 14) = 0.0403 -> 14; n=6: 1/64 -> 1
    for n, k in ((6, 1), (10, 2), (20, 6), (40, 14)):
        xs = [float(i) for i in range(1, n + 1)][::-1]  # order must not matter
        med, lo, hi = median_ci(xs)
        assert (lo, hi) == (k, n + 1 - k), n
        assert med == (n + 1) / 2
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0])[1:] == (None, None)  # too few for 95%: no interval, not a fake one
    s = summary([0.9, 1.1, 1.0, 0.95, 1.05, 1.02, 0.98])
    assert s["median"] == 1.0 and s["n"] == 7 and s["range"] == [0.9, 1.1] and s["ci"] == [0.9, 1.1]


def test_paired_roofline_compares_each_decode_with_the_reads_around_it():
    import gguf
    import numpy as np

    from moondream_cpp import Moondream
    from moondream_cpp.bench.roofline import paired

    text, mmproj = demo_pair(DEMO_2024)
    with Moondream.load(text, mmproj, n_threads=2) as md:
        r = paired(md, ROOT / "examples" / "shapes.png", "Describe this image.", text, "f16", 2, pairs=6, tokens=8)
    assert len(r["decode_tok_s"]) == 6 and len(r["read_gbs"]) == 7 and r["decode_vs_roofline"]["n"] == 6
    # bytes a token reads, from gguf-py's own reader: every tensor but the embedding table, and f16 K and V at the
    # decode's mean depth (the prompt, then about half of the answer)
    reader = gguf.GGUFReader(text)
    weights = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
    n_embd = int(reader.fields["phi2.embedding_length"].parts[-1][0])
    n_layer = int(reader.fields["phi2.block_count"].parts[-1][0])
    depth = r["bytes_per_token"] - weights
    assert depth % (2 * n_layer * n_embd * 2) == 0 and r["depth"] <= depth // (4 * n_layer * n_embd) <= r["depth"] + 4
    ratios = [d * r["bytes_per_token"] / ((a + b) / 2 * 1e9)
              for d, a, b in zip(r["decode_tok_s"], r["read_gbs"], r["read_gbs"][1:])]
    assert abs(np.median(ratios) - r["decode_vs_roofline"]["median"]) < 0.01 * r["decode_vs_roofline"]["median"]


def _a_run() -> dict:
    """What moondream_cpp.bench.run returns, cut down to one variant (the report needs no more)."""
    v = {"decode_tok_s": 10.0, "decode_roofline_tok_s": 20.0, "decode_vs_roofline": 0.5, "prefill_tok_s": 100.0,
         "cold_s": 8.0, "peak_rss_mb": 1400.0}
    return {"machine": {"cpu": "x", "threads": 2, "read_bandwidth_gbs": 20}, "settings": {"repeats": 3, "tokens": 32},
            "variants": {"q4_k_m": v}, "models": {}}


def _bench_cli(monkeypatch, args: list[str]):
    """`moondream-cpp bench ARGS` in this process, its hour of measuring replaced by _a_run(); (exit code, output,
    the work folder it was given)."""
    from typer.testing import CliRunner

    import moondream_cpp.bench as b
    from moondream_cpp.cli.main import app

    given = []
    monkeypatch.setattr(b, "run", lambda work, **kw: given.append(work) or _a_run())
    r = CliRunner().invoke(app, ["bench", *args])
    return r.exit_code, r.output, given[0] if given else None


def test_bench_writes_under_the_store_folder_not_the_current_one(tmp_path, monkeypatch):
    home, here = tmp_path / "store", tmp_path / "cwd"
    here.mkdir()
    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(home))
    monkeypatch.chdir(here)
    code, out, work = _bench_cli(monkeypatch, [])
    assert code == 0, out
    assert work == home / "bench" / "work"
    results = home / "bench" / "results"
    assert json.loads((results / "bench.json").read_text())["variants"] == _a_run()["variants"]
    assert str(results / "bench.json") in out  # says where the results went
    assert list(here.iterdir()) == []  # no docs/, no benchmarks/ in the current folder


def test_bench_writes_a_markdown_table_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(tmp_path / "store"))
    doc = tmp_path / "perf.md"
    doc.write_text("# Speed\n\n<!-- bench:start -->\nold table\n<!-- bench:end -->\n\nafter\n")
    code, out, _ = _bench_cli(monkeypatch, ["--results", str(tmp_path / "res"), "--docs", str(doc)])
    assert code == 0, out
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Speed") and text.endswith("\n\nafter\n")
    assert "| q4_k_m | " in text.split("<!-- bench:start -->")[1].split("<!-- bench:end -->")[0]
    assert (tmp_path / "res" / "bench.json").is_file() and str(doc) in out


# ------------------------------------------------------------------------------------------- the 2025 model's bench

def test_full_size_2025_layout_is_upstreams():
    from moondream_cpp.bench import fullsize2025

    shapes = fullsize2025.tensor_shapes()
    # upstream's MoondreamConfig defaults, counted by hand: text 24 blocks of (LN + qkv + proj + fc1 + fc2) around the
    # embedding, post_ln and head; vision patch/pos embeddings, 27 blocks, post_ln and the 2304 -> 8192 -> 2048
    # projector; the region head's Fourier features, encoders and decoders
    text = 51200 * 2048 * 2 + 51200 + 2 * 2048 + 24 * (
        2 * 2048 + 6144 * 2048 + 6144 + 2048 * 2048 + 2048 + 8192 * 2048 + 8192 + 2048 * 8192 + 2048)
    vision = 1152 * 588 + 1152 + 729 * 1152 + 2 * 1152 + 27 * (
        4 * 1152 + 3456 * 1152 + 3456 + 1152 * 1152 + 1152 + 4304 * 1152 + 4304 + 1152 * 4304 + 1152) + (
        8192 * 2304 + 8192 + 2048 * 8192 + 2048)
    region = 128 + 2 * 256 + (2048 * 256 + 2048) + (2048 * 512 + 2048) + 2 * (8192 * 2048 + 8192) + (
        1024 * 8192 + 1024) + (2048 * 8192 + 2048)
    assert fullsize2025.n_params() == text + vision + region == 1_927_237_104
    assert len(shapes) == 592 and shapes["model.vision.blocks.26.mlp.fc1.weight"] == (4304, 1152)
    assert shapes["model.vision.proj_mlp.fc1.weight"] == (8192, 2304) and shapes["model.text.wte"] == (51200, 2048)


def test_bench_2025_on_a_scaled_checkpoint(tmp_path):
    """The whole 2025 bench on a scaled checkpoint: our default pair and PyTorch fp32, a one-tile answer picture and a
    2x2 sweep point, one fresh process each. Crop counts follow the tiling rule, both engines put the same prompt
    through the model, and a follow-up evaluates only its own question."""
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints2025 import DIMS_2025

    from moondream_cpp.bench import run2025
    from moondream_cpp.bench.models2025 import VARIANTS
    from moondream_cpp.bench.report2025 import START, markdown, write

    res = run2025.run(tmp_path / "work", repeats=1, sections={k: dict(v) for k, v in DIMS_2025.items()},
                      variants=VARIANTS[:1], torch_dtypes=("fp32",), answer_image=(378, 378),
                      sweep=[(378, 378, 12), (756, 756, 4)], tokens=4, threads=2)
    ours, torch = res["answers"]["q4_k_m + q8_0 mmproj"], res["answers"]["pytorch fp32"]
    for r in (ours, torch):
        assert r["runs"] == 1 and r["tiling"] == [1, 1] and r["generated"] == 4, r
        for k in ("load_s", "encode_ms", "vision_ms_per_crop", "prefill_s", "decode_tok_s", "cold_s",
                  "another_first_token_s", "another_s", "peak_rss_mb"):
            assert r[k] > 0, (k, r)
        assert r["cold_s"] >= r["cold_ttft_s"] >= r["encode_ms"] / 1000 and r["spread"]["cold_s"] == [r["cold_s"]] * 2
    # one tile: upstream (the reference) encodes the global and the local crop, the same pixels; we encode them once
    assert (ours["vision_passes"], torch["vision_passes"]) == (1, 2)
    # BOS + 729 image rows + "\n\nQuestion:" (4 ids) + the question + "\n\nAnswer:" (4 ids), tokenized by llama.cpp on
    # our side and by the tokenizers library on the reference's
    assert ours["prefill_tokens"] == torch["prefill_tokens"] > 730 + 8
    assert ours["another_evaluated"] < 20  # the image prefix is reused: only the new question is evaluated
    sweep = {r["image"]: r for r in res["encode_sweep"]["q4_k_m + q8_0 mmproj"]}
    assert sweep["756x756"]["tiling"] == [2, 2] and sweep["756x756"]["vision_passes"] == 5
    assert res["encode_sweep"]["pytorch fp32"][1]["vision_passes"] == 5
    assert sweep["378x378"]["encode_ms"] == ours["encode_ms"]  # the answers' own encode
    conv = res["models"]["convert"]
    assert set(conv) == {"q4_k_m+q8_0"} and conv["q4_k_m+q8_0"]["peak_rss_mb"] > 10
    doc = tmp_path / "perf.md"
    doc.write_text("# Speed\n")
    written = write(res, tmp_path / "res", doc, "moondream-cpp bench --family 2025")
    assert json.loads((tmp_path / "res" / "bench2025.json").read_text())["answers"] == written["answers"]
    assert doc.read_text().startswith("# Speed\n\n" + START) and "| pytorch fp32 |" in markdown(written, "x")


def test_targets_2025():
    from moondream_cpp.bench.report2025 import targets

    def side(cold, per_crop, load=1.0):
        return {"cold_s": cold, "load_s": load, "vision_passes": 13, "vision_ms_per_crop": per_crop,
                "another_first_token_s": 0.5, "another_s": 2.0}

    res = {"settings": {"answer_image": "1024x768"},
           "answers": {"q4_k_m + q8_0 mmproj": side(60.0, 4000.0), "q8_0 + f16 mmproj": side(70.0, 5000.0),
                       "pytorch fp32": side(90.0, 4500.0, 9.0), "pytorch bf16": side(65.0, 3500.0, 5.0)}}
    rows = targets(res)
    assert [t.split(" (")[0] for t, _, _ in rows] == ["cold first answer, 1024x768", "follow-up <= 5% of the cold "
                                                      "answer"] + ["vision tower per 378x378 crop no slower than "
                                                                   "PyTorch fp32's"] * 2
    assert rows[0][1:] == ("q4_k_m + q8_0 mmproj 60.0 s vs pytorch bf16 65.0 s (1.0 s vs 5.0 s)", True)  # the faster
    assert rows[1][2] is True  # 0.5 s of 60 s
    assert "(q8_0 mmproj;" in rows[2][0] and rows[2][1:] == ("4.00 s vs 4.50 s (0.89x)", True)
    assert "(f16 mmproj;" in rows[3][0] and rows[3][2] is False  # 5.0 s per crop
    res["answers"]["q4_k_m + q8_0 mmproj"]["another_first_token_s"] = 3.1  # 5.2%
    res["answers"]["pytorch bf16"]["cold_s"] = 59.0
    assert [ok for _, _, ok in targets(res)][:2] == [False, False]


def _a_2025_run() -> dict:
    """What moondream_cpp.bench.run2025.run returns, cut down to one side of each kind."""
    def side(cold, passes):
        return {"load_s": 1.0, "encode_ms": 50000.0, "tiling": [3, 4], "vision_passes": passes,
                "vision_ms_per_crop": 4000.0, "pool_ms": None, "projector_ms": 400.0, "prefill_tokens": 741,
                "prefill_s": 5.0, "decode_tok_s": 30.0, "cold_s": cold, "another_first_token_s": 0.3,
                "another_s": 1.4, "peak_rss_mb": 2000.0, "runs": 2, "spread": {"cold_s": [cold - 1, cold + 1]}}

    return {"machine": {"cpu": "x", "threads": 2, "load_average_start": [2.0, 2.0, 2.0],
                        "load_average_end": [2.1, 2.0, 2.0]},
            "started_utc": "2026-12-06 14:15:00", "duration_s": 1800.0,
            "settings": {"revision": "2025-04-14", "repeats": 2, "tokens": 32, "answer_image": "1024x768",
                         "full_size": True},
            "models": {}, "answers": {"q4_k_m + q8_0 mmproj": side(60.0, 13), "pytorch fp32": side(90.0, 13)},
            "encode_sweep": {"q4_k_m + q8_0 mmproj": [{"image": "1024x768", "max_crops": 12, **side(60.0, 13)}],
                             "pytorch fp32": [{"image": "1024x768", "max_crops": 12, **side(90.0, 13)}]}}


def test_bench_family_2025_writes_its_own_results_and_table(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from moondream_cpp.bench import run2025
    from moondream_cpp.cli.main import app

    home = tmp_path / "store"
    monkeypatch.setenv("MOONDREAM_CPP_HOME", str(home))
    given = []
    monkeypatch.setattr(run2025, "run", lambda work, **kw: given.append((work, kw)) or _a_2025_run())
    doc = tmp_path / "perf.md"
    doc.write_text("# Speed\n\n<!-- bench:start -->\n2024 table\n<!-- bench:end -->\n")
    r = CliRunner().invoke(app, ["bench", "--family", "2025", "--docs", str(doc)])
    assert r.exit_code == 0, r.output
    assert given[0][0] == home / "bench" / "work2025" and given[0][1]["repeats"] == 2  # 2 by default for 2025
    saved = json.loads((home / "bench" / "results" / "bench2025.json").read_text())
    assert saved["command"] == "moondream-cpp bench --family 2025" and saved["targets"][0]["met"] is True
    assert not (home / "bench" / "results" / "bench.json").exists()
    text = doc.read_text()
    assert "2024 table" in text  # the 2024 table stays; the 2025 one goes between its own markers
    assert "| q4_k_m + q8_0 mmproj | 1.00 | 50.0 (13) | 4.00 |" in text.split("<!-- bench2025:start -->")[1]
    bad = CliRunner().invoke(app, ["bench", "--family", "2026"])
    assert bad.exit_code != 0 and "choose 2024 or 2025" in str(bad.exception or bad.output)
