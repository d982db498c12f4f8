"""Batch captioning: directory walks and globs, unreadable images recorded and skipped, and a process killed with
SIGKILL at random points, again and again, that still ends with every image captioned exactly once and every line
valid JSON."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI
from moondream_cpp.batch import collect_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import synth  # noqa: E402


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    rng = np.random.default_rng(99)
    for i in range(60):
        img, _ = synth.make_image(rng, synth.STYLES_ALL)
        sub = d / f"part{i % 3}" / ("deep" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        img.save(sub / f"img{i:03d}.{'png' if i % 2 else 'jpg'}")
    (d / "part0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (d / "part1" / "notes.txt").write_text("not an image, not picked up")
    return d


def test_inputs_walk_directories_and_globs(pictures):
    everything = collect_images([pictures])
    assert len(everything) == 61 and all(p.suffix in (".png", ".jpg") for p in everything)
    assert collect_images([f"{pictures}/**/*.png"]) == [p for p in everything if p.suffix == ".png"]
    assert collect_images([pictures / "part1", pictures / "part1"]) == collect_images([pictures / "part1"])


def default_model_name() -> str:
    """general.name of the bundled default model's text GGUF, read with gguf-py (what every record must name)."""
    from gguf import GGUFReader

    from moondream_cpp.gguf_models import demo_pair

    return GGUFReader(demo_pair()[0]).fields["general.name"].contents()


def records(out: Path):
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a complete line
    return [json.loads(x) for x in lines[:-1]]


def test_killed_again_and_again_every_image_once(pictures, tmp_path):
    out = tmp_path / "captions.jsonl"
    cmd = [CLI, "caption", str(pictures), "--out", str(out)]
    rnd = random.Random(5)
    kills = 0
    for attempt in range(6):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        have = out.read_bytes().count(b"\n") if out.exists() else 0
        target = have + rnd.randint(1, 12)  # a random point: after a few more records, or mid-load
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            n = out.read_bytes().count(b"\n") if out.exists() else 0
            if n >= target or rnd.random() < 0.01:
                break
            time.sleep(rnd.uniform(0.0, 0.05))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
        if out.exists():
            with open(out, "ab") as f:  # as if the kill had torn a record in half: resume must cut it away
                if attempt == 2:
                    f.write(b'{"path": "/half/writ')
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert kills >= 3
    recs = records(out)
    paths = [x["path"] for x in recs]
    assert sorted(paths) == sorted(str(p) for p in collect_images([pictures]))  # each exactly once
    broken = [x for x in recs if x["path"].endswith("broken.jpg")]
    assert len(broken) == 1 and ("not a readable image" in broken[0]["error"] or "decoded" in broken[0]["error"])
    good = [x for x in recs if "answer" in x]
    assert len(good) == 60 and all(x["answer"] and x["model"] == default_model_name() and x["timings"] for x in good)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)  # nothing left to do
    assert again.returncode == 0 and "0 new records" in again.stderr and len(records(out)) == 61


def test_a_question_instead_of_a_caption_matches_single_queries(pictures, tmp_path):
    out = tmp_path / "a.jsonl"
    imgs = collect_images([pictures / "part2"])[:4]
    r = subprocess.run([CLI, "caption", *map(str, imgs), "--out", str(out), "-q", "How many shapes are there?"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for rec in records(out):
        one = subprocess.run([CLI, "query", rec["path"], "How many shapes are there?"], capture_output=True,
                             text=True, timeout=120)
        assert one.stdout.strip() == rec["answer"]


@pytest.fixture(scope="module")
def demo():
    from moondream_cpp import Moondream
    from moondream_cpp.gguf_models import demo_pair

    with Moondream.load(*demo_pair()) as md:
        yield md


def test_a_bad_middle_line_keeps_every_record_after_it(demo, pictures, tmp_path):
    from moondream_cpp.batch import run_batch

    imgs = collect_images([pictures / "part1"])[:4]
    out = tmp_path / "r.jsonl"
    first = json.dumps({"path": str(imgs[0]), "answer": "kept 0"})
    second = json.dumps({"path": str(imgs[1]), "answer": "kept 1"})
    out.write_text(f"{first}\n\nnot json at all\n{second}\n" + '{"path": "torn')
    rep = run_batch(demo, imgs, out)
    lines = out.read_text().split("\n")
    assert lines[:4] == [first, "", "not json at all", second]  # nothing before the torn tail is lost or moved
    assert rep.skipped == 2 and rep.written == 2 and rep.bad_lines == [3]  # a blank line is no complaint
    assert sorted(json.loads(x)["path"] for x in lines[4:] if x) == sorted(map(str, imgs[2:]))


def test_one_file_under_two_spellings_is_one_image(demo, pictures, tmp_path, monkeypatch):
    from moondream_cpp.batch import run_batch

    img = collect_images([pictures / "part2"])[0]
    link = tmp_path / "alias.png"
    link.symlink_to(img)
    monkeypatch.chdir(img.parent)
    assert len(collect_images([img, link, img.name, str(img.parent / ".." / img.parent.name / img.name)])) == 1
    out = tmp_path / "r.jsonl"
    assert run_batch(demo, [img], out).written == 1
    rep = run_batch(demo, [link, Path(img.name)], out)
    assert (rep.written, rep.skipped) == (0, 1) and len(records(out)) == 1


def test_a_second_run_on_the_same_records_file_is_refused(demo, pictures, tmp_path):
    from moondream_cpp.batch import run_batch
    from moondream_cpp.errors import MoondreamError
    from moondream_cpp.records import RecordsFile

    out = tmp_path / "r.jsonl"
    imgs = collect_images([pictures / "part0"])[:2]
    with RecordsFile(out):  # another run holds it
        with pytest.raises(MoondreamError, match="another run is writing"):
            run_batch(demo, imgs, out)
    assert run_batch(demo, imgs, out).written == 2  # free again once that run ends


def test_an_image_that_kills_the_process_twice_becomes_an_error_record(demo, pictures, tmp_path):
    from moondream_cpp.batch import run_batch
    from moondream_cpp.records import RecordsFile

    imgs = collect_images([pictures / "part1"])[:3]
    out = tmp_path / "r.jsonl"
    with RecordsFile(out) as rec:
        rec.starting(str(imgs[0]))  # as a run killed on its first attempt at imgs[0] leaves it
    asked = []
    rep = run_batch(demo, imgs, out, on_record=lambda r: asked.append(r["path"]))
    assert asked == [str(imgs[1]), str(imgs[2]), str(imgs[0])]  # one more try, after the others
    assert all("answer" in r for r in records(out))
    out.unlink()
    with RecordsFile(out) as rec:
        rec.starting(str(imgs[0]), attempt=2)  # it died on its second try too
    rep = run_batch(demo, imgs, out)
    died = [r for r in records(out) if r["path"] == str(imgs[0])]
    assert len(died) == 1 and "died twice" in died[0]["error"] and rep.errors == 1 and rep.written == 3
    again = run_batch(demo, imgs, out, retry_errors=True)  # on request, it is tried again
    assert again.written == 1 and "answer" in records(out)[-1] and records(out)[-1]["path"] == str(imgs[0])


def test_records_compare_local_paths_by_real_path_and_urls_as_written(tmp_path, monkeypatch):
    from moondream_cpp.records import same_file_key

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "a" / "x.png")
    monkeypatch.chdir(tmp_path / "a")
    assert same_file_key("x.png") == same_file_key(tmp_path / "link.png") == str((tmp_path / "a" / "x.png"))
    url = "s3://bucket//pictures/../x.png"
    assert same_file_key(url) == url  # never resolved against the working directory
    monkeypatch.chdir(tmp_path)
    assert same_file_key(url) == url
