"""The interactive chat driven through a real pseudo-terminal, as a user types it (pexpect)."""
import json
import re
import subprocess
from pathlib import Path

import pexpect

from conftest import CLI

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
PROMPT = "> "


def spawn(*args, home, timeout=120):
    child = pexpect.spawn(CLI, [*map(str, args)], cwd=str(ROOT), encoding="utf-8", timeout=timeout,
                          env={"MOONDREAM_CPP_HOME": str(home), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
                          dimensions=(40, 200))
    child.expect_exact(PROMPT)
    return child


def ask(child, question):
    """Type a question; return what the chat printed before the next prompt."""
    child.sendline(question)
    child.expect_exact(PROMPT)
    return child.before.replace("\r", "")


def test_two_questions_image_switch_save_and_exit(tmp_path):
    # the 2024 demo: the answers and position counts below are its own (the default demo v2 counts 2 shapes here)
    child = spawn("chat", EX / "shapes.png", "-m", "moondream-demo-2024", "--verbose", home=tmp_path)
    first = ask(child, "What color is the circle?")
    assert "\nred\n" in first and "image: encoded in" in first
    second = ask(child, "How many shapes are there?")
    assert "\n3\n" in second
    assert "image: cached (not re-encoded)" in second  # the second question reuses the encoded image
    evaluated = int(re.search(r"(\d+) evaluated", second).group(1))
    assert evaluated < 30  # ...and the KV prefix: only the new turn's tokens are evaluated, not 64 image positions
    switched = ask(child, f"/image {EX / 'letter.png'}")
    assert "new conversation" in switched
    assert "\nK\n" in ask(child, "What letter is written?")
    back = ask(child, f"/image {EX / 'shapes.png'}")
    assert "from the cache" in back  # recently used images stay encoded
    assert "\nsquare\n" in ask(child, "What shape is the blue object?")
    assert "unknown command" in ask(child, "/nonsense")
    assert "no such image file" in ask(child, "/image nowhere.png")  # an error keeps the chat alive
    ask(child, f"/save {tmp_path / 'chat.json'}")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert [(t["question"], t["answer"]) for t in saved["turns"]] == [
        ("What color is the circle?", "red"), ("How many shapes are there?", "3"),
        ("What letter is written?", "K"), ("What shape is the blue object?", "square")]


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(slow_model, tmp_path):
    q = "Tell me everything."
    want = subprocess.run([CLI, "chat", EX / "shapes.png", "-m", slow_model, "-p", q, "--max-tokens", "12"],
                          capture_output=True, text=True, timeout=120).stdout.strip()
    child = spawn("chat", EX / "shapes.png", "-m", slow_model, "--max-tokens", "1500", home=tmp_path)
    child.sendline(q)
    child.expect_exact(q)  # the terminal's echo of the question (three words itself: not the answer yet)
    child.expect(r"\S+ \S+ \S+")  # the answer is streaming
    child.sendintr()
    child.expect_exact("[answer stopped]", timeout=10)  # long before 1,500 tokens could have been generated
    child.expect_exact(PROMPT)
    # the stopped answer left the context consistent: the same question now starts exactly as a fresh run's answer
    child.sendline(q)
    child.expect_exact(want.split("\n")[0][:30])
    child.sendintr()
    child.expect_exact(PROMPT)
    child.sendcontrol("d")  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
