"""llama.cpp's tokens from our converted GGUF equal HF `tokenizers` tokens (phi-1.5-like vocabulary)."""
import random

import pytest
from tokenizers import Tokenizer

from moondream_cpp import Moondream

FIXED = [
    "\n\nQuestion: What is this?\n\nAnswer:", "\n\nQuestion:", "Question: a\n\nAnswer: b\n\n", "Answer: ",
    "<image>", "</image>", "<END>", "hello world", " leading space", "trailing space ", "  two  spaces",
    "tabs\tand\t\ttabs", "\t\t\t\tindented", "        eight spaces", "line\nbreaks\r\nand\rreturns",
    "digits 1234567890 3.14159 1,000,000", "2024-04-02", "x=y+z*2", "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i]; }", "naïve café résumé", "Größe Straße", "日本語のテキスト",
    "中文字符测试", "emoji 🙂🚀👍🏽", "Ελληνικά", "русский текст", "עברית", "العربية", "mixed 漢字 and ASCII",
    "don't won't it's we're they've I'm you'll he'd", "'s 't 're", "CAPS LOCK TEXT", "camelCaseWord",
    "snake_case_word", "https://example.com/path?q=1&r=2", "user@example.com", "#hashtag @mention",
    "...!!!???", "(parentheses) [brackets] {braces}", "\"quoted\" 'single'", "a" * 50, " " * 40,
    "\n" * 5, "   \n   \n", "end.", "", "\u00a0non-breaking\u00a0space", "zero\u200bwidth",
]


def varied_strings(n=300, seed=0):
    rng = random.Random(seed)
    pieces = FIXED + ["the", "cat", " ", "  ", "\t", "\n", "\n\n", "42", "3.5", "é", "字", "🙂", "?", "!", ".",
                      "Question", "Answer", ":", "<", ">", "END", "image", "'s", "'ll", "-", "_", "\\", "/"]
    out = list(FIXED)
    while len(out) < n:
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return out


@pytest.fixture(scope="module")
def pair(converted, checkpoint):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    md = Moondream.load(text, mmproj, n_ctx=256)
    hf = Tokenizer.from_file(str(checkpoint("2024-04-02") / "tokenizer.json"))
    yield md, hf
    md.close()


def test_llama_cpp_tokens_equal_hf_tokens(pair):
    md, hf = pair
    strings = varied_strings()
    assert len(strings) >= 300
    mismatches = [(s, md.tokenize(s), hf.encode(s, add_special_tokens=False).ids) for s in strings
                  if md.tokenize(s) != hf.encode(s, add_special_tokens=False).ids]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


def test_known_ids(pair):
    md, _ = pair
    assert md.tokenize("<END>") == [27, 10619, 29]  # candle's stop check uses the same ids
    assert md.bos == md.eos == 50256
    assert md.tokenize("    ") == [50257 + 31 - 4]  # CodeGen's added whitespace runs: 31 spaces first
    assert md.detokenize(md.tokenize("naïve 日本 🙂")) == "naïve 日本 🙂"


def test_user_text_cannot_inject_control_tokens(pair):
    md, _ = pair
    assert 50256 not in md.tokenize("<|endoftext|>")
