"""The bundled demo model: really answers (checked against ground truth), with no download, through the CLI."""
import json
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import CLI
from moondream_cpp import Moondream
from moondream_cpp.gguf_models import REGISTRY, demo_pair

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import synth  # noqa: E402

HELDOUT_SEED = 4242  # never used in training (training/train_demo.py draws from seeds 0 and 10000)


def test_bundled_files_are_small_and_present():
    text, mmproj = demo_pair()
    ck = text.parent / "checkpoint"
    files = [text, mmproj, *ck.iterdir()]
    assert {p.name for p in ck.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert sum(p.stat().st_size for p in files) < 30e6
    assert REGISTRY["moondream-demo"]["text"] == text.name


def test_readme_first_command_prints_the_right_answer():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.+)\n", readme).group(1)
    chat = first.split("&&", 1)[1].split()
    assert chat[0].endswith("moondream-cpp") and chat[1] == "chat"
    image, question = chat[2], re.search(r'-p "([^"]+)"', first).group(1)
    truth = {(r["image"], r["question"]): r["answers"][0]
             for r in map(json.loads, (ROOT / "examples" / "questions.jsonl").read_text().splitlines())}
    r = subprocess.run([CLI, "chat", image, "-p", question], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == truth[(Path(image).name, question)]
    assert "bundled demo model" in r.stderr and "moondream-cpp convert" in r.stderr


def test_fifty_heldout_questions_through_the_cli(tmp_path):
    data = synth.write_dataset(tmp_path, HELDOUT_SEED, 50)
    r = subprocess.run([CLI, "eval", str(data), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    print("demo model on 50 held-out questions:", report["overall"], report["by_type"])
    assert report["overall"]["n"] == 50
    assert report["overall"]["vqa"] >= 95.0


def test_example_questions_answered_correctly():
    rows = [json.loads(x) for x in (ROOT / "examples" / "questions.jsonl").read_text().splitlines()]
    with Moondream.load(*demo_pair(), n_ctx=512) as md:
        wrong = [(r["question"], md.query(ROOT / "examples" / r["image"], r["question"]).text, r["answers"][0])
                 for r in rows]
        wrong = [w for w in wrong if w[1].lower() != w[2].lower()]
    assert len(wrong) <= 1, wrong


def test_demo_gguf_matches_its_pytorch_checkpoint():
    from moondream_cpp.reference import ReferenceMoondream

    text, mmproj = demo_pair()
    ref = ReferenceMoondream(text.parent / "checkpoint")
    img = Image.open(ROOT / "examples" / "shapes.png")
    with Moondream.load(text, mmproj, n_ctx=512) as md:
        for q in ["What color is the circle?", "Describe this image.", "How many shapes are there?"]:
            ids, _ = ref.generate(img, q, max_tokens=40)
            assert md.query(img, q, max_tokens=40).tokens == ids
