"""Screenshots of the four ``cxr app`` tabs for the README, taken on the demo's phantoms in headless Chromium.

    cxr demo --quick -o cxr-demo                     # once: synthetic data, a cache, runs, evaluations, compare
    python docs/screenshots/make_screenshots.py cxr-demo [-o docs/screenshots]

Serves ``cxr-demo/runs/supervised`` with ``--data cxr-demo/cache`` on a free loopback port, drives Debian's
Chromium (``/usr/bin/chromium``, or ``$CXR_CHROMIUM``) with Playwright, and writes classify.png, similarity.png,
few-shot.png and results.png, quantised to 256 colours so each stays well under 150 KB.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1360, "height": 1150}


def demo_images(demo: Path) -> dict[str, list[Path]]:
    """The demo's phantom files by finding (``No Finding`` included), from its NIH-style CSV."""
    root = demo / "data" / "synthetic-nih"
    out: dict[str, list[Path]] = {}
    with open(root / "Data_Entry_2017_v2020.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["View Position"] != "PA":
                continue
            for finding in row["Finding Labels"].split("|"):
                out.setdefault(finding, []).append(root / "images" / row["Image Index"])
    return out


def save(page: object, path: Path) -> None:
    """A viewport screenshot, palette-quantised (Pillow comes with Gradio)."""
    from PIL import Image

    page.wait_for_timeout(1500)  # type: ignore[attr-defined]  # let the outputs finish fading in
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def upload(page: object, elem: str, paths: list[Path]) -> None:
    page.set_input_files(f"#{elem} input[type=file]", [str(p) for p in paths])  # type: ignore[attr-defined]
    for p in paths:
        page.wait_for_selector(f'#{elem} td.filename[aria-label="{p.name}"]')  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="output folder of `cxr demo`")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from cxr_tools.webapp.server import AppConfig, start

    demo = args.demo  # as given: the page header shows the run path this way
    images = demo_images(demo)
    running = start(AppConfig(demo / "runs" / "supervised", data=demo / "cache", port=0, results=(demo,)))
    args.output.mkdir(parents=True, exist_ok=True)
    chromium = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(120_000)
            page.goto(running.url)
            page.wait_for_selector("#classify-run")

            upload(page, "classify-files", [images["Effusion"][0], images["Mass"][0], images["No Finding"][0]])
            page.locator("#cam-finding input").fill("Mass")
            page.keyboard.press("Enter")
            page.click("#classify-run")
            page.wait_for_selector("#classify-cam img")
            save(page, args.output / "classify.png")

            page.get_by_role("tab", name="Similarity").click()
            upload(page, "sim-a", images["Cardiomegaly"][:1])
            upload(page, "sim-b", images["Cardiomegaly"][1:2])
            page.click("#sim-run")
            page.wait_for_selector("#sim-pair img")
            save(page, args.output / "similarity.png")

            page.get_by_role("tab", name="Few-shot").click()
            page.fill("#fs-name textarea, #fs-name input", "Cardiomegaly")
            upload(page, "fs-pos", images["Cardiomegaly"][2:7])
            upload(page, "fs-neg", images["No Finding"][2:7])
            page.click("#fs-adapt")
            page.wait_for_selector("#fs-status >> text=Adapted to")
            upload(page, "fs-queries", [*images["Cardiomegaly"][7:9], *images["No Finding"][7:9]])
            page.click("#fs-score")
            page.wait_for_selector("#fs-scores table")
            save(page, args.output / "few-shot.png")

            page.get_by_role("tab", name="Results").click()
            page.locator("#results-pick input").fill(str(demo / "compare"))
            page.keyboard.press("Enter")
            page.click("#results-run")
            page.wait_for_selector("#results-plots img")
            save(page, args.output / "results.png")
            browser.close()
    finally:
        running.close()


if __name__ == "__main__":
    main()
