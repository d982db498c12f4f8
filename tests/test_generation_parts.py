"""The model-free parts of generation: the prompt layout per revision, the options object, the chunk stream (stop
strings, held-back text, finish reasons) and the sampler, each against hand-written expectations."""
import numpy as np
import pytest

from moondream_cpp import spec
from moondream_cpp.errors import MoondreamError
from moondream_cpp.generate import Stream, chunks
from moondream_cpp.options import GenerationOptions
from moondream_cpp.prompt import image_prefix_len, prompt_items
from moondream_cpp.sampling import make_sampler


def chars(text: str) -> list[int]:
    """A stand-in tokenizer: one id per character."""
    return [ord(c) for c in text]


def test_prompt_with_image_markers_and_history():
    items = prompt_items(spec.REVISIONS["moondream1"], "img", 3, "What?", [("Who?", "A cat.")], chars, bos=7)
    want_after = "</image>\n\nQuestion: Who?\n\nAnswer: A cat.\n\nQuestion: What?\n\nAnswer: "
    assert items == [7, *chars("<image>"), ("img", 0), ("img", 1), ("img", 2), *chars(want_after)]
    assert image_prefix_len(items) == 1 + len("<image>") + 3


def test_prompt_of_a_2024_04_revision():
    items = prompt_items(spec.REVISIONS["2024-04-02"], "k", 2, "Colour?", [], chars, bos=50256)
    assert items == [50256, ("k", 0), ("k", 1), *chars("\n\nQuestion: Colour?\n\nAnswer:")]  # no trailing space
    assert image_prefix_len(items) == 3 and image_prefix_len(chars("text only")) == 0


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(max_tokens=1.5), dict(max_tokens=True),
                                 dict(temperature=float("nan")), dict(temperature=-1), dict(top_p=-0.1),
                                 dict(top_p=1.5), dict(top_p=float("inf")), dict(seed=-1), dict(seed=1e999),
                                 dict(stop=[1])])
def test_options_refuse_bad_values(bad):
    with pytest.raises(MoondreamError):
        GenerationOptions(**bad)


def test_options_overrides_and_stop_normalised():
    base = GenerationOptions(max_tokens=5, stop="END")
    assert base.stop == ("END",)
    # top_p unset (None) stays unset: the revision's default applies at answer time
    assert GenerationOptions.of(base, temperature=0.5) == GenerationOptions(5, 0.5, None, None, ("END",))
    assert GenerationOptions(stop=["", "x"]).stop == ("x",)
    with pytest.raises(TypeError):
        GenerationOptions.of(None, max_new_tokens=3)


def test_options_take_the_revision_sampling_defaults_only_where_unset():
    assert GenerationOptions().sampling(0.5, 0.3) == (0.5, 0.3)  # 2025-04-14 and later sample by default
    assert GenerationOptions(top_p=0.9).sampling(0.5, 0.3) == (0.5, 0.9)
    assert GenerationOptions(temperature=0).sampling(0.5, 0.3) == (0, 1.0)  # asked greedy: greedy
    assert GenerationOptions(temperature=0.7).sampling(0.0, 1.0) == (0.7, 1.0)


def steps(tokens, finish):
    yield from tokens
    return finish


def run(tokens, finish="length", stop=(), end_marker=False):
    pieces = bytes  # one token per byte of text
    out = list(chunks(steps([ord(c) for c in tokens], finish), lambda t: pieces([t]), tuple(stop), end_marker))
    *body, last = out
    return "".join(c.text for c in body), last


def test_chunks_trim_whitespace_and_end_with_the_answer():
    text, last = run("  A red circle.  ", finish="stop")
    assert text == "A red circle." and last.finish_reason == "stop" and last.answer.text == "A red circle."
    assert last.answer.tokens == [ord(c) for c in "  A red circle.  "]


def test_a_stop_string_ends_the_answer_and_is_never_shown():
    text, last = run("red. Question: more", stop=["Question:"])
    assert text == last.answer.text == "red." and last.finish_reason == "stop"
    text, last = run("red. Ques", stop=["Question:"])  # a partial stop string at the end is text after all
    assert text == last.answer.text == "red. Ques" and last.finish_reason == "length"


def test_end_marker_revisions_drop_a_trailing_marker_start():
    assert run("blue <END", end_marker=True)[1].answer.text == "blue"
    assert run("blue <END", end_marker=False)[1].answer.text == "blue <END"


def test_stream_hands_out_pieces_then_the_answer():
    s = Stream.of_chunks(chunks(steps([ord(c) for c in "hi there"], "stop"), lambda t: bytes([t]), (), False))
    assert "".join(s) == "hi there" and s.answer.finish_reason == "stop"


def test_sampler_greedy_ignores_padding_rows_and_seeded_sampling_repeats():
    logits = np.array([0.0, 2.0, 1.0, 9.0], np.float32)  # the last row is padding
    assert make_sampler(0.0, 1.0, None, 3)(logits) == 1
    assert make_sampler(1.0, 1e-6, 3, 3)(logits) == 1  # a tiny nucleus holds only the top token
    assert all(make_sampler(9.0, 0.0, s, 3)(logits) == 1 for s in range(20))  # top_p 0: the top token only
    one, two = make_sampler(5.0, 1.0, 11, 3), make_sampler(5.0, 1.0, 11, 3)
    draws = [one(logits) for _ in range(50)]
    assert draws == [two(logits) for _ in range(50)] and set(draws) == {0, 1, 2}  # hot: every real row, no padding


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_nan_scores_are_a_damaged_model_not_a_traceback(temperature):
    from moondream_cpp.errors import ModelFileError
    from moondream_cpp.sampling import make_sampler

    logits = np.zeros(10, np.float32)
    logits[3] = np.nan
    with pytest.raises(ModelFileError, match="damaged"):
        make_sampler(temperature, 0.3, 0, 10)(logits)
