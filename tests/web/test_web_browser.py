"""The page in a real browser (Debian's Chromium driven by Playwright): `dff-web --index` starts its
own `dff-serve` on an index of real photos; the test uploads a query, drags a box with the mouse,
checks the ranking and the localization boxes, asks why a result matched, reloads the shared URL,
opens a result, clicks "more like this" and uploads a text file to see the error in words.

Screenshots go to the test's temp folder, and to $DFF_WEB_SCREENSHOTS when set (how the README's
docs/web-search.png and docs/web-why.png were made)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from web_fixtures import CAT_BOX, INDEXED_PHOTOS, composite_query

from searcher.launcher import WEB_LISTENING, console_script, launch_child

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DFF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SEARCH_TIMEOUT_MS = 180_000  # localization on a busy 2-core machine


@pytest.fixture
def page_url(web_index: Path, tmp_path: Path):
    command = [console_script("dff-web"), "--index", str(web_index), "--port", "0", "--thumbnail-side", "240",
               "--serve-arg=--torch-threads", "--serve-arg=1"]
    web = launch_child(command, WEB_LISTENING, log_path=tmp_path / "web.log", timeout=180)
    try:
        yield web.url
    finally:
        assert web.stop(60) == 0, (tmp_path / "web.log").read_text()[-2000:]


def _playwright_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) "
                    "or set DFF_CHROMIUM; .ci/run installs it")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")


@pytest.fixture
def browser_page(tmp_path: Path):
    sync_api = _playwright_or_skip()
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1180, "height": 860},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(SEARCH_TIMEOUT_MS)
            yield page
        finally:
            context.close()


def _shot(page, tmp_path: Path, name: str, element: str | None = None) -> None:
    if element:
        page.locator(element).screenshot(path=str(tmp_path / name))
    else:
        page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("DFF_WEB_SCREENSHOTS")
    if target:  # a small copy for the docs: at most 900 px wide, 256 colours
        from PIL import Image

        Path(target).mkdir(parents=True, exist_ok=True)
        with Image.open(tmp_path / name) as shot:
            shot = shot.convert("RGB")
            if shot.width > 900:
                shot = shot.resize((900, round(shot.height * 900 / shot.width)), Image.Resampling.LANCZOS)
            shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(Path(target) / name, optimize=True)


def _wait_for_results(page, expect: str) -> None:
    page.wait_for_function(
        "expect => { const s = document.getElementById('status').textContent;"
        " return / results? in /.test(s) && s.includes(expect) && !document.getElementById('grid').hasAttribute('aria-busy'); }",
        arg=expect,
    )


def _card_names(page) -> list[str]:
    return page.locator(".card .name").all_inner_texts()


def test_search_with_a_box_in_a_real_browser(page_url: str, browser_page, tmp_path: Path) -> None:
    page = browser_page
    query_file = tmp_path / "coffee-and-cat.jpg"
    composite_query().save(query_file, quality=90)

    page.goto(page_url)
    page.wait_for_selector("body[data-ready='1']")
    assert re.search(r"images\s+10", page.locator("#index-panel").inner_text())
    assert "efficientnet-lite0" in page.locator("#index-panel").inner_text()

    # upload: the whole image is searched at once
    page.set_input_files("#file-input", str(query_file))
    _wait_for_results(page, "(whole image)")
    assert len(_card_names(page)) == len(INDEXED_PHOTOS)  # the page asks for 12; the index holds 10
    assert _card_names(page)[0] in {"chelsea.jpg", "coffee.jpg"}

    # drag a box around the cat with the mouse: the search runs again with the box
    img = page.locator("#query-img").bounding_box()
    scale = img["width"] / 640
    x0, y0, x1, y1 = CAT_BOX
    page.mouse.move(img["x"] + (x0 + 4) * scale, img["y"] + (y0 + 3) * scale)
    page.mouse.down()
    for step in range(1, 11):
        t = step / 10
        page.mouse.move(img["x"] + (x0 + 4 + t * (x1 - x0 - 8)) * scale, img["y"] + (y0 + 3 + t * (y1 - y0 - 6)) * scale)
    page.mouse.up()
    _wait_for_results(page, "(query box)")
    assert _card_names(page)[0] == "chelsea.jpg"
    readout = page.locator("#box-readout").inner_text()
    numbers = [float(v) for v in re.findall(r"\d+", readout)[:4]]
    assert numbers[0] == pytest.approx(324, abs=6) and numbers[2] == pytest.approx(636, abs=6), readout
    assert "box=" in page.url and "q=u-" in page.url

    # localization boxes are drawn over the results, inside their thumbnails
    boxes = page.locator(".card .result-box")
    assert boxes.count() >= 5
    first_thumb = page.locator(".card").first.locator(".thumb img").bounding_box()
    first_box = page.locator(".card").first.locator(".result-box").bounding_box()
    assert first_box["width"] > 10 and first_box["height"] > 10
    assert first_thumb["x"] - 4 <= first_box["x"] and first_box["x"] + first_box["width"] <= first_thumb["x"] + first_thumb["width"] + 4
    page.wait_for_function("() => [...document.querySelectorAll('.card .thumb img')].every(i => i.complete && i.naturalWidth > 0)")
    _shot(page, tmp_path, "web-search.png")

    # why did this match: the query's concepts (the kept ones marked) and the shared one in rank 1
    assert page.locator("#concepts .concept").count() == 4 and page.locator("#concepts .concept.kept").count() >= 1
    page.locator(".card").first.locator("button.why").click()
    page.wait_for_selector("#why-result canvas.shared-concept")
    shared = int(page.locator("#why-result canvas.shared-concept").get_attribute("data-concept"))
    kept = [int(v) for v in page.locator("#concepts .concept.kept").evaluate_all("els => els.map(e => e.dataset.index)")]
    assert shared in kept
    page.check("#show-concepts")
    page.wait_for_function("() => document.querySelector('#why-result canvas.shared-concept').width > 0")
    _shot(page, tmp_path, "web-why.png", element="#query-panel")

    # re-ranking the top 5 by the stored factor rows (rr=5), said in the status line; then off (0)
    page.fill("#rerank", "5")
    page.locator("#rerank").dispatch_event("change")
    page.wait_for_function("() => location.search.includes('rr=5')")
    _wait_for_results(page, "top 5 re-ranked by factors")
    assert _card_names(page)[0] == "chelsea.jpg"
    # re-ranking off (0): searched again, kept in the URL
    page.fill("#rerank", "0")
    page.locator("#rerank").dispatch_event("change")
    page.wait_for_function("() => location.search.includes('rr=0')")
    _wait_for_results(page, "(query box)")
    assert _card_names(page)[0] == "chelsea.jpg"

    # the URL keeps the state: a reload shows the same search
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    _wait_for_results(page, "(query box)")
    assert _card_names(page)[0] == "chelsea.jpg"
    assert page.locator("#rerank").input_value() == "0"
    assert page.locator("#rerank").get_attribute("placeholder") == "auto: 100"  # dff-serve's default depth

    # a click on a result opens the full image with its box
    page.locator(".card").first.locator(".thumb").click()
    page.wait_for_function("() => { const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth > 0; }")
    assert not page.locator("#viewer").is_hidden() and page.locator("#viewer-box").is_visible()
    page.keyboard.press("Escape")
    assert page.locator("#viewer").is_hidden()

    # more like this: the second result becomes the query and ranks first with itself
    second = page.locator(".card").nth(1)
    second_id, second_name = second.get_attribute("data-id"), second.locator(".name").inner_text()
    second.locator("button.more").click()
    page.wait_for_function("id => location.search.includes('q=id-' + id)", arg=second_id)
    _wait_for_results(page, "(whole image)")
    assert _card_names(page)[0] == second_name
    assert float(page.locator(".card .score").first.inner_text()) == pytest.approx(1.0, abs=2e-3)

    # drag and drop, then paste: an indexed photo's bytes as a File; it ranks first with itself
    page.evaluate("() => history.replaceState(null, '', '?')")
    for event, card in (("drop", 2), ("paste", 3)):
        target = page.locator(".card").nth(card)
        wanted_id, wanted_name = target.get_attribute("data-id"), target.locator(".name").inner_text()
        page.evaluate(
            """async ([event, id]) => {
                 const blob = await (await fetch('/api/images/' + id)).blob();
                 const data = new DataTransfer();
                 data.items.add(new File([blob], 'photo-' + id + '.jpg', {type: blob.type}));
                 const init = {bubbles: true, cancelable: true};
                 const dispatched = event === 'drop'
                   ? new DragEvent('drop', {...init, dataTransfer: data})
                   : new ClipboardEvent('paste', {...init, clipboardData: data});
                 document.getElementById('drop-zone').dispatchEvent(dispatched);
               }""",
            [event, wanted_id],
        )
        page.wait_for_function("() => location.search.includes('q=u-')")  # set when its search starts
        _wait_for_results(page, "(whole image)")
        assert _card_names(page)[0] == wanted_name, event
        page.evaluate("() => history.replaceState(null, '', '?')")

    # a text file: the page says so in words and keeps the last search
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a photo\n")
    page.set_input_files("#file-input-2", str(text_file))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.locator("#error").inner_text()
    assert page.locator("#error").get_attribute("data-code") == "not-an-image"
    assert _card_names(page)[0] == wanted_name


@pytest.fixture
def phone_page(tmp_path: Path):
    """A phone-sized page with a touch screen (390 x 844 CSS px, as an iPhone 12-15)."""
    sync_api = _playwright_or_skip()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                          is_mobile=True, has_touch=True)
            page = context.new_page()
            page.set_default_timeout(SEARCH_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _touch_drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 10) -> None:
    """A one-finger drag through Chromium's own input pipeline (CDP touch events), so the page sees
    the pointer events of a real touch screen (pointerType 'touch')."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": start[0], "y": start[1]}]})
    for step in range(1, steps + 1):
        t = step / steps
        point = {"x": start[0] + t * (end[0] - start[0]), "y": start[1] + t * (end[1] - start[1])}
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_phone_screen_and_touch_box(page_url: str, phone_page, tmp_path: Path) -> None:
    """On a phone-sized touch screen the page is one column with no sideways scrolling, a box drawn
    with a finger searches with that box, and a tap opens a result."""
    page = phone_page
    query_file = tmp_path / "coffee-and-cat.jpg"
    composite_query().save(query_file, quality=90)
    page.goto(page_url)
    page.wait_for_selector("body[data-ready='1']")
    page.set_input_files("#file-input", str(query_file))
    _wait_for_results(page, "(whole image)")

    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    query_panel = page.locator("#query-panel").bounding_box()
    first_card = page.locator(".card").first.bounding_box()
    assert query_panel["x"] >= 0 and query_panel["x"] + query_panel["width"] <= 390
    assert first_card["y"] >= query_panel["y"] + query_panel["height"] - 1  # results below the query: one column

    page.evaluate("() => { window.pointerTypes = new Set();"
                  " document.getElementById('query-stage').addEventListener('pointerdown', e => window.pointerTypes.add(e.pointerType)); }")
    page.locator("#query-img").scroll_into_view_if_needed()
    img = page.locator("#query-img").bounding_box()
    scale = img["width"] / 640
    x0, y0, x1, y1 = CAT_BOX
    _touch_drag(page, (img["x"] + (x0 + 4) * scale, img["y"] + (y0 + 3) * scale),
                (img["x"] + (x1 - 4) * scale, img["y"] + (y1 - 3) * scale))
    assert page.evaluate("() => [...window.pointerTypes]") == ["touch"]
    _wait_for_results(page, "(query box)")
    assert _card_names(page)[0] == "chelsea.jpg"
    numbers = [float(v) for v in re.findall(r"\d+", page.locator("#box-readout").inner_text())[:4]]
    # a finger on a 360 px wide image: one CSS pixel is ~1.8 image pixels
    assert numbers[0] == pytest.approx(x0 + 4, abs=8) and numbers[2] == pytest.approx(x1 - 4, abs=8)
    _shot(page, tmp_path, "web-phone.png")

    page.locator(".card").first.locator(".thumb").tap()
    page.wait_for_function("() => { const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth > 0; }")
    assert not page.locator("#viewer").is_hidden()
    viewer = page.locator("#viewer-img").bounding_box()
    assert viewer["x"] >= 0 and viewer["x"] + viewer["width"] <= 390 + 1
