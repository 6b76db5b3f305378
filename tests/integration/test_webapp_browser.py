"""``cxr app`` in a real browser: headless Chromium (Debian's package) driven by Playwright against the app served
on a free loopback port. Upload, click, read the numbers off the page; screenshots under the test's tmp dir.

Skipped with the reason when Chromium, Playwright or Gradio is absent (CI installs them: .ci/run, make test).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from script_modules import REPO, load_script

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
# the flags that let Chromium run headless on a machine without network: one list, shared with the screenshots
CHROMIUM_ARGS = load_script(REPO / "docs" / "screenshots" / "make_screenshots.py", "cxr_make_screenshots").ARGS
TIMEOUT_MS = 60_000


def _require_browser() -> None:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium; .ci/run does it as root)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")


@pytest.fixture(scope="module")
def world(webapp_world_checked):
    return webapp_world_checked


@pytest.fixture(scope="module")
def webapp_world_checked(request):
    _require_browser()  # skip before building anything
    return request.getfixturevalue("webapp_world")


@pytest.fixture(scope="module")
def served(world):
    from cxr_tools.webapp.server import AppConfig, start

    torch.set_num_threads(1)
    running = start(AppConfig(world.run, port=0, device="cpu", max_upload_mb=1, results=(world.root,)))
    assert running.url.startswith("http://127.0.0.1:")
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(served.url)
    pg.wait_for_selector("#classify-run")
    yield pg
    context.close()


def _upload(page, elem: str, paths: list[Path]) -> None:
    page.set_input_files(f"#{elem} input[type=file]", [str(p) for p in paths])
    for p in paths:
        page.wait_for_selector(f'#{elem} td.filename[aria-label="{p.name}"]')


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _table(page, elem: str) -> list[list[str]]:
    page.wait_for_selector(f"#{elem} table")
    rows = page.locator(f"#{elem} table tr")
    return [[c.strip() for c in rows.nth(i).locator("th, td").all_inner_texts()] for i in range(rows.count())]


def test_classify_shows_independent_scores_cam_and_csv(page, world, tmp_path):
    from cxr_tools.webapp.service import RunService

    _upload(page, "classify-files", [*world.images, world.text_png, world.no_pixels])
    page.click("#classify-run")
    page.wait_for_selector("#classify-status >> text=images scored")
    table = _table(page, "classify-scores")
    assert table[0] == ["image", "A", "B"]
    assert table[1][0] == "threshold"
    expected = RunService(world.run, "cpu").classify(world.images)
    for row, probs in zip(table[2:4], expected.probs, strict=True):
        shown = [float(cell.split()[0]) for cell in row[1:]]
        assert shown == pytest.approx([float(p) for p in probs], abs=6e-5)  # 4 decimals on the page
    assert [r[1] for r in table[4:]] == ["—", "—"]  # the bad uploads are not scored ...
    status = page.inner_text("#classify-status")
    assert "2 of 4 images scored" in status and "text file" in status and "DICOM without pixel data" in status
    page.wait_for_selector("#classify-cam img")
    assert page.locator("#classify-cam img").count() == 2  # one Grad-CAM overlay per readable image
    with page.expect_download() as download:
        page.locator("#classify-csv a").first.click()
    csv = Path(download.value.path()).read_text()
    assert csv.splitlines()[0] == "path,A,B,A_pred,B_pred,error" and "text file" in csv
    page.screenshot(path=str(tmp_path / "classify.png"), full_page=True)
    # ... and the server keeps serving: a second request on the same page works
    page.locator("#cam-finding input").fill("B")
    page.keyboard.press("Enter")
    page.click("#classify-run")
    page.wait_for_selector("#classify-cam >> text=B ")


def test_similarity_of_two_uploads(page, world, tmp_path):
    from cxr_tools.engine.similarity import SimilarityConfig, run_similarity

    _tab(page, "Similarity")
    _upload(page, "sim-a", world.images[:1])
    _upload(page, "sim-b", world.images[1:2])
    page.click("#sim-run")
    page.wait_for_selector("#sim-result >> text=similarity")
    text = page.inner_text("#sim-result")
    want = run_similarity(SimilarityConfig(world.images[0], world.images[1], world.run, device="cpu"))
    assert f"similarity {want.similarity:.4f}" in text and f"cosine distance {want.distance:.4f}" in text
    page.wait_for_selector("#sim-pair img")
    page.screenshot(path=str(tmp_path / "similarity.png"), full_page=True)


def test_few_shot_adaptation_with_uploaded_supports(page, world, tmp_path):
    _tab(page, "Few-shot")
    page.fill("#fs-name textarea, #fs-name input", "Blob")
    _upload(page, "fs-pos", world.positives)
    _upload(page, "fs-neg", world.negatives)
    page.click("#fs-adapt")
    page.wait_for_selector("#fs-status >> text=Adapted to")
    assert "finetune" in page.inner_text("#fs-status") and "3 positive and 3 negative" in page.inner_text("#fs-status")
    _upload(page, "fs-queries", [world.positives[0], world.negatives[0]])
    page.click("#fs-score")
    table = _table(page, "fs-scores")
    assert table[0] == ["image", "Blob"] and len(table) == 4
    assert table[1][0] == "threshold" and 0.0 <= float(table[1][1]) <= 1.0  # chosen on the uploaded supports
    threshold = float(table[1][1])
    for row in table[2:]:
        score = float(row[1].split()[0])
        assert 0.0 <= score <= 1.0
        if abs(score - threshold) > 1e-3:  # the page rounds: compare only calls the rounding cannot flip
            assert row[1].endswith("✔") == (score > threshold)
    assert "threshold" in page.inner_text("#fs-status")
    target = tmp_path / "saved-run"
    page.fill("#fs-folder textarea, #fs-folder input", str(target))
    page.click("#fs-save")
    page.wait_for_selector("#fs-save-status >> text=Saved to")
    assert (target / "config.yaml").is_file() and (target / "support" / "Blob").is_dir()
    page.screenshot(path=str(tmp_path / "few-shot.png"), full_page=True)


def test_results_page_and_oversized_upload(page, world, tmp_path):
    _tab(page, "Results")
    page.locator("#results-pick input").fill(str(world.evaluation))
    page.keyboard.press("Enter")
    page.click("#results-run")
    page.wait_for_selector("#results-table >> text=Evaluation")
    table = _table(page, "results-table")
    assert table[0][:3] == ["metric", "mean", "95% interval"] and any(r[0] == "auc" for r in table)
    page.wait_for_selector("#results-plots img")
    assert page.locator("#results-plots img").count() >= 2  # the ROC and per-class plots evaluate drew
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    # an upload over --max-upload-mb is refused by the server, which keeps serving
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + os.urandom(2 * 1024 * 1024))
    _tab(page, "Classify")
    page.set_input_files("#classify-files input[type=file]", [str(big)])
    page.wait_for_selector("text=/exceed|too large|maximum/i")
    assert page.locator("#classify-files td.filename").count() == 0
    _upload(page, "classify-files", world.images[:1])
    page.click("#classify-run")
    page.wait_for_selector("#classify-status >> text=1 of 1 images scored")
