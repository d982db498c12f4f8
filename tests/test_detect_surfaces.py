"""detect and point from every surface, with a scaled 2025 model (conftest's pair2025): the official `moondream`
client against a real `moondream-cpp serve` subprocess on loopback, the `detect`/`point` commands (--json, --draw)
and chat's /detect and /point, each compared with the Python API on the same files in this process. The random
checkpoint never says EOS, so every run finds exactly max_objects objects (the limit is seen in the counts). Bad
requests: a 2024 model, an empty or missing object, max_objects out of range, spatial_refs."""
import base64
import io
import json
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import CLI, scene
from test_server import post, server

REVISION = "2025-04-14"
OBJECT = "red circle"
N = 3  # max_objects in most requests


def run(*args, stdin=None, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def files(pair2025):
    return pair2025(REVISION)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img-regions")
    scene(300, 200, seed=5).save(d / "small.png")  # one crop
    scene(1024, 768, seed=6).save(d / "wide.png")  # a global view and 12 local crops
    return d


@pytest.fixture(scope="module")
def local(files):
    from moondream_cpp import Moondream

    with Moondream.load(*files) as md:
        yield md


@pytest.fixture(scope="module")
def served(files, tmp_path_factory):
    text, mmproj = files
    with server("--text", text, "--mmproj", mmproj, home=tmp_path_factory.mktemp("home-regions")) as s:
        yield s[0]


@pytest.fixture(scope="module")
def client(served):
    import moondream

    return moondream.vl(endpoint=served + "/v1")


def exact_upload(path):
    """The file's own bytes as the client's encoded image: the server decodes exactly what the Python API reads."""
    from moondream.types import Base64EncodedImage

    return Base64EncodedImage(image_url="data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())


@pytest.mark.parametrize("name", ["small.png", "wide.png"])
def test_official_client_detect_and_point_equal_the_python_api(client, local, images, name):
    path = images / name
    boxes = client.detect(exact_upload(path), OBJECT, settings={"max_objects": N})
    assert boxes == {"objects": local.detect(path, OBJECT, N)}
    assert len(boxes["objects"]) == N and set(boxes["objects"][0]) == {"x_min", "y_min", "x_max", "y_max"}
    points = client.point(exact_upload(path), OBJECT, settings={"max_objects": N})
    assert points == {"points": local.point(path, OBJECT, N)}
    assert len(points["points"]) == N and set(points["points"][0]) == {"x", "y"}


def test_official_client_with_a_pil_image(client, local, images):
    """The client's own encoding of a PIL image (JPEG, quality 95): the same JPEG bytes through the Python API."""
    picture = Image.open(images / "small.png")
    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format="JPEG", quality=95)
    assert client.detect(picture, "face", settings={"max_objects": 2}) == {
        "objects": local.detect(buf.getvalue(), "face", 2)}
    assert client.point(picture, "face", settings={"max_objects": 2}) == {
        "points": local.point(buf.getvalue(), "face", 2)}


def test_raw_responses_and_the_model_limit(served, local, images):
    uri = exact_upload(images / "small.png").image_url
    status, body, _ = post(served, "/v1/detect", {"image_url": uri, "object": OBJECT}, timeout=300)
    assert status == 200, body
    assert len(body["objects"]) == 50  # no max_objects: the revision's limit (the checkpoint never stops itself)
    assert body["request_id"] and body["metrics"]["input_tokens"] > 729
    status, body, _ = post(served, "/v1/point", {"image_url": uri, "object": OBJECT,
                                                 "settings": {"max_objects": 1, "temperature": 0.5}})
    assert status == 200 and body["points"] == local.point(images / "small.png", OBJECT, 1), body
    st = json.loads(urllib.request.urlopen(served + "/v1/status").read())
    assert "detect" in st["skills"] and "point" in st["skills"] and st["last"] == {"skill": "point", "objects": 1}


@pytest.mark.parametrize("route", ["/v1/detect", "/v1/point"])
@pytest.mark.parametrize("extra, param, says", [
    ({"object": "  "}, "object", "empty"),
    ({}, "object", "object is required"),
    ({"object": 3}, "object", "string"),
    ({"object": "x", "settings": {"max_objects": 0}}, "settings.max_objects", "from 1 to 50"),
    ({"object": "x", "settings": {"max_objects": 51}}, "settings.max_objects", "from 1 to 50"),
    ({"object": "x", "settings": {"max_objects": 2.0}}, "settings.max_objects", "integer"),
    ({"object": "x", "settings": {"max_objects": True}}, "settings.max_objects", "integer"),
    ({"object": "x", "spatial_refs": [[0.5, 0.5]]}, "spatial_refs", "not supported"),
])
def test_bad_requests_are_400s(served, images, route, extra, param, says):
    status, body, _ = post(served, route, {"image_url": exact_upload(images / "small.png").image_url, **extra})
    assert status == 400, body
    assert body["error"]["param"] == param and says in body["error"]["message"], body


@pytest.mark.parametrize("obj, says", [
    ("circle " * 1500, "context"),  # fits the byte limit, not the 2048 positions: the worker's tokens tell
    ("x" * 4_000_000, "the object's name is"),  # past any tokens' bytes: refused before the image is read
])
def test_an_object_too_long_for_the_context_is_a_400(served, images, obj, says):
    status, body, _ = post(served, "/v1/detect", {"image_url": exact_upload(images / "small.png").image_url,
                                                  "object": obj})
    assert status == 400 and body["error"]["param"] == "object", body
    assert body["error"]["code"] == "context_length_exceeded" and says in body["error"]["message"], body


def test_a_bad_image_is_a_400(served):
    status, body, _ = post(served, "/v1/detect", {"image_url": "data:image/png;base64,AAAA", "object": "x"})
    assert status == 400 and body["error"]["param"] == "image_url", body


def test_a_2024_model_says_detect_needs_a_2025_one(converted, images, tmp_path):
    import moondream

    text, mmproj = converted()
    with server("--text", text, "--mmproj", mmproj, home=tmp_path) as (url, _):
        for route in ("/v1/detect", "/v1/point"):
            status, body, _ = post(url, route, {"image_url": exact_upload(images / "small.png").image_url,
                                                "object": "face"})
            assert status == 400 and "needs a 2025 moondream2" in body["error"]["message"], body
        st = json.loads(urllib.request.urlopen(url + "/v1/status").read())
        assert st["family"] == "2024" and "detect" not in st["skills"]
        with pytest.raises(urllib.error.HTTPError) as e:
            moondream.vl(endpoint=url + "/v1").detect(Image.open(images / "small.png"), "face")
        assert e.value.code == 400
    for skill in ("detect", "point"):
        r = run(skill, images / "small.png", "face", "--text", text, "--mmproj", mmproj)
        assert r.returncode == 1 and "needs a 2025 moondream2" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run("chat", images / "small.png", "--text", text, "--mmproj", mmproj, "--max-tokens", 2,
            stdin="/detect face\nWhat is it?\n")  # the chat goes on after the message
    assert r.returncode == 1 and "error: detect needs a 2025 moondream2" in r.stderr, r.stderr
    assert len(r.stdout.splitlines()) == 1  # the question's answer


# ------------------------------------------------------------------------------------------------- the CLI
def model_args(files):
    return ["--text", files[0], "--mmproj", files[1]]


def fraction_to_pixel(f: float, size: int) -> float:
    return min(max(f, 0.0), 1.0) * size


def test_cli_detect_json_and_draw(files, local, images, tmp_path):
    src, out = images / "small.png", tmp_path / "boxes.png"
    r = run("detect", src, OBJECT, "--max-objects", N, "--json", "--draw", out, *model_args(files))
    assert r.returncode == 0, r.stderr
    boxes = [json.loads(line) for line in r.stdout.splitlines()]
    assert boxes == local.detect(src, OBJECT, N)
    before = np.asarray(Image.open(src).convert("RGB")).astype(int)
    after = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert after.shape == before.shape
    changed = np.argwhere(np.abs(after - before).sum(-1) > 0)  # rows of (y, x)
    h, w = before.shape[:2]
    near_an_edge = np.zeros(len(changed), bool)
    tol = 4  # the line's width (2 px at this size) and rounding
    for b in boxes:
        x0, x1 = sorted(fraction_to_pixel(b[k], w) for k in ("x_min", "x_max"))
        y0, y1 = sorted(fraction_to_pixel(b[k], h) for k in ("y_min", "y_max"))
        ys, xs = changed[:, 0], changed[:, 1]
        inside_outer = (xs >= x0 - tol) & (xs <= x1 + tol) & (ys >= y0 - tol) & (ys <= y1 + tol)
        inside_inner = (xs > x0 + tol) & (xs < x1 - tol) & (ys > y0 + tol) & (ys < y1 - tol)
        near_an_edge |= inside_outer & ~inside_inner
        # the box's left edge, half-way down, is drawn
        cx, cy = int(min(x0, w - 1)), int(min((y0 + y1) / 2, h - 1))
        assert np.abs(after[cy, max(0, cx - 2): cx + 3] - before[cy, max(0, cx - 2): cx + 3]).sum() > 0, b
    assert len(changed) > 0 and near_an_edge.all()  # nothing drawn away from the boxes' outlines


def test_cli_point_text_and_draw(files, local, images, tmp_path):
    src, out = images / "wide.png", tmp_path / "points.png"
    r = run("point", src, OBJECT, "--max-objects", N, "--draw", out, *model_args(files))
    assert r.returncode == 0, r.stderr
    lines = [[float(v) for v in line.split()] for line in r.stdout.splitlines()]
    expected = local.point(src, OBJECT, N)
    assert len(lines) == N and np.allclose(lines, [[p["x"], p["y"]] for p in expected], atol=6e-5)
    before = np.asarray(Image.open(src).convert("RGB")).astype(int)
    after = np.asarray(Image.open(out).convert("RGB")).astype(int)
    h, w = before.shape[:2]
    changed = np.argwhere(np.abs(after - before).sum(-1) > 0)
    radius = 20  # a dot's radius at this size (4 x 7 px) and rounding
    near = np.zeros(len(changed), bool)
    for p in expected:
        px, py = fraction_to_pixel(p["x"], w), fraction_to_pixel(p["y"], h)
        near |= np.hypot(changed[:, 1] - px, changed[:, 0] - py) <= radius
        iy, ix = min(int(py), h - 1), min(int(px), w - 1)
        assert np.abs(after[iy, ix] - before[iy, ix]).sum() > 0, p  # the dot covers its point
    assert len(changed) > 0 and near.all()


@pytest.mark.parametrize("args, says", [
    (["detect", "small.png", " "], "empty"),
    (["point", "small.png", "face", "--draw", "out.unknown"], "image format"),
    (["detect", "small.png", "face", "--max-objects", "51"], "--max-objects"),
    (["detect", "missing.png", "face"], "missing.png"),
])
def test_cli_bad_input_is_a_message(files, images, args, says):
    r = run(*[images / a if a.endswith((".png", ".unknown")) else a for a in args], *model_args(files))
    assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_chat_detect_and_point(files, local, images):
    src = images / "small.png"
    r = run("chat", src, *model_args(files), stdin=f"/detect {OBJECT}\n/point {OBJECT}\n/detect\n")
    assert r.returncode == 1 and "/detect needs an object" in r.stderr, r.stderr
    lines = [[float(v) for v in line.split()] for line in r.stdout.splitlines()]
    boxes, points = local.detect(src, OBJECT), local.point(src, OBJECT)
    assert len(lines) == len(boxes) + len(points) == 100
    assert np.allclose(lines[:50], [[b[k] for k in ("x_min", "y_min", "x_max", "y_max")] for b in boxes], atol=6e-5)
    assert np.allclose(lines[50:], [[p["x"], p["y"]] for p in points], atol=6e-5)


def test_chat_session_keeps_regions_out_of_the_conversation(local, images):
    from moondream_cpp.chat import ChatSession

    session = ChatSession(local, images / "small.png", max_tokens=2)
    assert session.detect(OBJECT, 2) == local.detect(images / "small.png", OBJECT, 2)
    assert session.point(OBJECT, 2) == local.point(images / "small.png", OBJECT, 2)
    assert session.history == [] and [t.question for t in session.turns] == [f"detect {OBJECT}", f"point {OBJECT}"]
    assert json.loads(session.turns[0].answer) == local.detect(images / "small.png", OBJECT, 2)
