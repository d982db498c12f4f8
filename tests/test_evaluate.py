"""The VQA metric against known answers of the official VQAv2 normalisation, and the eval command end to end."""
import json
import subprocess
import sys

import pytest

from moondream_cpp.evaluate import evaluate, normalize_answer, vqa_score
from conftest import CLI


@pytest.mark.parametrize("raw,norm", [
    ("Two", "2"), ("the red circle.", "red circle"), ("Yes!", "yes"), ("an apple", "apple"), ("ten", "10"),
    ("none", "0"), ("dont know", "don't know"), ("3.5", "3.5"), ("1,000", "1000"), ("left-hand", "left hand"),
    ("  RED\n", "red"), ("t-shirt?", "t shirt"),
])
def test_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_scores():
    assert vqa_score("two", ["2"] * 10) == 1.0
    assert vqa_score("2", ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]) == pytest.approx(2 / 3)
    assert vqa_score("red", ["red"]) == 1.0 and vqa_score("blue", ["red"]) == 0.0
    rep = evaluate(lambda img, q: {"a": "Red.", "b": "3"}[img],
                   [{"image": "a", "question": "?", "answers": ["red"], "type": "color"},
                    {"image": "b", "question": "?", "answers": ["2"], "type": "count"}])
    assert rep.by_type == {"color": {"n": 1, "vqa": 100.0, "exact": 100.0},
                           "count": {"n": 1, "vqa": 0.0, "exact": 0.0}}
    assert rep.overall["vqa"] == 50.0


def test_eval_command_skips_unreadable_images(converted, photo, tmp_path):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    photo.save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("not an image")
    rows = [{"image": "ok.png", "question": "What?", "answers": ["x"], "type": "t"},
            {"image": "bad.png", "question": "What?", "answers": ["x"], "type": "t"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = subprocess.run([CLI, "eval", str(tmp_path / "q.jsonl"), "--text", str(text),
                        "--mmproj", str(mmproj), "--json", "--max-tokens", "4"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["overall"]["n"] == 1 and len(out["skipped"]) == 1 and "bad.png" in r.stderr


def test_eval_reference_and_gguf_agree(converted, checkpoint, photo, tmp_path):
    """The same questions through the PyTorch reference (--reference) and the GGUF pair give the same predictions."""
    text, mmproj = converted("2024-04-02", "f32", "f32")
    photo.save(tmp_path / "ok.png")
    rows = [{"image": "ok.png", "question": q, "answers": ["x"], "type": "t"} for q in ("What?", "Where?")]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = {}
    for name, args in {"gguf": ["--text", str(text), "--mmproj", str(mmproj)],
                       "ref": ["--reference", str(checkpoint("2024-04-02"))]}.items():
        out = tmp_path / f"{name}.jsonl"
        r = subprocess.run([CLI, "eval", str(tmp_path / "q.jsonl"), *args, "--json",
                            "--max-tokens", "6", "--predictions", str(out)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        preds[name] = [json.loads(x)["prediction"] for x in out.read_text().splitlines()]
    assert preds["gguf"] == preds["ref"] and all(preds["gguf"])


@pytest.mark.parametrize("line", ['[1, 2]', '"text"', '{"image": "a.png", "question": "q"}',
                                  '{"image": "a.png", "question": "q", "answers": []}',
                                  '{"image": "a.png", "question": "q", "answers": [3]}',
                                  '{"image": 5, "question": "q", "answer": "x"}', '{not json'])
def test_a_bad_question_line_is_named_even_under_python_O(tmp_path, line):
    f = tmp_path / "q.jsonl"
    f.write_text('{"image": "a.png", "question": "q", "answer": "x"}\n' + line + "\n")
    for flags in ([], ["-O"]):  # asserts vanish under -O: the check must not be one
        r = subprocess.run([sys.executable, *flags, "-c", "import sys; from moondream_cpp.evaluate import read_jsonl;"
                            "from moondream_cpp.errors import MoondreamError\n"
                            "try: read_jsonl(sys.argv[1])\nexcept MoondreamError as e: print(e)", str(f)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and f"{f}:2: expected a JSON object" in r.stdout, (flags, r.stdout, r.stderr)
