#!/usr/bin/env python3
"""A screenshot of the demo page (the README's), taken in headless chromium.

Against a running server on loopback: opens /, chooses IMAGE, picks the model, then
either classifies at one precision or compares every loaded one, and saves the page:

    moe-alexnet serve --models fashion-moe,fashion-alexnet --precisions fp32,fp16,int8 &
    python scripts/demo_screenshot.py --url http://127.0.0.1:8000 boot.png docs/demo.png \
        --model fashion-moe --compare

Needs Debian's chromium and chromium-driver and selenium (the test extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", help="default: the server's first")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compare", action="store_true", help="every loaded precision")
    parser.add_argument("--size", default="1280,820", help="window width,height")
    args = parser.parse_args(argv)
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        sys.exit("demo_screenshot: needs chromium and chromium-driver (Debian packages)")
    if not args.image.is_file():
        sys.exit(f"demo_screenshot: {args.image}: no such file")

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={args.size}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(args.url.rstrip("/") + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        if args.model:
            Select(driver.find_element(By.ID, "model")).select_by_value(args.model)
        Select(driver.find_element(By.ID, "precision")).select_by_value(args.precision)
        driver.find_element(By.ID, "file").send_keys(str(args.image.resolve()))
        wait.until(lambda d: d.find_element(By.ID, "classify").is_enabled())
        driver.find_element(By.ID, "compare" if args.compare else "classify").click()
        # Done when the buttons are back (run() re-enables them at the end).
        wait.until(lambda d: d.find_element(By.ID, "classify").is_enabled())
        error = driver.find_elements(By.CSS_SELECTOR, "#status.error")
        if error:
            sys.exit(f"demo_screenshot: the page says: {error[0].text}")
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
