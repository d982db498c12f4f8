"""The web demo in a real headless browser (Debian's chromium driven by Playwright): load the page, upload an example
image, ask a question, watch the streamed answer appear, ask a follow-up; a screenshot goes to the test artifacts.
The page must not reach for anything off this machine."""
import os
import shutil
import sys
from pathlib import Path

import pytest

from test_server import DEMO_2024, data_uri, free_port, post, server  # noqa: F401  (the same real server subprocess)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import synth2025  # noqa: E402
from training.make_examples import SCENES  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("MOONDREAM_CPP_ARTIFACTS", ROOT / "tests" / "artifacts"))

needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="no chromium here (CI installs it: apt-get install chromium)")


def md_caption(url, example: str, length: str, max_tokens: int | None = None) -> str:
    body = {"image_url": data_uri(ROOT / "examples" / example), "length": length}
    if max_tokens:
        body["settings"] = {"max_tokens": max_tokens}
    status, a, _ = post(url, "/v1/caption", body)
    assert status == 200, a
    return a["caption"]


def test_the_example_images_exist_once_and_ship_with_the_package():
    """The page's examples (package data, so an installed server has them) are the files the README's commands name
    under examples/: one copy, reached from both places."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    static = ROOT / "moondream_cpp" / "server" / "static" / "examples"
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    pngs = sorted(static.glob("*.png"))
    assert [p.name for p in pngs] == sorted(p.name for p in (ROOT / "examples").glob("*.png")) != []
    for png in pngs:
        assert not png.is_symlink() and (ROOT / "examples" / png.name).samefile(png), png.name
        assert any(png.relative_to(static.parents[1]).match(g) for g in shipped["moondream_cpp.server"]), png.name
        assert f'"{png.name}"' in (static.parent / "index.html").read_text()  # and the page offers it


@needs_chromium
def test_upload_ask_stream_follow_up(tmp_path):
    """With the 2024 demo, whose answers to the examples' questions are known."""
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "chromium is required in CI"
    with server("-m", DEMO_2024, home=tmp_path) as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        outside = []
        page.on("request", lambda r: None if r.url.startswith(url) or r.url.startswith("data:")
                or r.url.startswith("blob:") else outside.append(r.url))
        page.goto(url + "/")
        expect(page.locator("#model")).to_contain_text("moondream-demo")
        expect(page.locator("#model")).to_contain_text("2024 family")
        # the caption lengths the demo (a 2024 moondream2) has: no long one
        expect(page.locator("#length option")).to_have_text(["short", "normal"])
        expect(page.locator("#length")).to_have_value("normal")
        page.set_input_files("#file", str(ROOT / "examples" / "shapes.png"))
        expect(page.locator("#preview")).to_be_visible()
        page.fill("#q", "What color is the circle?")
        page.click("#send")
        answer = page.locator(".bot").last
        expect(answer).to_have_text("red", timeout=60_000)
        expect(page.locator(".timing").last).to_contain_text("tok/s")
        page.fill("#q", "How many shapes are there?")  # a follow-up in the same conversation
        page.click("#send")
        expect(page.locator(".bot.done")).to_have_count(2, timeout=60_000)
        expect(page.locator(".bot").last).to_have_text("3")
        expect(page.locator(".timing").last).to_contain_text("image cached")
        page.click("#caption")
        expect(page.locator(".bot.done")).to_have_count(3, timeout=60_000)
        assert page.locator(".bot").last.inner_text().endswith(".")
        page.select_option("#length", "short")
        page.click("#caption")
        expect(page.locator(".bot.done")).to_have_count(4, timeout=60_000)
        expect(page.locator(".user").last).to_have_text("caption (short)")
        short = md_caption(url, "shapes.png", "short")  # what /v1/caption says for the same image
        expect(page.locator(".bot").last).to_have_text(short)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-demo.png"), full_page=True)
        page.locator('#examples img[alt="letter.png"]').click()  # an example image starts a new conversation
        page.fill("#q", "What letter is written?")
        page.click("#send")
        expect(page.locator(".bot.done")).to_have_count(1, timeout=60_000)
        expect(page.locator(".bot").last).to_have_text("K")
        browser.close()
    assert outside == []  # no CDN, fonts or analytics


@needs_chromium
def test_with_an_api_key_the_page_asks_for_it_and_answers(tmp_path):
    """--api-key: the page and its images load without the key; /v1 needs it, so the page asks for it once and
    sends it (the example thumbnails and the answer prove both)."""
    from playwright.sync_api import expect, sync_playwright

    with server("--api-key", "s3cret", home=tmp_path) as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url + "/")
        expect(page.locator("#keyform")).to_be_visible()
        expect(page.locator("#model")).to_contain_text("API key")
        n_examples = len(list((ROOT / "moondream_cpp" / "server" / "static" / "examples").glob("*.png")))
        page.wait_for_function("[...document.querySelectorAll('#examples img')].filter(i => i.naturalWidth > 0)"
                               f".length === {n_examples}")  # static files need no key
        page.fill("#key", "s3cret")
        page.click("#usekey")
        expect(page.locator("#model")).to_contain_text("moondream-demo")
        expect(page.locator("#keyform")).to_be_hidden()
        page.locator("#examples img").first.click()
        expect(page.locator("#preview")).to_be_visible()
        page.fill("#q", "What color is the circle?")
        page.click("#send")
        expect(page.locator(".bot.done")).to_have_count(1, timeout=60_000)
        expect(page.locator(".bot").last).to_have_text("red")
        browser.close()


@needs_chromium
def test_a_2025_model_offers_its_caption_lengths_long_included(pair2025, tmp_path):
    """With a 2025 model (scaled, random weights) the page reads the lengths from /v1/status, long included, and
    its long caption is /v1/caption's."""
    from playwright.sync_api import expect, sync_playwright

    text, mmproj = pair2025("2025-03-27")
    # a context of 760 ends the random model's caption some 20 tokens after its 730-row image prefix
    with server("--text", text, "--mmproj", mmproj, "--max-crops", 2, "--n-ctx", 760, home=tmp_path) as (url, _), \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url + "/")
        expect(page.locator("#model")).to_contain_text("2025-03-27 · 2025 family · up to 2 crops")
        expect(page.locator("#length option")).to_have_text(["short", "normal", "long"])
        expect(page.locator("#length")).to_have_value("normal")
        page.locator("#examples img").first.click()
        expect(page.locator("#preview")).to_be_visible()
        page.select_option("#length", "long")
        page.click("#caption")
        expect(page.locator(".bot.done")).to_have_count(1, timeout=120_000)
        expect(page.locator(".user").last).to_have_text("caption (long)")
        assert page.locator(".bot").last.text_content() == md_caption(url, "shapes.png", "long")
        expect(page.locator(".timing").last).to_contain_text("1×1 crops")  # 300x200: one tile
        browser.close()


def _clamped(f: float) -> float:
    return min(max(f, 0.0), 1.0)


@needs_chromium
def test_a_2025_model_draws_boxes_and_points_on_the_picture(pair2025, tmp_path):
    """With a 2025 model (scaled, random weights: it never stops before the 50-object limit) the page offers Detect
    and Point; each draws /v1/detect's boxes or /v1/point's points for the same image where the fractions put them
    on the shown picture (clamped to it)."""
    from playwright.sync_api import expect, sync_playwright

    text, mmproj = pair2025("2025-04-14")
    uri = data_uri(ROOT / "examples" / "shapes.png")
    with server("--text", text, "--mmproj", mmproj, home=tmp_path) as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/")
        expect(page.locator("#regions")).to_be_visible()
        page.locator("#examples img").first.click()  # shapes.png
        expect(page.locator("#preview")).to_be_visible()
        page.fill("#obj", "circle")
        page.click("#detect")
        expect(page.locator(".bot.done")).to_have_count(1, timeout=120_000)
        status, api, _ = post(url, "/v1/detect", {"image_url": uri, "object": "circle"})
        assert status == 200 and len(api["objects"]) == 50
        expect(page.locator(".bot").last).to_have_text("50 boxes drawn")
        expect(page.locator("#marks .box")).to_have_count(50)
        pic = page.locator("#preview").bounding_box()
        drawn = page.eval_on_selector_all("#marks .box", "els => els.map(e => e.getBoundingClientRect().toJSON())")
        for box, got in zip(api["objects"], drawn):
            x0, x1 = _clamped(box["x_min"]) * pic["width"], _clamped(box["x_max"]) * pic["width"]
            y0, y1 = _clamped(box["y_min"]) * pic["height"], _clamped(box["y_max"]) * pic["height"]
            assert abs(got["x"] - pic["x"] - x0) <= 1 and abs(got["y"] - pic["y"] - y0) <= 1, (box, got)
            # the outline is 2 px a side, so a thinner box is drawn 4 px wide
            assert abs(got["width"] - max(x1 - x0, 4)) <= 1.5 and abs(got["height"] - max(y1 - y0, 4)) <= 1.5
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-demo-detect.png"), full_page=True)
        page.click("#point")
        expect(page.locator(".bot.done")).to_have_count(2, timeout=120_000)
        expect(page.locator("#marks .box")).to_have_count(0)  # a new answer replaces the marks
        expect(page.locator("#marks .dot")).to_have_count(50)
        status, api, _ = post(url, "/v1/point", {"image_url": uri, "object": "circle"})
        assert status == 200
        drawn = page.eval_on_selector_all("#marks .dot", "els => els.map(e => e.getBoundingClientRect().toJSON())")
        for p, got in zip(api["points"], drawn):
            cx, cy = got["x"] + got["width"] / 2, got["y"] + got["height"] / 2
            assert abs(cx - pic["x"] - _clamped(p["x"]) * pic["width"]) <= 1, (p, got)
            assert abs(cy - pic["y"] - _clamped(p["y"]) * pic["height"]) <= 1, (p, got)
        browser.close()


@needs_chromium
def test_the_default_demo_draws_the_circles_it_finds(tmp_path):
    """The bundled default model (the 2025 demo) in the page: Detect on the detect example draws one box per circle,
    where the scene has them (IoU >= 0.5 against the drawn shapes) and where /v1/detect puts them; Point draws a dot
    on each circle. The screenshot shows what a new user sees."""
    from playwright.sync_api import expect, sync_playwright

    w, h, _, objs, _ = SCENES["two-circles.png"]  # the README's detect example
    truth = [synth2025.box(o, w, h) for o in objs if o.shape == "circle"]
    example = ROOT / "examples" / "two-circles.png"
    with server(home=tmp_path) as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/")
        expect(page.locator("#model")).to_contain_text("moondream-demo")
        expect(page.locator("#model")).to_contain_text("2025 family")
        expect(page.locator("#regions")).to_be_visible()
        page.set_input_files("#file", str(example))
        expect(page.locator("#preview")).to_be_visible()
        page.fill("#obj", "circle")
        page.click("#detect")
        expect(page.locator(".bot.done")).to_have_count(1, timeout=120_000)
        status, api, _ = post(url, "/v1/detect", {"image_url": data_uri(example), "object": "circle"})
        assert status == 200
        boxes = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in api["objects"]]
        assert len(boxes) == len(truth) and synth2025.match_boxes(boxes, truth) == len(truth), (boxes, truth)
        expect(page.locator(".bot").last).to_have_text(f"{len(truth)} boxes drawn")
        expect(page.locator("#marks .box")).to_have_count(len(truth))
        pic = page.locator("#preview").bounding_box()
        drawn = page.eval_on_selector_all("#marks .box", "els => els.map(e => e.getBoundingClientRect().toJSON())")
        for (x0, y0, x1, y1), got in zip(boxes, drawn):
            assert abs(got["x"] - pic["x"] - _clamped(x0) * pic["width"]) <= 1, (x0, got)
            assert abs(got["y"] - pic["y"] - _clamped(y0) * pic["height"]) <= 1, (y0, got)
            assert abs(got["width"] - (_clamped(x1) - _clamped(x0)) * pic["width"]) <= 1.5, (x1, got)
            assert abs(got["height"] - (_clamped(y1) - _clamped(y0)) * pic["height"]) <= 1.5, (y1, got)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-demo-default-detect.png"), full_page=True)
        page.click("#point")
        expect(page.locator(".bot.done")).to_have_count(2, timeout=120_000)
        expect(page.locator("#marks .dot")).to_have_count(len(truth))
        dots = page.eval_on_selector_all("#marks .dot", "els => els.map(e => e.getBoundingClientRect().toJSON())")
        circles = [o for o in objs if o.shape == "circle"]
        for o in circles:  # each circle holds one dot, read back from where the page put it
            held = [d for d in dots if synth2025.inside(o, (d["x"] + d["width"] / 2 - pic["x"]) / pic["width"],
                                                        (d["y"] + d["height"] / 2 - pic["y"]) / pic["height"], w, h)]
            assert len(held) == 1, (o, dots)
        browser.close()

