"""Plots written as PNG files (matplotlib's Agg canvas, no pyplot, no display, no global backend state).

Every function takes the output path first, writes the PNG atomically and returns the path. Figures are
built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, so plotting works on headless cluster
nodes and never changes the backend of a caller that uses pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.runtime.fs import atomic_path

DPI = 120


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure with an Agg canvas attached."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (a reader never sees a half-written image)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def plot_label_counts(
    path: str | Path,
    labels: Sequence[str],
    images: Sequence[int],
    patients: Sequence[int] | None = None,
    *,
    title: str = "Images and patients per label",
) -> Path:
    """Horizontal bar chart of images (and patients) per label, most frequent on top, counts annotated.

    The counts are glyph outlines in one collection per series (:func:`_cell_labels`), not ``bar_label``'s text
    artists: at 14 labels those were about half of the drawing time once matplotlib is warm.
    """
    imgs = np.asarray(images, dtype=np.int64)
    order = np.argsort(-imgs, kind="stable")
    names = [labels[i] for i in order]
    fig = new_figure(8.0, max(2.5, 0.38 * len(labels) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    height = 0.4 if patients is not None else 0.7
    y_imgs = y - (height / 2 if patients is not None else 0)
    ax.barh(y_imgs, imgs[order], height=height, label="images")
    _bar_ends(ax, imgs[order], y_imgs)
    if patients is not None:
        pats = np.asarray(patients, dtype=np.int64)[order]
        ax.barh(y + height / 2, pats, height=height, label="patients", color="tab:orange")
        _bar_ends(ax, pats, y + height / 2)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("count")
    ax.set_title(title)
    ax.margins(x=0.12)
    return save_figure(fig, path)


def plot_cooccurrence(
    path: str | Path,
    labels: Sequence[str],
    matrix: Any,
    *,
    title: str = "Label co-occurrence (images)",
) -> Path:
    """Heat map of a label co-occurrence matrix with the count written in every cell.

    Colours follow ``log(1 + count)`` so rare pairs stay visible next to the large diagonal. The counts are
    drawn as one collection of glyph outlines, not one text artist per cell: laying out 196 text artists
    (twice, with the tight bounding box) was about half of the plot's time at NIH's 14 labels.
    """
    m = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    side = max(4.0, 0.5 * n + 2.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    shown = np.log1p(m.astype(np.float64))
    image = ax.imshow(shown, cmap="viridis", interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("log(1 + images)")
    threshold = shown.max() / 2 if shown.size and shown.max() > 0 else 0.0
    rows, cols = np.indices(m.shape)
    _cell_labels(
        ax,
        [str(int(v)) for v in m.ravel()],
        np.column_stack([cols.ravel(), rows.ravel()]),
        ["black" if v > threshold else "white" for v in shown.ravel()],
        fontsize=7 if n <= 16 else 5,
    )
    ax.set_xticks(np.arange(n), list(labels), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n), list(labels), fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def _bar_ends(ax: Any, counts: np.ndarray, y: np.ndarray) -> None:
    """Each count written just right of its horizontal bar's end (as ``bar_label(padding=2)`` places it)."""
    xy = np.column_stack([counts, y]).astype(np.float64)
    _cell_labels(ax, [str(int(v)) for v in counts], xy, ["black"] * len(xy), fontsize=7, left_pad=2.0)


def _cell_labels(
    ax: Any,
    texts: Sequence[str],
    xy: np.ndarray,
    colors: Sequence[str],
    *,
    fontsize: float,
    left_pad: float | None = None,
) -> None:
    """Short texts at data points ``xy``, drawn as one :class:`PathCollection` of glyph outlines.

    One artist instead of one :class:`Text` per cell: a single layout and draw call whatever the cell count.
    Centred on each outline's control-point box (glyph curves stay inside it, so the centre is within a pixel);
    with ``left_pad`` (points) the text starts that far right of its point instead, vertically centred.
    """
    from matplotlib.collections import PathCollection
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    prop = FontProperties(size=fontsize)  # TextPath units are points at this size
    placed: dict[str, Any] = {}  # a symmetric co-occurrence matrix repeats every off-diagonal count
    for text in dict.fromkeys(texts):
        glyphs = TextPath((0, 0), text, prop=prop)
        lo, hi = glyphs.vertices.min(axis=0), glyphs.vertices.max(axis=0)
        dx = -(lo[0] + hi[0]) / 2 if left_pad is None else left_pad - lo[0]
        placed[text] = glyphs.transformed(Affine2D().translate(dx, -(lo[1] + hi[1]) / 2))
    paths = [placed[text] for text in texts]
    fig = ax.get_figure()
    labels = PathCollection(
        paths,
        offsets=xy,
        offset_transform=ax.transData,
        transform=Affine2D().scale(1 / 72) + fig.dpi_scale_trans,  # points → inches → pixels at any dpi
        facecolors=colors,
        edgecolors="none",
        in_layout=False,
    )
    ax.add_collection(labels, autolim=False)


# --- few-shot evaluation (cxr evaluate / cxr compare) ---------------------------------------------------------


def _ci_errors(ci95: Sequence[float]) -> np.ndarray:
    """Error-bar half-widths with NaN (one episode, no CI) drawn as none."""
    return np.nan_to_num(np.asarray(ci95, dtype=np.float64), nan=0.0)


def plot_roc_curves(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]],
    *,
    title: str = "ROC per class (queries pooled over episodes)",
) -> Path:
    """One ROC curve per class, ``curves[name] = (fpr, tpr, auc)``, with the chance diagonal."""
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_metric_bars(
    path: str | Path,
    names: Sequence[str],
    means: Sequence[float],
    ci95: Sequence[float],
    *,
    metric: str = "AUC",
    chance: float | None = 0.5,
    title: str | None = None,
) -> Path:
    """Bars of a metric per class (or per metric) with 95% CI error bars and values written above them."""
    m = np.asarray(means, dtype=np.float64)
    fig = new_figure(max(4.0, 0.9 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    bars = ax.bar(x, np.nan_to_num(m), yerr=_ci_errors(ci95), capsize=4, color="tab:blue", alpha=0.85)
    ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in m], padding=3, fontsize=8)
    _score_axes(ax, names, metric=metric, chance=chance, title=title or f"{metric} per class")
    return save_figure(fig, path)


def plot_confusion_matrices(
    path: str | Path, matrices: Mapping[str, Any], *, threshold: float, title: str | None = None
) -> Path:
    """A 2×2 confusion matrix per class (rows: true negative / positive, columns: predicted), counts written in."""
    n = max(1, len(matrices))
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = new_figure(3.3 * cols + 0.5, 3.3 * rows + 0.3)
    for k, (name, matrix) in enumerate(matrices.items()):
        cm = np.asarray(matrix, dtype=np.int64).reshape(2, 2)
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
        for i in range(2):
            for j in range(2):
                colour = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=10, color=colour)
        ax.set_xticks([0, 1], ["pred −", "pred +"])
        ax.set_yticks([0, 1], ["true −", "true +"])
        ax.set_title(name, fontsize=9)
    fig.suptitle(title or f"Confusion matrices at threshold {threshold:g} (queries pooled)", fontsize=10)
    fig.subplots_adjust(wspace=0.45, hspace=0.35)
    return save_figure(fig, path)


def plot_grouped_bars(
    path: str | Path,
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    metric: str = "AUC",
    chance: float | None = 0.5,
    title: str | None = None,
) -> Path:
    """Grouped bars: for each group (class) one bar per series (method), ``series[name] = (means, ci95)``."""
    k = max(1, len(series))
    width = 0.8 / k
    fig = new_figure(max(5.0, 1.1 * len(groups) * max(1.0, k / 3) + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    for i, (name, (means, ci95)) in enumerate(series.items()):
        offset = (i - (k - 1) / 2) * width
        ax.bar(x + offset, np.nan_to_num(np.asarray(means, float)), width, yerr=_ci_errors(ci95), capsize=3, label=name)
    _score_axes(ax, groups, metric=metric, chance=chance, title=title or f"{metric} per class and method")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


# --- cxr similarity -------------------------------------------------------------------------------------------


def plot_image_pair(
    path: str | Path,
    left: Any,
    right: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    title: str = "",
) -> Path:
    """Two grey uint8 images side by side (as the model sees them, 0 = black, 255 = white) under one title."""
    fig = new_figure(7.0, 3.9)
    for k, (img, name) in enumerate(((left, names[0]), (right, names[1]))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _score_axes(ax: Any, names: Sequence[str], *, metric: str, chance: float | None, title: str) -> None:
    """The frame every bar plot of scores in [0, 1] shares: chance line, class names, limits, labels."""
    if chance is not None:
        ax.axhline(chance, ls="--", lw=0.8, color="grey")
    tilt = len(names) > 4
    ax.set_xticks(np.arange(len(names)), list(names), rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"{metric} (mean, 95% interval)")
    ax.set_title(title)
