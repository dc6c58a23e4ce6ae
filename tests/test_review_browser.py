"""The review page in a real browser: Debian's chromium, headless, driven by Selenium through Debian's chromedriver
(named explicitly, so Selenium Manager never downloads anything). The JSON API alone is in test_review.py.

``RFWATCH_UPDATE_SCREENSHOT=1`` also writes the screenshot the README shows (docs/review-page.png).
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
from pathlib import Path

import pytest
from helpers import REPO, DaemonThread, files_under, wait_for
from PIL import Image
from test_review import TOKEN, UNSURE, Api, JournalView, free_port, review_config, wait_listening, write_one_by_one

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "review-page.png"
WINDOW = (1000, 700)

# Colours mixed so that no class stands out (the stand-in scores each channel's share): the model is unsure.
PURE = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


def mixed_jpeg(shares: dict[str, float], seed: int, size=(320, 240)) -> bytes:
    """Vertical bands of the given colours (their share of the width), with a little noise: unique bytes."""
    img = Image.new("RGB", size)
    x = 0
    for name, share in shares.items():
        width = round(share * size[0])
        img.paste(PURE[name], (x, 0, min(size[0], x + width), size[1]))
        x += width
    rnd = random.Random(seed)
    px = img.load()
    for _ in range(24):
        px[rnd.randrange(size[0]), rnd.randrange(size[1])] = tuple(rnd.randrange(256) for _ in range(3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


MIXES = {
    "IMG_0412.jpg": {"red": 0.5, "green": 0.3, "blue": 0.2},
    "IMG_0413.jpg": {"green": 0.45, "blue": 0.35, "red": 0.2},
    "IMG_0415.jpg": {"blue": 0.5, "red": 0.25, "green": 0.25},
    "IMG_0418.jpg": {"red": 0.4, "blue": 0.4, "green": 0.2},
    "IMG_0421.jpg": {"green": 0.5, "red": 0.3, "blue": 0.2},
}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"no {' or '.join(missing)}: the review page is tested in Debian's chromium "
            "(apt-get install -y chromium chromium-driver; .ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(20)
    # The window's size includes the browser's own bars: make the page's viewport WINDOW.
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def _fresh_page(request):
    """Each test starts with no browser log of an earlier one, and leaves no page polling a server that stops
    (even when it fails half way)."""
    if "browser" not in request.fixturenames:
        yield
        return
    driver = request.getfixturevalue("browser")
    driver.get_log("browser")  # read is emptied
    yield
    driver.get("about:blank")


class Page:
    def __init__(self, driver, port: int):
        self.driver, self.base = driver, f"http://127.0.0.1:{port}"

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def cards(self) -> list[str]:
        """The names on the grid's cards, in order."""
        return self.js("return [...document.querySelectorAll('#grid .card .name')].map(e => e.textContent)")

    def selected(self) -> list[str]:
        return self.js("return [...document.querySelectorAll('#grid .card.selected .name')].map(e => e.textContent)")

    def count(self) -> str:
        return self.js("return document.getElementById('count').textContent")

    def images_loaded(self) -> list[int]:
        return self.js(
            "return [...document.querySelectorAll('#grid .card img')].map(i => i.complete ? i.naturalWidth : 0)"
        )

    def press(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(*keys).perform()

    def slow_lists(self, ms: int) -> None:
        """Answers to GET /api/items reach the page ``ms`` late (asked for at once: they may be stale by then)."""
        self.js(
            """const ms = arguments[0], fetch = window.realFetch = window.realFetch || window.fetch;
            window.fetch = (url, options) => String(url).endsWith("/api/items")
              ? fetch(url, options).then((r) => new Promise((resolve) => setTimeout(() => resolve(r), ms)))
              : fetch(url, options);""",
            ms,
        )

    def drop_next_post(self) -> None:
        """The page's next POST fails as if rfwatch could not be reached (restarting, say)."""
        self.js(
            """const fetch = window.realFetch = window.realFetch || window.fetch;
            window.fetch = (url, options) => {
              window.fetch = fetch;
              return options && options.method === "POST" ? Promise.reject(new TypeError("Failed to fetch"))
                : fetch(url, options);
            };"""
        )

    def normal_fetch(self) -> None:
        self.js("if (window.realFetch) window.fetch = window.realFetch;")

    def watch_cards(self, seconds: float) -> set[str]:
        """Every name on the grid during the next ``seconds``."""
        seen: set[str] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen.update(self.cards())
            time.sleep(0.03)
        return seen

    def errors(self) -> list[dict]:
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_page_labels_with_keys_and_keeps_up_with_changes_elsewhere(
    tmp_path, server, platform, api_key, browser, caplog
):
    from selenium.webdriver.common.keys import Keys

    caplog.set_level(logging.INFO)

    port = free_port()
    cfg = review_config(tmp_path, server, port, token=TOKEN, concurrency=1)  # (in order, for the screenshot)
    api, journal = Api(port, TOKEN), JournalView(tmp_path)
    page = Page(browser, port)
    with DaemonThread(cfg):
        wait_listening(port)  # the page is served once the daemon watches its folders
        for n, (name, mix) in enumerate(MIXES.items()):
            (tmp_path / "inbox" / name).write_bytes(mixed_jpeg(mix, n))
        wait_for(lambda: api.items()["waiting"] == 5, what="five files waiting")
        wait_for(lambda: api.items()["classes"] == ["red", "green", "blue"], what="the model's classes")
        names = api.names()  # oldest first, as the page shows them

        # Opened once with the token: the address bar drops it, the cookie carries it from then on.
        browser.get(f"{page.base}/?token={TOKEN}")
        assert browser.current_url == page.base + "/"
        assert TOKEN not in browser.page_source
        wait_for(lambda: page.cards() == names, timeout=10, what="the waiting files on the page")
        wait_for(lambda: all(w > 0 for w in page.images_loaded()), timeout=10, what="the thumbnails")
        assert len(page.images_loaded()) == 5
        assert page.count() == "5 files waiting"
        first = browser.find_element("css selector", "#grid .card")
        prediction = api.items()["items"][0]["prediction"]["predictions"]
        top3 = [f"{p['class']} {p['confidence'] * 100:.1f} %" for p in prediction[:3]]
        shown_scores = [e.text for e in first.find_elements("css selector", ".top3 .score-text")]
        assert shown_scores == top3  # the model's, not the label's
        assert float(top3[0].split()[1]) < 60  # unsure
        assert [b.text for b in first.find_elements("css selector", ".classes button")] == [
            "1 red",
            "2 green",
            "3 blue",
        ]
        assert page.selected() == [names[0]]
        shot = tmp_path / "review-page.png"
        browser.save_screenshot(str(shot))
        with Image.open(shot) as img:
            assert img.format == "PNG" and img.size == WINDOW, img.size
        if os.environ.get("RFWATCH_UPDATE_SCREENSHOT"):  # 256 colours: a page's flat colours, a third of the bytes
            with Image.open(shot) as img:
                img.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(SCREENSHOT, optimize=True)

        # Arrows move the selection: across, and down a row (three columns at this width).
        page.press(Keys.ARROW_RIGHT)
        assert page.selected() == [names[1]]
        page.press(Keys.ARROW_DOWN)
        assert page.selected() == [names[4]]
        page.press(Keys.ARROW_RIGHT)  # the last one: stays
        assert page.selected() == [names[4]]
        page.press(Keys.ARROW_UP, Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_LEFT)
        assert page.selected() == [names[0]]
        page.press(Keys.ARROW_RIGHT)

        # A digit labels the selected file with that class: it leaves the grid and reaches its folder. And it stays
        # gone, even when a list asked for before the label arrives after it.
        page.slow_lists(800)
        page.js("refresh()")
        page.press("2")
        wait_for(lambda: names[1] not in page.cards(), timeout=5, what="the labelled file leaving the grid")
        assert names[1] not in page.watch_cards(1.2), "a stale list brought a decided file back"
        page.normal_fetch()
        wait_for(lambda: (tmp_path / "sorted" / "green" / names[1]).exists(), what="the labelled file sorted")
        assert page.count() == "4 files waiting"
        assert page.selected() == [names[2]]  # the next one, in its place

        # x rejects it.
        page.press("x")
        wait_for(lambda: (tmp_path / "failed" / names[2]).exists(), what="the rejected file in failed/")
        wait_for(lambda: journal.state(names[2]) == "failed", what="the rejected file failed")
        assert journal.file(names[2]).last_error == "rejected in review"
        assert page.cards() == [names[0], names[3], names[4]] and page.count() == "3 files waiting"
        assert page.selected() == [names[3]]

        # Decided elsewhere (another page, the JSON API): it leaves this page by itself, and if it was the
        # selected one, the one that takes its place is selected.
        assert api.label(api.id_of(names[3]), "blue")[0] == 200
        wait_for(lambda: names[3] not in page.cards(), timeout=5, what="a file decided elsewhere leaving the grid")
        wait_for(lambda: page.count() == "2 files waiting", timeout=5, what="the count")
        assert page.selected() == [names[4]]
        # A new file to review: it appears by itself.
        (tmp_path / "inbox" / "IMG_0430.jpg").write_bytes(mixed_jpeg({"blue": 0.45, "green": 0.35, "red": 0.2}, 99))
        wait_for(lambda: "IMG_0430.jpg" in page.cards(), timeout=10, what="a new file appearing")
        wait_for(lambda: page.count() == "3 files waiting", timeout=5, what="the count")
        wait_for(lambda: all(w > 0 for w in page.images_loaded()), timeout=10, what="its thumbnail")

        # A click on a class labels too; when rfwatch cannot be reached, it says so, and a second click works.
        button = f"#grid .card[data-id='{api.id_of(names[0])}'] .classes button[data-class='red']"
        page.drop_next_post()
        browser.find_element("css selector", button).click()
        message = browser.find_element("css selector", "#message")
        wait_for(lambda: "cannot reach rfwatch" in message.text, timeout=5, what="the page saying so")
        assert names[0] in page.cards() and journal.state(names[0]) == "review"
        browser.find_element("css selector", button).click()
        wait_for(lambda: (tmp_path / "sorted" / "red" / names[0]).exists(), what="the clicked file sorted")
        wait_for(lambda: page.cards() == [names[4], "IMG_0430.jpg"], timeout=5, what="the grid")
        assert page.count() == "2 files waiting"
        assert page.errors() == []  # nothing failed to load, no script error
        browser.get("about:blank")  # stop asking a server that is about to stop
    assert f"review page at {page.base}/" in caplog.text and TOKEN not in caplog.text
    assert {p.relative_to(tmp_path).as_posix() for p in files_under(tmp_path / "sorted")} == {
        f"sorted/green/{names[1]}",
        f"sorted/blue/{names[3]}",
        f"sorted/red/{names[0]}",
    }


HOSTILE = '<img src=x onerror="document.title=1">.jpg'


def test_multi_label_classes_toggle_with_digits_and_save_with_enter(tmp_path, server, platform, api_key, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.keys import Keys

    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, model="tags/1")
    api, journal = Api(port), JournalView(tmp_path)
    page = Page(browser, port)
    names = [HOSTILE, "b.jpg"]
    with DaemonThread(cfg):
        wait_listening(port)  # the page is served once the daemon watches its folders
        write_one_by_one(
            tmp_path, {HOSTILE: mixed_jpeg(MIXES["IMG_0412.jpg"], 1), "b.jpg": mixed_jpeg(MIXES["IMG_0413.jpg"], 2)}
        )
        wait_for(lambda: api.items()["classes"] == ["red", "green", "blue"], what="the model's classes")
        browser.get(page.base + "/")
        wait_for(lambda: page.cards() == names, timeout=10, what="the waiting files")  # a name is text, never HTML
        assert page.js("return document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.js("return document.title") == "rfwatch review"
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert

        def pressed(name: str) -> list[str]:
            card = f"#grid .card[data-id='{api.id_of(name)}']"
            return page.js(
                f"return [...document.querySelectorAll(`{card} .classes button[aria-pressed=true]`)]"
                ".map(b => b.dataset.class)"
            )

        assert pressed(HOSTILE) == []  # the model predicted none
        # Every class's score, each bar with the threshold marked where the model's threshold is (0.5: half way).
        card0 = "#grid .card:first-child"
        scores = page.js(f"return [...document.querySelectorAll('{card0} .score-text')].map(e => e.textContent)")
        assert scores == [f"{c} {v * 100:.1f} %" for c, v in sorted(UNSURE.items(), key=lambda kv: -kv[1])]
        marks = page.js(
            f"return [...document.querySelectorAll('{card0} .track')].map(t => {{"
            "const m = t.querySelector('.threshold'), r = t.getBoundingClientRect(), q = m.getBoundingClientRect();"
            "return (q.left + q.width / 2 - r.left) / r.width; })"
        )
        assert marks == [pytest.approx(0.5, abs=0.02)] * 3
        assert page.js(f"return document.querySelector('{card0} .threshold-note').textContent") == "threshold 50 %"
        assert page.js("return document.querySelector('#grid .card .save').hidden") is False
        page.press("1", "3")
        assert pressed(HOSTILE) == ["red", "blue"]
        page.press("3", "2")
        assert pressed(HOSTILE) == ["red", "green"]
        assert api.items()["waiting"] == 2  # toggling decides nothing
        page.press(Keys.ENTER)
        wait_for(lambda: page.cards() == ["b.jpg"], timeout=5, what="the saved file leaving the grid")
        wait_for(lambda: (tmp_path / "sorted" / "red" / HOSTILE).exists(), what="the saved file sorted")
        (decision,) = journal.decisions(journal.file(HOSTILE).id)
        assert list(decision.classes) == ["red", "green"]

        # With the mouse: a class button toggles, Save saves.
        card = browser.find_element("css selector", "#grid .card")
        card.find_element("css selector", ".classes button[data-class='blue']").click()
        assert pressed("b.jpg") == ["blue"]
        card = browser.find_element("css selector", "#grid .card")  # drawn anew
        card.find_element("css selector", ".save").click()
        wait_for(lambda: page.cards() == [], timeout=5, what="the grid empty")
        wait_for(lambda: (tmp_path / "sorted" / "blue" / "b.jpg").exists(), what="b.jpg sorted")
        assert page.count() == "0 files waiting"
        assert "Nothing waits for review." in browser.find_element("css selector", "#grid").text
        assert page.errors() == []
        browser.get("about:blank")
    (decision,) = journal.decisions(journal.file("b.jpg").id)
    assert list(decision.classes) == ["blue"]


# --- the full-size view, taking back, filters, selection and pages ------------------------------------------------

FULLSIZE_SHOT = REPO / "docs" / "review-fullsize.png"


def big_jpeg(shares: dict[str, float], seed: int) -> bytes:
    """A camera-sized picture (3000x2000) of colour bands, with a small white mark near its bottom-right corner."""
    data = mixed_jpeg(shares, seed, size=(3000, 2000))
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.paste((255, 255, 255), (2800, 1850, 2830, 1880))  # "a tail in the corner": visible only zoomed in
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class Viewer:
    def __init__(self, page: Page):
        self.page = page

    def open(self) -> bool:
        return self.page.js("return !document.getElementById('viewer').hidden")

    def state(self) -> dict:
        """The picture as shown: its scale, its place in the stage, its natural size, and the stage's size."""
        return self.page.js(
            """const img = document.getElementById('full'), stage = document.getElementById('stage');
            const r = img.getBoundingClientRect(), s = stage.getBoundingClientRect();
            return {scale: r.width / img.naturalWidth, left: r.left - s.left, top: r.top - s.top,
                    width: r.width, height: r.height, natural: [img.naturalWidth, img.naturalHeight],
                    stage: [s.width, s.height], loaded: img.complete && img.naturalWidth > 0,
                    name: document.getElementById('v-name').textContent,
                    zoom: document.getElementById('zoom').textContent}"""
        )

    def wait_loaded(self, name: str) -> dict:
        wait_for(
            lambda: (s := self.state())["loaded"] and s["name"] == name and "loading" not in s["zoom"],
            timeout=15,
            what=f"{name} full size",
        )
        return self.state()


def test_full_size_view_zooms_pans_labels_and_a_decision_is_taken_back_with_z(
    tmp_path, server, platform, api_key, browser, caplog
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    caplog.set_level(logging.INFO)
    port = free_port()
    cfg = review_config(tmp_path, server, port, token=TOKEN, concurrency=1)
    api, journal = Api(port, TOKEN), JournalView(tmp_path)
    page, viewer = Page(browser, port), Viewer(Page(browser, port))
    files = {name: mixed_jpeg(mix, n) for n, (name, mix) in enumerate(MIXES.items())}
    files["IMG_0412.jpg"] = big_jpeg(MIXES["IMG_0412.jpg"], 0)
    with DaemonThread(cfg):
        wait_listening(port)
        write_one_by_one(tmp_path, files)
        wait_for(lambda: api.items()["classes"] == ["red", "green", "blue"], what="the model's classes")
        items = {i["name"]: i for i in api.items()["items"]}
        names = list(items)
        browser.get(f"{page.base}/?token={TOKEN}")
        wait_for(lambda: page.cards() == names, timeout=10, what="the waiting files")

        # A click on the picture opens it full size: upright, at its full resolution, fitted to the window.
        browser.find_element("css selector", "#grid .card img").click()
        assert viewer.open()
        s = viewer.wait_loaded(names[0])
        assert s["natural"] == [3000, 2000]
        assert s["width"] <= s["stage"][0] + 0.5 and s["height"] <= s["stage"][1] + 0.5
        assert max(s["width"] / s["stage"][0], s["height"] / s["stage"][1]) > 0.99  # fills the window one way
        fit = s["scale"]
        assert s["zoom"] == f"{round(fit * 100)} % (fit)"
        # Every class's score beside it, the class {class} stands for marked.
        scores = page.js("return [...document.querySelectorAll('#v-scores .score-text')].map(e => e.textContent)")
        predictions = items[names[0]]["prediction"]["predictions"]
        assert scores == [f"{p['class']} {p['confidence'] * 100:.1f} %" for p in predictions]
        assert page.js("return document.querySelector('#v-scores li .decides').parentNode.textContent").startswith(
            items[names[0]]["class"]
        )
        if os.environ.get("RFWATCH_UPDATE_SCREENSHOT"):
            shot = tmp_path / "fullsize.png"
            browser.save_screenshot(str(shot))
            with Image.open(shot) as img:
                small = img.convert("RGB").resize((WINDOW[0] * 3 // 4, WINDOW[1] * 3 // 4), Image.Resampling.LANCZOS)
                small.quantize(128, dither=Image.Dither.NONE).save(FULLSIZE_SHOT, optimize=True)

        # + zooms in about the middle, - out; the wheel zooms about the pointer.
        page.press("+")
        assert viewer.state()["scale"] == pytest.approx(fit * 1.25, rel=1e-3)
        page.press("-")
        assert viewer.state()["scale"] == pytest.approx(fit, rel=1e-3)
        stage = browser.find_element("css selector", "#stage")
        ActionChains(browser).scroll_to_element(stage).perform()
        from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(stage), 0, -200).perform()
        wait_for(lambda: viewer.state()["scale"] > fit * 1.2, timeout=5, what="the wheel zooming in")
        page.press("0")  # fit again
        assert viewer.state()["scale"] == pytest.approx(fit, rel=1e-3)
        # A double-click shows the full resolution (one picture pixel per screen pixel) at the point clicked.
        ActionChains(browser).move_to_element_with_offset(stage, 100, 80).double_click().perform()
        s = viewer.state()
        assert s["scale"] == pytest.approx(1.0, rel=1e-3) and s["zoom"] == "100 %"
        # Drag moves it; so do the arrow keys.
        before = viewer.state()
        ActionChains(browser).move_to_element(stage).click_and_hold().move_by_offset(-150, -90).release().perform()
        after = viewer.state()
        assert (after["left"] - before["left"], after["top"] - before["top"]) == pytest.approx((-150, -90), abs=2)
        page.press(Keys.ARROW_LEFT, Keys.ARROW_UP)
        moved = viewer.state()
        assert (moved["left"] - after["left"], moved["top"] - after["top"]) == pytest.approx((80, 80), abs=1)
        assert moved["scale"] == pytest.approx(1.0, rel=1e-3)  # panning does not zoom

        # A label from the full-size view: the file is sorted, and the view shows the next one, fitted.
        page.press("2")
        wait_for(lambda: (tmp_path / "sorted" / "green" / names[0]).exists(), what="the label applied")
        s = viewer.wait_loaded(names[1])
        assert "(fit)" in s["zoom"]
        assert page.cards()[0] == names[1]

        # Escape closes it; Enter (or Space) on the selected card opens it again.
        page.press(Keys.ESCAPE)
        assert not viewer.open()
        assert page.selected() == [names[1]]
        page.press(Keys.SPACE)
        viewer.wait_loaded(names[1])
        page.press(Keys.ESCAPE)

        # "z" takes the label back: the file waits again, in its place, and leaves sorted/.
        assert "last: " + names[0] in browser.find_element("css selector", "#last-decision").text
        page.press("z")
        wait_for(lambda: journal.state(names[0]) == "review", timeout=10, what="the decision taken back")
        assert (tmp_path / "review" / names[0]).exists() and not (tmp_path / "sorted" / "green" / names[0]).exists()
        wait_for(lambda: page.cards() == names, timeout=5, what="the file back on the page, in its place")
        assert page.selected() == [names[0]]
        assert browser.find_element("css selector", "#take-back").get_attribute("disabled") == "true"
        # ... and labelled anew, with a click on the visible button's neighbour: the class buttons.
        page.press("3")
        wait_for(lambda: (tmp_path / "sorted" / "blue" / names[0]).exists(), what="the new label applied")
        browser.find_element("css selector", "#take-back").click()  # the visible button does the same as z
        wait_for(lambda: journal.state(names[0]) == "review", timeout=10, what="taken back with the button")
        decisions = journal.decisions(journal.file(names[0]).id)
        assert [(d.classes, d.taken_back is not None) for d in decisions] == [(("green",), True), (("blue",), True)]

        # Filters: by the model's class, then by a confidence range as well.
        wait_for(lambda: page.cards() == names, timeout=5, what="all five")
        Select(browser.find_element("css selector", "#f-class")).select_by_value("red")
        reds = [n for n in names if items[n]["guess"] == ["red"]]
        assert 0 < len(reds) < len(names)
        wait_for(lambda: page.cards() == reds, timeout=5, what="the model's reds only")
        assert page.count() == f"{len(reds)} file{'s' if len(reds) != 1 else ''} waiting"
        Select(browser.find_element("css selector", "#f-class")).select_by_value("")
        low = browser.find_element("css selector", "#f-min")
        low.send_keys("45", Keys.TAB)
        high = browser.find_element("css selector", "#f-max")
        high.send_keys("50", Keys.TAB)
        in_range = [n for n in names if 0.45 <= items[n]["score"] <= 0.50]
        assert 0 < len(in_range) < len(names)
        wait_for(lambda: page.cards() == in_range, timeout=5, what="the files between 45 and 50 %")
        assert page.errors() == []
        browser.get("about:blank")
    assert "a token is needed: open it once as ?token=<review.token from the config>" in caplog.text
    assert TOKEN not in caplog.text


def test_a_thousand_waiting_files_page_and_ten_take_the_models_guesses(tmp_path, server, api_key, browser):
    from test_review_many import COLORS, make_waiting

    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    port = free_port()
    cfg = review_config(tmp_path, server, port)
    started = time.monotonic()
    ids = make_waiting(tmp_path, cfg, 1000)
    print(f"\n1,000 waiting files journaled in {time.monotonic() - started:.1f} s")
    page = Page(browser, port)
    journal = JournalView(tmp_path)
    with ReviewServer(load_config(cfg), lambda model: COLORS):
        browser.get(page.base + "/")
        wait_for(lambda: len(page.cards()) == 60, timeout=20, what="the first page")
        first_shown = page.js("return window.reviewTimes.firstShown")
        print(f"\nreview page, 1,000 waiting: first page shown {first_shown:.0f} ms after the page began loading")
        assert page.count() == "1000 files waiting"
        assert page.js("return document.getElementById('page-info').textContent") == "page 1 of 17"

        # Ten selected (a click, then shift-click on the tenth), and the model's guess accepted for all ten.
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        browser.find_elements("css selector", "#grid .card .pick")[0].click()
        tenth = browser.find_elements("css selector", "#grid .card .pick")[9]  # the grid is drawn anew
        ActionChains(browser).key_down(Keys.SHIFT).click(tenth).key_up(Keys.SHIFT).perform()
        assert browser.find_element("css selector", "#bulk-count").text == "10 selected:"
        browser.find_element("css selector", "#accept").click()
        wait_for(lambda: page.count() == "990 files waiting", timeout=10, what="ten labelled")
        for n, file_id in enumerate(ids[:10]):
            (decision,) = journal.decisions(file_id)
            assert decision.classes == (COLORS[n % 3],) and decision.by == "review page"
        assert page.cards()[0] == "w0010.jpg"
        # "Select all shown" selects the page, no more.
        browser.find_element("css selector", "#select-all").click()
        assert browser.find_element("css selector", "#bulk-count").text == "60 selected:"
        browser.find_element("css selector", "#select-none").click()

        # Page by page to the end: every waiting file once, in order.
        seen: list[str] = []
        while True:
            wait_for(lambda s=seen: page.cards() and page.cards()[0] not in s, timeout=10, what="the next page")
            seen += page.cards()
            button = browser.find_element("css selector", "#next")
            if button.get_attribute("disabled"):
                break
            button.click()
        assert seen == [f"w{n:04d}.jpg" for n in range(10, 1000)]
        assert page.errors() == []
        browser.get("about:blank")
