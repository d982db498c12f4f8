"""The bundled demo models: the default (the 2025 demo, tests/test_demo2025.py tests its skills) answers the README's
first command with no download; the 2024 demo (moondream-demo-2024, a fixture of many tests) really answers (checked
against ground truth and its PyTorch checkpoint) through the CLI."""
import json
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import CLI
from moondream_cpp import Moondream
from moondream_cpp.gguf_models import DEMO, DEMO_2024, REGISTRY, bundled_names, demo_checkpoint, demo_pair

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import synth  # noqa: E402

HELDOUT_SEED = 4242  # never used in training (train_demo.py draws from the streams [0, k] and [10000, k])


def test_bundled_files_are_small_and_present():
    text, mmproj = demo_pair(DEMO_2024)
    ck = demo_checkpoint(DEMO_2024)
    assert ck == text.parent / "checkpoint"
    files = [text, mmproj, *ck.iterdir()]
    assert {p.name for p in ck.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert sum(p.stat().st_size for p in files) < 30e6
    assert REGISTRY[DEMO_2024]["text"] == text.name
    # the default is the 2025 demo; everything bundled (both demos, the 2024 checkpoint) ships in 30 MB
    assert bundled_names() == [DEMO, DEMO_2024] and demo_pair() == demo_pair(DEMO) != demo_pair(DEMO_2024)
    shipped = [p for name in bundled_names() for p in demo_pair(name)]
    shipped += [p for n in bundled_names() if "checkpoint" in REGISTRY[n] for p in demo_checkpoint(n).iterdir()]
    assert sum(p.stat().st_size for p in shipped) <= 30e6, [(p.name, p.stat().st_size) for p in shipped]


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
    """The 2024 demo on 50 held-out questions (a seed never used in training) through the CLI, a real subprocess: at
    least 95% right, and the same answers as the PyTorch reference on the same checkpoint."""
    data = synth.write_dataset(tmp_path, HELDOUT_SEED, 50)
    preds = tmp_path / "preds.jsonl"
    r = subprocess.run([CLI, "eval", str(data), "--json", "--predictions", str(preds), "-m", DEMO_2024],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    print("2024 demo model on 50 held-out questions:", report["overall"], report["by_type"])
    assert report["overall"]["n"] == 50
    assert report["overall"]["vqa"] >= 95.0
    from moondream_cpp.reference import ReferenceMoondream

    ref = ReferenceMoondream(demo_checkpoint(DEMO_2024))
    got = [json.loads(x)["prediction"] for x in preds.read_text().splitlines()]
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    want = [ref.generate(Image.open(tmp_path / row["image"]), row["question"], max_tokens=32)[1] for row in rows]
    assert sum(g != w for g, w in zip(got, want)) <= 1


def test_demo_gguf_matches_its_pytorch_checkpoint():
    from moondream_cpp.reference import ReferenceMoondream

    text, mmproj = demo_pair(DEMO_2024)
    ref = ReferenceMoondream(demo_checkpoint(DEMO_2024))
    img = Image.open(ROOT / "examples" / "shapes.png")
    with Moondream.load(text, mmproj, n_ctx=512) as md:
        for q in ["What color is the circle?", "Describe this image.", "How many shapes are there?"]:
            ids, _ = ref.generate(img, q, max_tokens=40)
            assert md.query(img, q, max_tokens=40).tokens == ids
