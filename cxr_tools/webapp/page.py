"""The Gradio page: four tabs wired to a :class:`~cxr_tools.webapp.service.RunService`.

Handlers never raise into Gradio: a :class:`~cxr_tools.errors.CxrError` (a bad upload, a wrong folder) becomes a
message in the tab's status line and anything unexpected is logged and reported the same way, so one bad request
never stops the server. Scores are shown as a table of independent per-finding probabilities, each with its
threshold, not as a ranked label (``gr.Label`` headlines a top class, a single-label habit that multi-label
findings must not have).
"""

from __future__ import annotations

import html
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.errors import CxrError
from cxr_tools.webapp.results import find_results, load_results
from cxr_tools.webapp.service import Adapted, RunService, Scored

log = logging.getLogger(__name__)

INTRO = (
    "Each finding gets its own probability (an independent sigmoid: findings co-occur, so they are not normalised "
    "to sum to 1); ✔ marks a probability at or above the run's threshold for that finding."
)


def build_page(service: RunService, results_roots: Sequence[Path], examples: Sequence[str] = ()) -> Any:
    """The ``gr.Blocks`` of the app (not launched)."""
    import gradio as gr

    downloads = Path(tempfile.mkdtemp(prefix="cxr-app-"))
    labels = service.labels
    with gr.Blocks(title="cxr-tools", analytics_enabled=False) as page:
        gr.Markdown(f"## cxr-tools · {html.escape(service.describe())}", elem_id="run-header")
        with gr.Tab("Classify", id="classify"):
            if service.can_classify:
                gr.Markdown(f"{INTRO} Thresholds: {html.escape(service.threshold_rule)}.")
            else:
                gr.Markdown(
                    f"This {html.escape(service.training)} run has no fixed finding head: it scores a finding only "
                    "relative to labelled examples. Use the **Few-shot** tab; Similarity works as usual."
                )
            with gr.Row():
                files = gr.File(
                    file_count="multiple", label="X-ray images (PNG, JPEG, DICOM)", height=220, elem_id="classify-files"
                )
                with gr.Column():
                    finding = gr.Dropdown(
                        choices=labels, value=labels[0] if labels else None, label="Grad-CAM of", elem_id="cam-finding"
                    )
                    run = gr.Button("Classify", variant="primary", elem_id="classify-run")
            if examples:
                gr.Examples(examples=[[list(examples)]], inputs=[files], label="Images from --data")
            status = gr.Markdown(elem_id="classify-status")
            scores = gr.Markdown(elem_id="classify-scores")
            cams = gr.Gallery(label="Grad-CAM", columns=4, height=300, object_fit="contain", elem_id="classify-cam")
            csv_file = gr.File(label="Predictions CSV (as cxr predict writes it)", elem_id="classify-csv")

            def classify(paths: list[str] | None, label: str | None) -> tuple[Any, ...]:
                try:
                    result = service.classify(_paths(paths))
                    gallery = _cam_gallery(service, result, label)
                    out = Path(tempfile.mkdtemp(dir=downloads)) / "predictions.csv"  # one per request
                    out.write_text(result.csv, encoding="utf-8")
                    return _status(result), _scores_table(result, labels, service.thresholds), gallery, str(out)
                except Exception as exc:  # shown in the page; the server keeps serving
                    return _error(exc), "", [], None

            run.click(classify, [files, finding], [status, scores, cams, csv_file])

        with gr.Tab("Similarity", id="similarity"):
            gr.Markdown("How alike two images are under the run's embedding, as `cxr similarity` computes it.")
            with gr.Row():
                a = gr.File(label="Image A", elem_id="sim-a")
                b = gr.File(label="Image B", elem_id="sim-b")
            compare = gr.Button("Compare", variant="primary", elem_id="sim-run")
            sim_out = gr.Markdown(elem_id="sim-result")
            pair = gr.Image(label="The two images as the model sees them", elem_id="sim-pair", height=260)

            def similarity(path_a: Any, path_b: Any) -> tuple[Any, ...]:
                try:
                    if not path_a or not path_b:
                        return "**Upload two images.**", None
                    r = service.similarity(_path(path_a), _path(path_b))
                    text = (
                        f"**similarity {r['similarity']:.4f}** ({r['distance_kind']} distance {r['distance']:.4f}, "
                        f"{r['embedding']} of a {service.training} run; 1 = same direction)"
                    )
                    return text, _side_by_side(r["images"])
                except Exception as exc:
                    return _error(exc), None

            compare.click(similarity, [a, b], [sim_out, pair])

        with gr.Tab("Few-shot", id="few-shot"):
            gr.Markdown(
                "Name a new finding, upload K images with it and K without, and adapt the run with its own method "
                "(MAML inner loop, fine-tuned head or prototypes). The adapted model lives in this browser session "
                "only, until you save it."
            )
            state = gr.State(None)
            with gr.Row():
                name = gr.Textbox(label="Finding", placeholder="e.g. Pneumothorax", elem_id="fs-name", scale=2)
                adapt = gr.Button("Adapt", variant="primary", elem_id="fs-adapt", scale=1)
            with gr.Row():
                pos = gr.File(file_count="multiple", label="Positive examples", height=200, elem_id="fs-pos")
                neg = gr.File(file_count="multiple", label="Negative examples", height=200, elem_id="fs-neg")
            fs_status = gr.Markdown(elem_id="fs-status")
            with gr.Row():
                with gr.Column():
                    queries = gr.File(file_count="multiple", label="Query images", height=200, elem_id="fs-queries")
                    score = gr.Button("Classify queries", elem_id="fs-score")
                fs_scores = gr.Markdown(elem_id="fs-scores")
            with gr.Row():
                folder = gr.Textbox(label="Save as run directory (a new folder on the server)", elem_id="fs-folder")
                save = gr.Button("Save", elem_id="fs-save")
            save_status = gr.Markdown(elem_id="fs-save-status")

            def do_adapt(finding_name: str, positives: Any, negatives: Any) -> tuple[Any, str]:
                try:
                    adapted = service.adapt(finding_name, _paths(positives), _paths(negatives))
                    return adapted, (
                        f"Adapted to **{html.escape(adapted.finding)}** with **{adapted.method}** on "
                        f"{len(adapted.positives)} positive and {len(adapted.negatives)} negative images; "
                        f"threshold {adapted.threshold:.3f}, chosen on these examples (maximum F1 of their scores "
                        "after adaptation, as `cxr evaluate --threshold support`)."
                    )
                except Exception as exc:
                    return None, _error(exc)

            def do_score(adapted: Adapted | None, paths: Any) -> str:
                try:
                    if adapted is None:
                        return "**Adapt first.**"
                    result = service.score_adapted(adapted, _paths(paths))
                    thresholds = {adapted.finding: adapted.threshold}
                    return _scores_table(result, [adapted.finding], thresholds) + _failures(result)
                except Exception as exc:
                    return _error(exc)

            def do_save(adapted: Adapted | None, target: str) -> str:
                try:
                    if adapted is None:
                        return "**Adapt first.**"
                    if not (target or "").strip():
                        return "**Type a folder to save into.**"
                    out = service.save_adapted(adapted, Path(target.strip()))
                    return f"Saved to `{out}`: rerun with `cxr predict IMAGES -o out.csv --config {out}/config.yaml`."
                except Exception as exc:
                    return _error(exc)

            adapt.click(do_adapt, [name, pos, neg], [state, fs_status])
            score.click(do_score, [state, queries], [fs_scores])
            save.click(do_save, [state, folder], [save_status])

        with gr.Tab("Results", id="results"):
            found = [str(p) for p in find_results(list(results_roots))]
            pick = gr.Dropdown(
                choices=found,
                value=None,
                allow_custom_value=True,
                label="Evaluation or comparison directory",
                elem_id="results-pick",
            )
            show = gr.Button("Show", variant="primary", elem_id="results-run")
            res_md = gr.Markdown(elem_id="results-table")
            res_plots = gr.Gallery(label="Plots", columns=2, height=420, object_fit="contain", elem_id="results-plots")

            def results(path: str | None) -> tuple[Any, ...]:
                try:
                    if not path:
                        return "**Pick a directory.**", []
                    view = load_results(path)
                    title = "" if view.kind == "comparison" else f"### {html.escape(view.title)}\n\n"
                    return title + view.markdown, view.plots
                except Exception as exc:
                    return _error(exc), []

            show.click(results, [pick], [res_md, res_plots])
    return page


# --- rendering helpers ---------------------------------------------------------------------------------------


def _paths(files: Any) -> list[str]:
    if not files:
        return []
    return [_path(f) for f in (files if isinstance(files, list) else [files])]


def _path(f: Any) -> str:
    return str(getattr(f, "name", f) if not isinstance(f, str | Path) else f)


def _error(exc: BaseException) -> str:
    if isinstance(exc, CxrError):
        return f"**Error:** {html.escape(str(exc))}"
    log.exception("unexpected error in the app")
    return f"**Error:** {html.escape(type(exc).__name__)}: {html.escape(str(exc))} (see the server log)."


def _status(result: Scored) -> str:
    ok = sum(1 for e in result.errors if not e)
    return f"{ok} of {len(result.names)} images scored." + _failures(result)


def _failures(result: Scored) -> str:
    bad = [f"- `{html.escape(n)}`: {html.escape(e)}" for n, e in zip(result.names, result.errors, strict=True) if e]
    return ("\n\n**Not scored:**\n" + "\n".join(bad)) if bad else ""


def _scores_table(result: Scored, labels: Sequence[str], thresholds: dict[str, float] | None) -> str:
    """One row per image, one column per finding: the probability, ✔ at or above the finding's threshold."""
    head = "| image | " + " | ".join(html.escape(label) for label in labels) + " |"
    lines = [head, "|---|" + "---:|" * len(labels)]
    if thresholds:
        lines.append("| *threshold* | " + " | ".join(f"*{thresholds[label]:.3f}*" for label in labels) + " |")
    for name, probs, err in zip(result.names, result.probs, result.errors, strict=True):
        if err or probs is None:
            lines.append(f"| {html.escape(name)} | " + " | ".join("—" for _ in labels) + " |")
            continue
        cells = []
        for j, label in enumerate(labels):
            mark = " ✔" if thresholds and float(probs[j]) >= thresholds[label] else ""
            cells.append(f"{float(probs[j]):.4f}{mark}")
        lines.append(f"| {html.escape(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cam_gallery(service: RunService, result: Scored, label: str | None) -> list[tuple[np.ndarray, str]]:
    if not label:
        return []
    j = service.labels.index(label) if label in service.labels else 0
    out = []
    for name, img, probs in zip(result.names, result.images, result.probs, strict=True):
        if img is not None and probs is not None:
            out.append((service.cam(img, service.labels[j]), f"{name} · {service.labels[j]} {float(probs[j]):.3f}"))
    return out


def _side_by_side(images: np.ndarray, side: int = 256) -> np.ndarray:
    import cv2

    tiles = [cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC) for img in images]
    gap = np.full((side, 8), 255, np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1]], axis=1)
