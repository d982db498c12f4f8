"""The server with a scaled 2025 model (conftest's pair2025), as a real `moondream-cpp serve` subprocess on loopback:
/v1/caption goes through the model's caption templates at every length it has, the image reaches the model whole
(multi-crop, not pre-stretched to one view), a request's max_crops is bounded by --max-crops, /v1/status says what
the model is, and the OpenAI route answers each question alone. Answers are compared with the Python API on the same
files in this process, and one caption with the PyTorch reference of the checkpoint."""
import base64
import io
import json
import urllib.request

import pytest

from conftest import scene
from test_server import post, server

REVISION = "2025-03-27"  # greedy by default, and has long captions
MAX_CROPS = 4
TOKENS = 6  # enough to tell prompts apart; the tiny model talks until its limit


def png_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def small():
    return scene(200, 150, seed=5)  # one tile at any max_crops


@pytest.fixture(scope="module")
def wide():
    return scene(1024, 768, seed=6)  # 3 x 4 tiles at 12 crops, 1 x 2 at 4 (worked by hand in the tests below)


@pytest.fixture(scope="module")
def files(pair2025):
    return pair2025(REVISION)


@pytest.fixture(scope="module")
def local(files):
    """The same files in this process: what the server's answers must equal."""
    from moondream_cpp import Moondream

    with Moondream.load(*files, max_crops=MAX_CROPS) as md:
        yield md


@pytest.fixture(scope="module")
def served(files, tmp_path_factory):
    text, mmproj = files
    with server("--text", text, "--mmproj", mmproj, "--max-crops", MAX_CROPS,
                home=tmp_path_factory.mktemp("home25")) as s:
        yield s[0]


def station_stream(url, path, body) -> tuple[str, dict]:
    """(the text, the final event) of a streamed /v1/caption or /v1/query."""
    req = urllib.request.Request(url + path, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    text, last = "", None
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            if line.startswith(b"data: "):
                ev = json.loads(line[6:])
                text += ev.get("chunk", "")
                last = ev if ev.get("completed") else last
    return text, last


def test_status_and_models_say_what_the_model_is(served):
    st = json.loads(urllib.request.urlopen(served + "/v1/status").read())
    assert (st["family"], st["revision"]) == ("2025", REVISION)
    assert st["caption_lengths"] == ["short", "normal", "long"]
    assert st["max_crops"] == MAX_CROPS
    m = json.loads(urllib.request.urlopen(served + "/v1/models").read())["data"][0]
    assert (m["family"], m["revision"]) == ("2025", REVISION)


def test_every_caption_length_goes_through_the_templates(served, local, small):
    img = png_uri(small)
    settings = {"max_tokens": TOKENS}
    got = {}
    for length in ("short", "normal", "long"):
        status, a, _ = post(served, "/v1/caption", {"image_url": img, "length": length, "settings": settings})
        assert status == 200, a
        got[length] = a["caption"]
        assert a["caption"] == local.caption(small, length, max_tokens=TOKENS).text, length
        assert a["metrics"]["output_tokens"] == TOKENS
    # a caption is no question: the 2024 way (asking "Describe this image.") gives another prompt
    assert got["normal"] != local.query(small, "Describe this image.", max_tokens=TOKENS).text
    streamed, done = station_stream(served, "/v1/caption", {"image_url": img, "length": "long", "settings": settings})
    assert streamed == got["long"] and done["finish_reason"] == "length"
    assert done["timings"]["image_cached"] is True  # the same image again: not encoded again


def test_a_caption_equals_the_pytorch_reference(served, small, checkpoint2025, local):
    """The server's short caption, token for token, is the reference model's greedy caption on the checkpoint
    (its prompt built here from the revision's table, not by the runtime)."""
    from moondream_cpp import spec2025
    from moondream_cpp.reference.md2025 import Reference2025

    ref = Reference2025.load(checkpoint2025(REVISION, "f16"), revision=REVISION)
    rev = spec2025.REVISIONS_2025[REVISION]
    ids = ref.generate(small, list(rev.captions["short"]), TOKENS)
    status, a, _ = post(served, "/v1/caption", {"image_url": png_uri(small), "length": "short",
                                                "settings": {"max_tokens": TOKENS}})
    assert status == 200 and a["caption"] == local.detokenize(ids)


def test_the_whole_image_reaches_the_model_in_crops(served, local, wide):
    """A 1024x768 image at max_crops 4 is read as 1 x 2 local crops (by upstream's rule: 768 and 1024 less the
    2 x 56-pixel outer margins are 656 x 912, at least 3 x 4 windows of 266; 12 > 4 scales both by sqrt(4/12):
    floor(1.73) x floor(2.31)); a server that stretched it to one 378x378 view first would read 1 x 1."""
    q = {"image_url": png_uri(wide), "question": "What is this?", "settings": {"max_tokens": TOKENS}}
    text, done = station_stream(served, "/v1/query", q)
    assert done["timings"]["image_tiling"] == [1, 2] and done["timings"]["image_cached"] is False
    assert done["timings"]["vision_passes"] >= 1
    assert text == local.query(wide, "What is this?", max_tokens=TOKENS).text
    fewer = {**q, "settings": {"max_tokens": TOKENS, "max_crops": 1}}
    text1, done1 = station_stream(served, "/v1/query", fewer)
    assert done1["timings"]["image_tiling"] == [1, 1]
    assert text1 == local.query(wide, "What is this?", max_tokens=TOKENS, max_crops=1).text


def test_max_crops_over_the_servers_limit_is_a_400(served, small):
    body = {"image_url": png_uri(small), "question": "What?"}
    status, err, _ = post(served, "/v1/query", {**body, "settings": {"max_crops": MAX_CROPS + 1}})
    assert status == 400 and err["error"]["param"] == "max_crops", err
    msg = err["error"]["message"]
    assert f"max_crops {MAX_CROPS + 1}" in msg and f"limit of {MAX_CROPS}" in msg and "--max-crops" in msg, msg
    for bad, says in ((13, "less than or equal to 12"), (0, "greater than or equal to 1"), ("4", "valid integer"),
                      (2.5, "valid integer")):
        status, err, _ = post(served, "/v1/query", {**body, "settings": {"max_crops": bad}})
        assert status == 400 and err["error"]["param"] == "settings.max_crops", (bad, err)
        assert says in err["error"]["message"], (bad, err)
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                                      {"type": "image_url", "image_url": {"url": png_uri(small)}}]}]}
    status, err, _ = post(served, "/v1/chat/completions", {**chat, "max_crops": MAX_CROPS + 1})
    assert status == 400 and err["error"]["param"] == "max_crops", err
    status, a, _ = post(served, "/v1/chat/completions", {**chat, "max_crops": 2, "max_tokens": TOKENS})
    assert status == 200, a  # within the limit: answered


def test_the_openai_route_answers_each_question_alone(served, local, small):
    """2025 models take no chat history (upstream asks each question alone): an earlier turn changes nothing."""
    img = {"type": "image_url", "image_url": {"url": png_uri(small)}}
    alone = {"messages": [{"role": "user", "content": [img, {"type": "text", "text": "What color?"}]}],
             "max_tokens": TOKENS}
    after = {"messages": [{"role": "user", "content": [img, {"type": "text", "text": "Is it big?"}]},
                          {"role": "assistant", "content": "No."},
                          {"role": "user", "content": "What color?"}], "max_tokens": TOKENS}
    s1, a1, _ = post(served, "/v1/chat/completions", alone)
    s2, a2, _ = post(served, "/v1/chat/completions", after)
    assert s1 == s2 == 200
    expected = local.query(small, "What color?", max_tokens=TOKENS).text
    assert a1["choices"][0]["message"]["content"] == a2["choices"][0]["message"]["content"] == expected


def test_a_length_the_model_lacks_is_a_400_naming_the_ones_it_has(pair2025, tmp_path, small):
    text, mmproj = pair2025("2025-01-09")  # before long captions
    with server("--text", text, "--mmproj", mmproj, home=tmp_path) as (url, _):
        st = json.loads(urllib.request.urlopen(url + "/v1/status").read())
        assert st["caption_lengths"] == ["short", "normal"] and st["max_crops"] == 12  # upstream's default
        status, err, _ = post(url, "/v1/caption", {"image_url": png_uri(small), "length": "long"})
        assert status == 400 and err["error"]["param"] == "length", err
        msg = err["error"]["message"]
        assert "short, normal" in msg and "2025-03-27" in msg, msg
        status, err, _ = post(url, "/v1/caption", {"image_url": png_uri(small), "length": "x" * 33})
        assert status == 400 and err["error"]["param"] == "length", err
        status, a, _ = post(url, "/v1/caption", {"image_url": png_uri(small), "length": "short",
                                                 "settings": {"max_tokens": 2}})
        assert status == 200 and a["metrics"]["output_tokens"] == 2


def test_the_06_21_model_with_its_own_tokenizer_captions_long(pair2025, tmp_path, small):
    """The newest revision (what `pull moondream2` gives): the starmie tokenizer, answers decoded through it."""
    from moondream_cpp import Moondream

    text, mmproj = pair2025("2025-06-21")
    settings = {"max_tokens": TOKENS, "temperature": 0}
    with server("--text", text, "--mmproj", mmproj, "--max-crops", 2, home=tmp_path) as (url, _), \
            Moondream.load(text, mmproj, max_crops=2) as md:
        st = json.loads(urllib.request.urlopen(url + "/v1/status").read())
        assert (st["revision"], st["caption_lengths"]) == ("2025-06-21", ["short", "normal", "long"])
        status, a, _ = post(url, "/v1/caption", {"image_url": png_uri(small), "length": "long", "settings": settings})
        assert status == 200 and a["caption"] == md.caption(small, "long", max_tokens=TOKENS, temperature=0).text
        status, a, _ = post(url, "/v1/query", {"image_url": png_uri(small), "question": "What?", "settings": settings})
        assert status == 200 and a["answer"] == md.query(small, "What?", max_tokens=TOKENS, temperature=0).text
