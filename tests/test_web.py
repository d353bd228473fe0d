"""The web page in a real headless Chromium: upload, overlay, hovered class, class toggle, label download, and the
confidence view (the API's format=confidence map drawn in gray, asked for only when the view is picked).

Needs Debian's ``chromium`` at /usr/bin/chromium (``apt-get install chromium``), driven by Playwright's Python
package (never ``playwright install``). ``SEGFORMER_SCREENSHOT=docs/images/serve.png`` also saves the screenshot there,
and the confidence view's beside it (``serve_confidence.png``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from segformer.data import SyntheticDataset
from segformer.serve.app import create_app
from segformer.serve.predictor import Predictor
from test_engines import briefly_trained
from test_serve import labels_of, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: apt-get install chromium"),
]

OVERLAY_ALPHA = """() => {
  const canvas = document.getElementById("overlay");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  return Array.from(data.filter((_, i) => i % 4 === 3));
}"""
CANVAS_RGBA = """(id) => {
  const canvas = document.getElementById(id);
  return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
}"""


@pytest.fixture(scope="module")
def page_server():
    model = briefly_trained()
    with serving(create_app(Predictor(model))) as (url, _):  # the weights test at the images' own size
        yield url, model


def test_page_segments_an_upload(page_server, tmp_path):
    url, model = page_server
    scene, _ = SyntheticDataset(num=1, size=(160, 224), split="val", seed=5)[0]
    upload = tmp_path / "scene.png"
    Image.fromarray(scene).save(upload)
    api_png = httpx.post(f"{url}/v1/segment", content=upload.read_bytes()).content
    want = labels_of(api_png)
    summary = httpx.post(f"{url}/v1/segment?format=json", content=upload.read_bytes()).json()
    names = model.class_names

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 560}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("window.segformer.model !== null")
        page.set_input_files("#file", str(upload))
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)

        # the label map the page decoded from the API's PNG, pixel for pixel
        labels = np.array(page.evaluate("Array.from(window.segformer.labels)"), np.uint8).reshape(want.shape)
        np.testing.assert_array_equal(labels, want)
        # the legend: one entry per class present, largest first, with its share
        legend = page.locator("#legend li").all_text_contents()
        assert len(legend) == len(summary["classes"])
        for text, entry in zip(legend, summary["classes"], strict=True):
            assert text.startswith(f"{entry['name']} {100 * entry['share']:.1f}%")

        # hovering a pixel shows its class
        box = page.locator("#overlay").bounding_box()
        for y, x in [(20, 30), (want.shape[0] // 2, want.shape[1] // 2), (150, 200)]:
            page.mouse.move(
                box["x"] + (x + 0.5) * box["width"] / want.shape[1],
                box["y"] + (y + 0.5) * box["height"] / want.shape[0],
            )
            assert page.text_content("#hover") == f"{names[want[y, x]]} (x {x}, y {y})"

        # the overlay covers every pixel; unticking a class clears exactly its pixels
        assert (np.array(page.evaluate(OVERLAY_ALPHA)) == 255).all()
        hidden = summary["classes"][0]["id"]
        page.locator(f"#legend input[data-class-id='{hidden}']").uncheck()
        alpha = np.array(page.evaluate(OVERLAY_ALPHA)).reshape(want.shape)
        np.testing.assert_array_equal(alpha, np.where(want == hidden, 0, 255))
        page.locator("#opacity").fill("0.8")
        assert page.eval_on_selector("#overlay", "c => c.style.opacity") == "0.8"

        # the download is the API's label PNG, byte for byte
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "scene_label.png"
        assert Path(download.value.path()).read_bytes() == api_png

        page.locator(f"#legend input[data-class-id='{hidden}']").check()
        page.locator("#opacity").fill("0.55")
        page.screenshot(path=str(tmp_path / "serve.png"))
        browser.close()
    assert not errors, errors
    assert Image.open(tmp_path / "serve.png").size == (900, 560)
    if os.environ.get("SEGFORMER_SCREENSHOT"):
        shutil.copy(tmp_path / "serve.png", os.environ["SEGFORMER_SCREENSHOT"])


def test_page_toggles_to_the_confidence_view_and_back(page_server, tmp_path):
    url, model = page_server
    scene, _ = SyntheticDataset(num=1, size=(128, 176), split="val", seed=6)[0]
    upload = tmp_path / "street.png"
    Image.fromarray(scene).save(upload)
    want = labels_of(httpx.post(f"{url}/v1/segment", content=upload.read_bytes()).content)
    api_png = httpx.post(f"{url}/v1/segment?format=confidence", content=upload.read_bytes()).content
    confidence = cv2.imdecode(np.frombuffer(api_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert confidence.dtype == np.uint16 and confidence.shape == want.shape and len(np.unique(confidence)) > 100
    gray = np.rint(confidence / 257.0)  # 255 × p: black uncertain, white certain (v / 257 is never a tie)
    names = model.class_names

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 560}, accept_downloads=True)
        errors, asked = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: asked.append(r.url) if "format=confidence" in r.url else None)
        page.goto(url)
        page.wait_for_function("window.segformer.model !== null")
        page.set_input_files("#file", str(upload))
        page.wait_for_selector("body[data-state=ready][data-view=classes]", timeout=30_000)
        assert asked == [] and page.is_hidden("#confidence") and page.is_visible("#overlay")

        def hover_texts() -> list[tuple[str, str]]:
            box, texts = page.locator("#photo").bounding_box(), []
            for y, x in [(10, 15), (want.shape[0] // 2, want.shape[1] // 3), (120, 170)]:
                page.mouse.move(
                    box["x"] + (x + 0.5) * box["width"] / want.shape[1],
                    box["y"] + (y + 0.5) * box["height"] / want.shape[0],
                )
                shown = f"{names[want[y, x]]}, confidence {100 * int(confidence[y, x]) / 65535:.1f}% (x {x}, y {y})"
                texts.append((page.text_content("#hover"), shown))
            return texts

        # picking the view asks the API once; the canvas shows each pixel's confidence in gray, opaque
        page.check("#view-confidence")
        page.wait_for_selector("body[data-state=ready][data-view=confidence]", timeout=30_000)
        assert len(asked) == 1 and page.is_visible("#confidence") and page.is_hidden("#overlay")
        assert page.is_visible("#scale") and page.locator("#legend li").count() == len(np.unique(want))
        pixels = np.array(page.evaluate(CANVAS_RGBA, "confidence"), np.int64).reshape(*want.shape, 4)
        np.testing.assert_array_equal(pixels[..., :3], np.repeat(gray[..., None], 3, 2))
        assert (pixels[..., 3] == 255).all()
        for text, shown in hover_texts():
            assert text == shown
        # the legend still hides a class, here in the confidence view
        hidden = int(want[want.shape[0] // 2, want.shape[1] // 3])
        page.locator(f"#legend input[data-class-id='{hidden}']").uncheck()
        alpha = np.array(page.evaluate(CANVAS_RGBA, "confidence")).reshape(*want.shape, 4)[..., 3]
        np.testing.assert_array_equal(alpha, np.where(want == hidden, 0, 255))
        page.locator(f"#legend input[data-class-id='{hidden}']").check()
        page.locator("#opacity").fill("1")
        page.mouse.move(0, 0)
        page.screenshot(path=str(tmp_path / "serve_confidence.png"))
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "street_confidence.png"
        assert Path(download.value.path()).read_bytes() == api_png

        # back to the classes: the overlay again, the map kept (no second request), the hover still says both
        page.check("#view-classes")
        page.wait_for_selector("body[data-state=ready][data-view=classes]")
        assert page.is_visible("#overlay") and page.is_hidden("#confidence") and page.is_hidden("#scale")
        assert (np.array(page.evaluate(OVERLAY_ALPHA)) == 255).all()
        for text, shown in hover_texts():
            assert text == shown
        page.check("#view-confidence")
        page.wait_for_selector("body[data-state=ready][data-view=confidence]")
        assert len(asked) == 1
        browser.close()
    assert not errors, errors
    if os.environ.get("SEGFORMER_SCREENSHOT"):
        target = Path(os.environ["SEGFORMER_SCREENSHOT"])
        shutil.copy(tmp_path / "serve_confidence.png", target.with_name(f"{target.stem}_confidence{target.suffix}"))


def test_page_shows_the_api_error(page_server, tmp_path):
    url, _ = page_server
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture at all")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.segformer.model !== null")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("body[data-state=error]", timeout=30_000)
        assert page.text_content("#status") == "415: not an image: the data is in no image format Pillow reads"
        browser.close()
