"""First paint of the draft viewer after an EHR launch, in headless Chromium, on the demo-like test data.

Starts the viewer test stack (sekmet-fhir, the stand-in EHR from deploy/smart-ehr, the Veritrace API),
opens the card's link through the EHR page N times and prints a table: the viewer document's
first-contentful-paint (from its own navigation start, i.e. the callback: token exchange + page render),
and the wall time from opening the EHR page to the draft's heading being visible (the whole launch:
discovery, authorize, code exchange, render). Run: .venv/bin/python bench/viewer_first_paint.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser.test_viewer_ehr_launch import ARGS, CHROMIUM
from tests.integration.test_viewer_stack import running_viewer_stack


def main(runs: int) -> None:
    fcp: list[float] = []
    launch: list[float] = []
    with running_viewer_stack(Path(tempfile.mkdtemp()), viewer_host="localhost") as stack:
        link = stack.card["links"][0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for _ in range(runs + 1):  # the first run warms caches and is dropped
                page = browser.new_page()
                query = urlencode({"app": link["url"], "patient": stack.patient, "iss": stack.iss})
                started = time.perf_counter()
                page.goto(f"{stack.ehr_url}/ehr/open?{query}")
                frame = page.frame_locator("#app")
                frame.locator("h1").wait_for(timeout=15000)
                elapsed = time.perf_counter() - started
                paint = frame.locator("body").evaluate(
                    "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || -1"
                )
                launch.append(elapsed * 1000)
                fcp.append(float(paint))
                page.close()
            browser.close()
    fcp, launch = fcp[1:], launch[1:]
    print(f"| measure (ms, {runs} runs) | median | max |")
    print("| --- | ---: | ---: |")
    rows = (
        ("viewer first-contentful-paint (callback navigation → paint)", fcp),
        ("EHR page opened → draft heading visible (full launch)", launch),
    )
    for label, values in rows:
        print(f"| {label} | {statistics.median(values):.0f} | {max(values):.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
