"""The command line with a scaled 2025 model (conftest's pair2025), as a user runs it: real subprocesses (and a real
pseudo-terminal for the interactive chat). Answers are compared with the Python API on the same files in this
process; --max-crops is seen in the tiling the answer reports, worked by hand from upstream's rule."""
import json
import os
import subprocess

import pexpect
import pytest

from conftest import CLI, scene

TOKENS = "6"


def run(*args, stdin=None, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=timeout)


def help_of(command: str) -> str:
    """A command's --help as one line of words (wide, so no word is split; the boxes' rules left out)."""
    out = subprocess.run([CLI, command, "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "2000"}).stdout
    return " ".join(out.replace("│", " ").split())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img25")
    scene(200, 150, seed=5).save(d / "small.png")  # one tile
    scene(1024, 768, seed=6).save(d / "wide.png")  # 3 x 4 tiles at 12 crops, 1 x 2 at 4, 1 x 1 at 1
    return d


@pytest.fixture(scope="module")
def m0327(pair2025):
    return pair2025("2025-03-27")  # greedy by default; short, normal and long captions


def model_args(pair):
    return ("--text", pair[0], "--mmproj", pair[1])


@pytest.fixture(scope="module")
def local(m0327):
    from moondream_cpp import Moondream

    with Moondream.load(*m0327) as md:
        yield md


def test_caption_every_length_as_the_api(m0327, local, images):
    from PIL import Image

    small = Image.open(images / "small.png")
    for length in ("short", "normal", "long"):
        r = run("caption", images / "small.png", "--length", length, "--max-tokens", TOKENS, "--json",
                *model_args(m0327))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["caption"] == local.caption(small, length, max_tokens=int(TOKENS)).text, length


def test_long_captions_on_a_model_without_them_exit_with_a_clear_message(pair2025, images):
    r = run("caption", images / "small.png", "--length", "long", *model_args(pair2025("2025-01-09")))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--length must be one of short, normal for revision 2025-01-09" in r.stderr, r.stderr
    assert "2025-03-27" in r.stderr and r.stdout == ""
    r = run("caption", images / "small.png", "--length", "epic", *model_args(pair2025("2025-01-09")))
    assert r.returncode == 1 and "--length must be one of short, normal, long, not 'epic'" in r.stderr, r.stderr


def test_max_crops_sets_how_the_image_is_read(m0327, local, images):
    """1024x768 less the 2 x 56-pixel outer margins is 656 x 912: at least 3 x 4 windows of 266 pixels (the default
    12 crops read it so: 13 tower passes, too slow for this test); at 4 crops both sides scale by sqrt(4/12):
    floor(1.73) x floor(2.31) = 1 x 2; at 1 crop, 1 x 1."""
    from PIL import Image

    wide = Image.open(images / "wide.png")
    for crops, tiling in ((4, [1, 2]), (1, [1, 1])):
        r = run("query", images / "wide.png", "What is it?", "--max-tokens", TOKENS, "--json", "--max-crops", crops,
                *model_args(m0327))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["timings"]["image_tiling"] == tiling, crops
        assert out["answer"] == local.query(wide, "What is it?", max_tokens=int(TOKENS), max_crops=crops).text
    r = run("caption", images / "wide.png", "--max-crops", 1, "--max-tokens", TOKENS, "--json", *model_args(m0327))
    assert r.returncode == 0 and json.loads(r.stdout)["timings"]["image_tiling"] == [1, 1], r.stderr


def test_max_crops_out_of_range_and_its_cost_in_the_help(m0327, images):
    for bad in ("0", "13", "many"):
        r = run("query", images / "small.png", "What?", "--max-crops", bad, *model_args(m0327))
        assert r.returncode == 2 and "--max-crops" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
    for command in ("query", "caption", "chat", "serve", "web"):
        help_text = help_of(command)
        assert "--max-crops" in help_text and "vision-tower pass" in help_text and "12" in help_text, command


def test_max_crops_on_a_2024_model_says_it_has_no_effect(checkpoint, tmp_path, images):
    from moondream_cpp.convert import convert

    out = convert(checkpoint("2024-04-02"), tmp_path / "m24", "f16", "f16", name="tiny")
    plain = run("query", images / "small.png", "What?", "--max-tokens", TOKENS, "--text", out.text, "--mmproj",
                out.mmproj)
    r = run("query", images / "small.png", "What?", "--max-tokens", TOKENS, "--max-crops", 2, "--text", out.text,
            "--mmproj", out.mmproj)
    assert r.returncode == 0 and r.stdout == plain.stdout, r.stderr
    assert "--max-crops has no effect" in r.stderr and "2024" in r.stderr


def test_chat_temperature_defaults_to_the_revisions_own(m0327, local, images):
    from PIL import Image

    help_text = help_of("chat")
    assert "greedy up to 2025-03-27" in help_text and "0.5 with top-p 0.3 from 2025-04-14" in help_text
    small = Image.open(images / "small.png")
    greedy = local.query(small, "What?", max_tokens=int(TOKENS), temperature=0).text
    r = run("chat", images / "small.png", "-p", "What?", "--max-tokens", TOKENS, "--json", *model_args(m0327))
    assert r.returncode == 0 and json.loads(r.stdout)["answer"] == greedy, r.stderr  # 03-27's default: greedy
    hot = [json.loads(run("chat", images / "small.png", "-p", "What?", "--max-tokens", "24", "--temperature", "5",
                          "--json", *model_args(m0327)).stdout)["answer"] for _ in range(2)]
    assert hot[0] != hot[1]  # a temperature given is used (here: near-uniform over 51,200 tokens)


def test_chat_caption_lengths_in_a_script(m0327, local, images):
    from PIL import Image

    small = Image.open(images / "small.png")
    script = "/caption long\n/caption epic\nWhat?\n/caption\n"
    r = run("chat", images / "small.png", "--max-tokens", TOKENS, *model_args(m0327), stdin=script)
    assert r.returncode == 1 and "/caption's length must be one of short, normal, long" in r.stderr, r.stderr
    want = [local.caption(small, "long", max_tokens=int(TOKENS)).text,
            local.query(small, "What?", max_tokens=int(TOKENS)).text,
            local.caption(small, "normal", max_tokens=int(TOKENS)).text]
    assert r.stdout.splitlines() == [w.replace("\n", " ") for w in want]


def test_interactive_chat_names_the_revision_and_family(m0327, images, tmp_path):
    child = pexpect.spawn(CLI, ["chat", str(images / "small.png"), "--max-tokens", TOKENS, "--max-crops", "3",
                                *map(str, model_args(m0327))], encoding="utf-8", timeout=120,
                          env={"MOONDREAM_CPP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
                          dimensions=(40, 200))
    child.expect_exact("> ")
    banner = " ".join(child.before.split())
    assert "revision 2025-03-27, 2025 family, up to 3 crops per image" in banner, banner
    child.sendline("/help")
    child.expect_exact("> ")
    assert "long (2025 models from" in child.before
    child.sendline("/caption long")
    child.expect_exact("> ")
    assert "error" not in child.before
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_info_describes_a_2025_pair(pair2025):
    from moondream_cpp.model_info import describe

    text, _ = pair2025("2025-06-21")
    d = describe(text.parent)
    assert d["text"]["family"] == "2025" and d["text"]["revision"] == "2025-06-21"
    assert d["text"]["tokenizer"] == "starmie" and d["text"]["caption_lengths"] == ["short", "normal", "long"]
    assert d["text"]["stop_rule"] == "eos id 0, ids [3] never sampled"  # docs: 06-21 stops at 0, masks its answer id
    assert d["text"]["sampling"] == "temperature 0.5, top_p 0.3" and d["text"]["max_tokens"] == 768
    assert d["mmproj"]["family"] == "2025" and d["mmproj"]["max_crops"] == 12
