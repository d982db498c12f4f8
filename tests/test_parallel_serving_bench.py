"""benchmarks/parallel_serving.py: a real smoke run (--quick --ours-only) against `moondream-cpp serve` on the bundled
2024 demo, its JSON's shape and numbers; and the config numbers of benchmarks/harness/serving.py against timestamps
worked out by hand."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.serving import summarize  # noqa: E402
from gguf_models import demo_pair  # noqa: E402


def test_quick_run_against_our_server(tmp_path):
    text, mmproj = demo_pair("moondream-demo-2024")
    out = tmp_path / "parallel_serving.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parallel_serving.py"), "--quick", "--ours-only",
                        "--text", str(text), "--mmproj", str(mmproj), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(out.read_text())
    assert json.loads(p.stdout[:p.stdout.rindex("}") + 1])["targets"] == got["targets"]  # printed, then written
    assert got["max_tokens"] == 8 and got["text"] == text.name
    assert [(r["server"], r["clients"]) for r in got["rows"]] == [("ours", 1), ("ours", 2)]
    prompts = set()
    for row in got["rows"]:
        assert len(row["per_client"]) == row["clients"]
        for key in ("aggregate_decode_tok_s", "total_tok_per_wall_s", "wall_s", "ttft_p50_s", "ttft_p95_s"):
            assert row[key] > 0, key
        assert row["ttft_p50_s"] <= row["ttft_p95_s"] <= row["wall_s"]
        rates = []
        for c in row["per_client"]:
            # greedy answers of the requested length, or stopped by the model
            assert c["completion_tokens"] == 8 or c["finish_reason"] == "stop"
            assert 0 < c["ttft_s"] <= row["wall_s"] and c["decode_s"] > 0
            rates.append((c["completion_tokens"] - 1) / c["decode_s"])
            prompts.add(c["prompt_tokens"])
        # the aggregate is the sum of the clients' rates (rounded fields: a loose tolerance)
        assert sum(rates) == pytest.approx(row["aggregate_decode_tok_s"], rel=0.05)
        assert row["total_tok_per_wall_s"] == pytest.approx(
            sum(c["completion_tokens"] for c in row["per_client"]) / row["wall_s"], rel=0.01)
    # the same question about same-sized pictures: one prompt length, the image's positions included
    assert len(prompts) == 1 and prompts.pop() > 20
    assert set(got["ratios"]) == {"1", "2"} and got["ratios"]["1"]["aggregate_decode_tok_s_over_ours_1"] == 1.0


def _record(sent, stamps, tokens):
    return {"sent": sent, "stamps": stamps, "usage": {"completion_tokens": tokens, "prompt_tokens": 10},
            "timings": {}, "finish_reason": "length"}


def test_config_numbers_from_timestamps():
    # client a: first text at 1.0, then one chunk a second to 4.0 (4 tokens); client b: first at 2.0, to 3.0 (3
    # tokens, two chunks: a chunk carried two tokens)
    a = _record(0.0, [1.0, 2.0, 3.0, 4.0], 4)
    b = _record(0.5, [2.0, 3.0], 3)
    s = summarize([a, b], 0.0, 5.0)
    assert [c["ttft_s"] for c in s["per_client"]] == [1.0, 1.5]
    assert [c["decode_tok_s"] for c in s["per_client"]] == [1.0, 2.0]  # (4-1)/3, (3-1)/1
    assert s["aggregate_decode_tok_s"] == 3.0
    assert s["total_tok_per_wall_s"] == 7 / 5
    assert s["ttft_p50_s"] == 1.25 and s["ttft_p95_s"] == pytest.approx(1.475)
    # both decoding from 2.0 to 3.0: a's chunk at 3.0 and b's at 3.0 fall in the window
    assert s["steady_window_s"] == 1.0 and s["steady_decode_tok_s"] == 2.0
    assert s["chunks_equal_tokens"] is False
    assert [c["longest_pause_s"] for c in s["per_client"]] == [1.0, 1.0] and s["longest_pause_s"] == 1.0
    paused = _record(0.0, [1.0, 1.5, 4.5, 5.0], 4)  # a wait of 3 s mid-answer
    assert summarize([a, paused], 0.0, 5.0)["longest_pause_s"] == 3.0
    # one client that never overlaps another: no steady window
    c = _record(0.0, [5.0, 6.0], 2)
    assert "steady_decode_tok_s" not in summarize([a, c], 0.0, 6.0)
    # a client whose stream carried no text: the server's own rate, no time to first token, left out of the window
    mute = {**_record(0.0, [], 5), "timings": {"predicted_per_second": 4.0}}
    s = summarize([a, b, mute], 0.0, 5.0)
    assert s["clients_without_text"] == 1 and s["per_client"][2]["ttft_s"] is None
    assert s["aggregate_decode_tok_s"] == 7.0 and s["ttft_p50_s"] == 1.25 and s["steady_decode_tok_s"] == 2.0


BATCHED = ROOT / "build" / "native" / "bin" / "llama-batched-bench"


@pytest.mark.skipif(not BATCHED.exists(), reason="needs the native tools (bash scripts/build_native.sh)")
def test_native_batched_decode_ceiling_is_read_from_llama_batched_bench():
    from benchmarks.parallel_serving import native_batched

    text, _ = demo_pair("moondream-demo-2024")
    got = native_batched(BATCHED, text, 2, 512, counts=[1, 2, 4], depth=50, n_gen=16)
    assert got["returncode"] == 0 and [r["B"] for r in got["rows"]] == [1, 2, 4]
    for r in got["rows"]:
        assert (r["prompt"], r["generated"]) == (50, 16)
        # S_TG is B sequences' tokens over T_TG (which the tool prints to the millisecond)
        assert r["t_tg_s"] == pytest.approx(r["B"] * 16 / r["s_tg_tok_s"], abs=0.0006)
    assert got["s_tg_over_b1"]["1"] == 1.0
    assert got["s_tg_over_b1"]["4"] == pytest.approx(got["rows"][2]["s_tg_tok_s"] / got["rows"][0]["s_tg_tok_s"],
                                                    abs=1e-3)
