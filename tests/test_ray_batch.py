"""Batch captioning on a local Ray cluster (2 CPUs, loopback): every image written exactly once with the answers of
the single-machine run (run_batch, greedy) although an actor is killed mid-run, resume adds nothing, fsspec URLs are
read by the actors, the Ray Data entry gives the same answers, the CLI joins a running cluster or says clearly that
none answers, and the single-machine caption never imports ray."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray on import: a cluster on 127.0.0.1 only
ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import synth  # noqa: E402

N_IMAGES = 36


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("raypics")
    rng = np.random.default_rng(30)
    for i in range(N_IMAGES):
        img, _ = synth.make_image(rng, synth.STYLES_ALL, size=(64, 160))
        img.save(d / f"img{i:02d}.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


@pytest.fixture(scope="module")
def expected(pictures, tmp_path_factory):
    """The single-machine run's records, by path: the independent computation every Ray run must match."""
    from moondream_cpp import Moondream
    from moondream_cpp.batch import collect_images, run_batch
    from moondream_cpp.gguf_models import demo_pair

    out = tmp_path_factory.mktemp("plain") / "plain.jsonl"
    with Moondream.load(*demo_pair(), n_threads=1) as md:
        run_batch(md, collect_images([pictures]), out)
    return {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace="tests", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:")
    yield address
    ray.shutdown()


def records(out: Path) -> list[dict]:
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""  # whole lines only
    return [json.loads(x) for x in lines[:-1]]


def our_actors() -> list[str]:
    from moondream_cpp.ray_batch import NAMESPACE

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE)


def test_an_actor_killed_mid_run_loses_and_repeats_nothing(cluster, pictures, expected, tmp_path):
    from moondream_cpp.gguf_models import demo_pair
    from moondream_cpp.ray_batch import NAMESPACE, RayOptions, run_ray_batch
    from moondream_cpp.ray_captioner import collect_sources

    gone = tmp_path / "gone.png"
    gone.write_bytes((pictures / "img00.png").read_bytes())
    urls = [f"file://{pictures}/img0[1-3].png", f"file://{gone}"]
    sources = collect_sources([str(pictures), *urls])
    gone.unlink()  # listed, then unreadable when its actor reads it: an error record, like a broken file
    assert len(sources) == N_IMAGES + 1 + 4
    out = tmp_path / "ray.jsonl"
    seen, killed = [], []

    def kill_one_at_the_tenth(rec):
        seen.append(rec["path"])
        if len(seen) == 10:
            names = our_actors()
            assert len(names) == 2  # named, findable
            killed.append(names[0])
            ray.kill(ray.get_actor(names[0], namespace=NAMESPACE))

    opts = RayOptions(actors=2, actor_cpus=1)
    rep = run_ray_batch(sources, out, *demo_pair(), options=opts, on_record=kill_one_at_the_tenth)
    assert killed and rep.written == len(sources) and rep.errors == 2

    recs = records(out)
    assert sorted(r["path"] for r in recs) == sorted(p for p, _ in sources)  # each exactly once
    for r in recs:
        if r["path"].startswith("file://"):
            if r["path"].endswith("gone.png"):
                assert "could not be read" in r["error"] and "FileNotFoundError" in r["error"]
                continue
            want = expected[r["path"].removeprefix("file://")]
        else:
            want = expected[r["path"]]
        assert {k: r.get(k) for k in ("question", "model", "answer", "finish_reason", "error")} == \
            {k: want.get(k) for k in ("question", "model", "answer", "finish_reason", "error")}, r["path"]
    assert sum("answer" in r for r in recs) == N_IMAGES + 3

    again = run_ray_batch(sources, out, *demo_pair(), options=opts)
    assert (again.written, again.skipped) == (0, len(sources)) and len(records(out)) == len(sources)


def test_the_cli_joins_a_running_cluster_and_resumes(cluster, pictures, expected, tmp_path):
    out = tmp_path / "cli.jsonl"
    few = [str(pictures / f"img{i:02d}.png") for i in range(4)]
    out.write_text(json.dumps(expected[few[0]]) + "\n")  # one already done
    r = subprocess.run([CLI, "caption", *few, "--out", str(out), "--ray", cluster, "--actors", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 new records (0 unreadable images), 1 already done, 4 images" in r.stderr
    got = records(out)
    assert [x["path"] for x in got[1:]] != [] and sorted(x["path"] for x in got) == sorted(few)
    assert all(x["answer"] == expected[x["path"]]["answer"] for x in got)


def test_the_cli_says_clearly_when_no_cluster_answers(pictures, tmp_path):
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    img = str(pictures / "img00.png")
    r = subprocess.run([CLI, "caption", img, "--out", str(tmp_path / "x.jsonl"), "--ray", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"no Ray cluster answers at 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([CLI, "caption", img, "--ray"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "give --out FILE" in r.stderr and "Traceback" not in r.stderr


def test_the_ray_data_entry_gives_the_same_answers(cluster, pictures, expected):
    from moondream_cpp.gguf_models import demo_pair
    from moondream_cpp.ray_captioner import Captioner

    files = [str(pictures / f"img{i:02d}.png") for i in range(4, 10)] + [str(pictures / "broken.png")]
    text, mmproj = map(str, demo_pair())
    ds = ray.data.read_binary_files(files, include_paths=True)
    # one actor: the other CPU reads the files (an actor on every CPU would leave none for the reads)
    rows = ds.map_batches(Captioner, concurrency=1, num_cpus=1, batch_size=2,
                          fn_constructor_kwargs={"text": text, "mmproj": mmproj, "n_threads": 1}).take_all()
    assert sorted(r["path"] for r in rows) == sorted(files)
    for r in rows:
        want = expected[r["path"]]
        if "error" in want:
            assert r["answer"] is None and r["path"] in r["error"] and "not a readable image" in r["error"]
        else:
            assert (r["answer"], r["finish_reason"], r["error"]) == (want["answer"], want["finish_reason"], None)


def test_the_single_machine_caption_never_imports_ray(pictures, tmp_path):
    out = tmp_path / "plain.jsonl"
    code = ("import sys\nfrom moondream_cpp.cli.main import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    r = subprocess.run([sys.executable, "-c", code, "caption", str(pictures / "img00.png"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
    assert len(records(out)) == 1 and "answer" in records(out)[0]


def test_an_image_that_killed_an_earlier_run_twice_becomes_an_error_record(cluster, pictures, expected, tmp_path):
    from moondream_cpp.gguf_models import demo_pair
    from moondream_cpp.ray_batch import RayOptions, run_ray_batch
    from moondream_cpp.ray_captioner import collect_sources
    from moondream_cpp.records import RecordsFile

    sources = collect_sources([str(pictures / f"img{i:02d}.png") for i in range(3)])
    out = tmp_path / "r.jsonl"
    with RecordsFile(out) as rec:
        rec.starting(sources[0][0], attempt=2)  # what run_batch leaves when it died twice on that image
    opts = RayOptions(actors=1)
    rep = run_ray_batch(sources, out, *demo_pair(), options=opts)
    died = [r for r in records(out) if r["path"] == sources[0][0]]
    assert len(died) == 1 and "died twice" in died[0]["error"] and (rep.written, rep.errors) == (3, 1)
    assert not Path(f"{out}.current").exists()
    again = run_ray_batch(sources, out, *demo_pair(), options=opts, retry_errors=True)  # on request, tried again
    assert again.written == 1 and records(out)[-1]["answer"] == expected[sources[0][0]]["answer"]


def test_a_model_that_does_not_load_on_the_actors_is_one_clear_message(cluster, pictures, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really a model")
    r = subprocess.run([CLI, "caption", str(pictures / "img00.png"), "--out", str(tmp_path / "x.jsonl"), "--ray",
                        cluster, "--text", str(bad), "--mmproj", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "the model did not load on Ray node" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr
