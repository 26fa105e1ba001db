"""The demo page and /docs in a real headless browser (Debian's chromium and
chromium-driver, driven by selenium), against a real server on 127.0.0.1.

The page: a real photo uploaded through the file input, the predictions rendered with
the scores /v1/classify gives for the same photo, the experts the gate chose, the
precision auto chose, the compare view at every loaded precision, and a bad file's
error. /docs and /redoc render the API from the package's own assets. On every page
the browser sent no request to anyone but the server.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import photo_jpeg
from tests.service.servers import ServerProcess, server

pytestmark = pytest.mark.timeout(300)

WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(
            "chromium and chromium-driver are not installed (Debian packages; `make test` "
            "installs them when run as root)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # its network log
    # The driver's path given: selenium's manager looks nothing up on the network.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(shared_repo: Path) -> Iterator[ServerProcess]:
    with server(shared_repo, "--models", "tiny-moe,tiny", "--precisions", "fp32,int8") as proc:
        yield proc


def wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def requests_elsewhere(driver: Any, base: str) -> list[str]:
    """The URLs the browser asked of anyone but the server since the last call (from
    its network log), less those it blocked itself before sending (by the page's
    Content-Security-Policy)."""
    sent, blocked = {}, set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    local = (base, "blob:", "data:")
    return [url for rid, url in sent.items() if rid not in blocked and not url.startswith(local)]


def open_demo(driver: Any, live: ServerProcess, photo: Path) -> None:
    """The page loaded, its models listed, and `photo` chosen in the file input."""
    driver.get(live.url + "/")
    wait(driver, lambda d: len(by_css(d, "#model option")) == 2)
    by_css(driver, "#file")[0].send_keys(str(photo))
    wait(driver, lambda d: d.find_element("id", "classify").is_enabled())


def cards(driver: Any, count: int) -> list[Any]:
    """The result cards, once there are `count` of them."""

    def rendered(d: Any) -> list[Any] | bool:
        found = by_css(d, "#results .card")
        return len(found) == count and found

    return wait(driver, rendered)


def test_demo_page_classifies_an_uploaded_photo(browser, live, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(photo_jpeg("astronaut"))
    open_demo(browser, live, photo)
    options = [o.get_attribute("value") for o in by_css(browser, "#precision option")]
    assert options == ["fp32", "int8", "auto"]
    assert [o.get_attribute("value") for o in by_css(browser, "#k option")] == [
        "auto",
        "1",
        "2",
        "3",
        "4",
    ]

    select(browser, "model", "tiny-moe")
    select(browser, "precision", "auto")
    select(browser, "k", "2")
    by_css(browser, "#classify")[0].click()
    (card,) = cards(browser, 1)

    direct = httpx.post(
        f"{live.url}/v1/classify",
        params={"model": "tiny-moe", "precision": "fp32", "k": 2},
        content=photo.read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    ).json()
    title = card.find_element("css selector", ".title").text
    assert title.startswith("tiny-moe at ") and title.endswith("(auto)"), title
    assert card.get_attribute("data-precision") in ("fp32", "int8")
    rows = card.find_elements("css selector", ".prediction")
    assert len(rows) == len(direct["predictions"]) == 3
    shown = [row.find_element("css selector", ".name").text for row in rows]
    assert sorted(shown) == ["cat", "dog", "fish"]
    if card.get_attribute("data-precision") == "fp32":  # auto chose it: the very same answer
        assert shown == [p["label"] for p in direct["predictions"]]
        assert [row.find_element("css selector", ".value").text for row in rows] == [
            f"{p['score'] * 100:.1f}%" for p in direct["predictions"]
        ]
    experts = card.find_elements("css selector", ".experts li")
    assert len(experts) == 2  # k = 2: the two experts the gate chose, with their weights
    assert sorted(e.find_element("css selector", ".name").text for e in experts) == sorted(
        f"expert {e['expert']}" for e in direct["experts"]
    )
    assert "k = 2" in card.find_element("css selector", ".meta").text
    timings = [td.text for td in card.find_elements("css selector", ".timings td")]
    assert len(timings) == 4 and all(t.endswith(" ms") for t in timings)
    assert requests_elsewhere(browser, live.url) == []


def test_demo_page_compares_every_precision_and_shows_errors(browser, live, tmp_path):
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(photo_jpeg("coffee"))
    open_demo(browser, live, photo)
    select(browser, "model", "tiny")
    assert not by_css(browser, "#k-field")[0].is_displayed()  # not a mixture: no k
    by_css(browser, "#compare")[0].click()
    found = cards(browser, 2)
    assert [c.get_attribute("data-precision") for c in found] == ["fp32", "int8"]
    for c in found:
        assert len(c.find_elements("css selector", ".prediction")) == 3
        assert not c.find_element("css selector", ".experts").is_displayed()

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    by_css(browser, "#file")[0].send_keys(str(not_an_image))
    by_css(browser, "#classify")[0].click()
    status = wait(browser, lambda d: (s := by_css(d, "#status.error")) and s[0])
    assert status.text.startswith("400: ") and "not a readable image" in status.text
    assert by_css(browser, "#results .card") == []


def test_docs_render_offline(browser, live):
    requests_elsewhere(browser, live.url)  # drop what earlier tests left in the log
    browser.get(live.url + "/docs")
    operations = wait(browser, lambda d: by_css(d, ".swagger-ui .opblock-summary-path"))
    paths = {op.get_attribute("data-path") or op.text for op in operations}
    assert {"/v1/classify", "/v1/models", "/v2/models/{name}/infer"} <= paths, paths
    assert requests_elsewhere(browser, live.url) == []
    browser.get(live.url + "/redoc")
    wait(browser, lambda d: by_css(d, "[data-role='redoc-summary'], .api-content h1"))
    assert requests_elsewhere(browser, live.url) == []
