"""Is the synthetic phantom learnable, and not trivially so?

For each finding, a logistic regression on downsampled images (32 px) separates images with that finding from
"No Finding" images; the cross-validated AUC (folds grouped by patient, so a patient's follow-ups never sit on
both sides) should be clearly above 0.5. The same task scored by one global statistic, the mean brightness,
should stay near 0.5: automatic exposure control in the generator sets every film's mean independently of its
findings.

Run: ``.venv/bin/python benchmarks/synthetic_learnability.py [--patients 400] [--size 64] [--px 32]``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FindingScore:
    """Separability of one finding from "No Finding"."""

    finding: str
    positives: int
    negatives: int
    auc_logreg: float  # cross-validated, grouped by patient
    auc_mean_brightness: float  # |AUC - 0.5| + 0.5 would hide direction; this is the raw AUC


def load_dataset(dest: Path, px: int) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """Images downsampled to ``px`` (float32, N x px*px), their findings, and patient ids."""
    import cv2
    import pandas as pd

    from cxr_tools.data.labels import parse_nih_findings

    df = pd.read_csv(dest / "Data_Entry_2017_v2020.csv")
    x = np.empty((len(df), px * px), np.float32)
    for i, name in enumerate(df["Image Index"]):
        img = cv2.imread(str(dest / "images" / name), cv2.IMREAD_GRAYSCALE)
        x[i] = cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA).reshape(-1) / 255.0
    labels = [parse_nih_findings(c) for c in df["Finding Labels"]]
    return x, labels, df["Patient ID"].to_numpy()


def features(x: np.ndarray, px: int) -> np.ndarray:
    """Pixels plus pooled blob responses (differences of Gaussians at two scales, max-pooled on a 8x8 grid).

    The pooled responses give a linear model a little of a CNN's translation invariance, which localised
    findings at random positions (nodules, masses) need.
    """
    import cv2

    out = [x]
    cell = max(1, px // 8)
    for i in range(len(x)):
        img = x[i].reshape(px, px)
        g = [cv2.GaussianBlur(img, (0, 0), s) for s in (0.7, 1.5, 3.0)]
        maps = []
        for dog in (g[0] - g[1], g[1] - g[2]):
            for part in (np.maximum(dog, 0), np.maximum(-dog, 0)):
                maps.append(part[: cell * 8, : cell * 8].reshape(8, cell, 8, cell).max((1, 3)).reshape(-1))
        if i == 0:
            pooled = np.empty((len(x), sum(m.size for m in maps)), np.float32)
        pooled[i] = np.concatenate(maps)
    out.append(pooled)
    return np.concatenate(out, 1)


def score_findings(
    x: np.ndarray, labels: list[list[str]], patients: np.ndarray, folds: int = 5, seed: int = 0
) -> list[FindingScore]:
    """Per-finding AUC of a logistic regression vs "No Finding", and of mean brightness alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    from cxr_tools.data.labels import NIH_LABELS

    normal = np.array([not f for f in labels])
    brightness = x.mean(1)
    out = []
    for finding in NIH_LABELS:
        pos = np.array([finding in f for f in labels])
        idx = np.flatnonzero(pos | normal)
        y = pos[idx].astype(int)
        if y.sum() < folds or (1 - y).sum() < folds:
            continue
        xs = (x[idx] - x[idx].mean(0)) / (x[idx].std(0) + 1e-6)
        scores = np.zeros(len(idx))
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for train, test in cv.split(xs, y, patients[idx]):
            model = LogisticRegression(C=0.01, max_iter=300, class_weight="balanced")
            model.fit(xs[train], y[train])
            scores[test] = model.decision_function(xs[test])
        out.append(
            FindingScore(
                finding,
                int(y.sum()),
                int((1 - y).sum()),
                float(roc_auc_score(y, scores)),
                float(roc_auc_score(y, brightness[idx])),
            )
        )
    return out


def run(patients: int = 400, size: int = 64, px: int = 32, seed: int = 0) -> list[FindingScore]:
    """Generate a phantom dataset in a temporary directory and score every finding (one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    from cxr_tools.data.synthetic import SyntheticConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "ds"
        generate(SyntheticConfig(dest=dest, patients=patients, size=size, seed=seed))
        x, labels, pids = load_dataset(dest, px)
    # Many small fits: BLAS threads only add contention (measured 80x slower on a busy 2-core machine).
    with threadpool_limits(1):
        return score_findings(features(x, px), labels, pids, seed=seed)


def table(scores: list[FindingScore]) -> str:
    """A Markdown table of the scores."""
    lines = [
        "| finding | positives | No Finding | AUC logistic regression | AUC mean brightness |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.finding} | {s.positives} | {s.negatives} | {s.auc_logreg:.3f} | {s.auc_mean_brightness:.3f} |"
        )
    mean_lr = np.mean([s.auc_logreg for s in scores])
    mean_b = np.mean([s.auc_mean_brightness for s in scores])
    lines.append(f"| **mean** | | | **{mean_lr:.3f}** | **{mean_b:.3f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--size", type=int, default=64, help="generated image side")
    parser.add_argument("--px", type=int, default=32, help="side after downsampling, for the classifier")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"synthetic phantom learnability: {args.patients} patients, generated at {args.size} px, "
        f"classified at {args.px} px, 5-fold CV grouped by patient, seed {args.seed}"
    )
    print(table(run(args.patients, args.size, args.px, args.seed)))


if __name__ == "__main__":
    main()
