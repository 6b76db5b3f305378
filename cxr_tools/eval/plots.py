"""Plots written as PNG files (matplotlib's Agg canvas, no pyplot, no display, no global backend state).

Every function takes the output path first, writes the PNG atomically and returns the path. Figures are
built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, so plotting works on headless cluster
nodes and never changes the backend of a caller that uses pyplot.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Horizontal bar chart of images (and patients) per label, most frequent on top, counts annotated."""
    imgs = np.asarray(images, dtype=np.int64)
    order = np.argsort(-imgs, kind="stable")
    names = [labels[i] for i in order]
    fig = new_figure(8.0, max(2.5, 0.38 * len(labels) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    height = 0.4 if patients is not None else 0.7
    bars = ax.barh(y - (height / 2 if patients is not None else 0), imgs[order], height=height, label="images")
    ax.bar_label(bars, padding=2, fontsize=7)
    if patients is not None:
        pats = np.asarray(patients, dtype=np.int64)[order]
        pbars = ax.barh(y + height / 2, pats, height=height, label="patients", color="tab:orange")
        ax.bar_label(pbars, padding=2, fontsize=7)
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

    Colours follow ``log(1 + count)`` so rare pairs stay visible next to the large diagonal.
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
    fontsize = 7 if n <= 16 else 5
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="black" if shown[i, j] > threshold else "white",
            )
    ax.set_xticks(np.arange(n), list(labels), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n), list(labels), fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)
