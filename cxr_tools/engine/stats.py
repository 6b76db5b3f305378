"""Engine of ``cxr stats CACHE``: label, patient, split and view statistics of a cache, and two plots.

Reads only ``manifest.json`` and ``index.csv``, never the images (the seed projects loaded every image to
count labels). "Positive" means a stored value of 1; uncertain (-1) values are counted separately, so a
CheXpert cache shows how much a choice of uncertainty policy matters. Outputs in ``--output`` (default
``CACHE/stats/``), each written atomically and replaced on every run (they are derived from the cache):
``label_counts.png``, ``cooccurrence.png`` and ``stats.json`` (the same content as ``--json``). A folder that is
not a statistics folder cxr wrote is refused (:data:`STATS_SPEC`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr_tools import config as cfg
from cxr_tools.data.caches.format import read_tables, verify_cache
from cxr_tools.data.caches.label_stats import DatasetStats, LabelStats, SplitStats, compute_stats
from cxr_tools.errors import CxrError
from cxr_tools.runtime.fs import atomic_write_text
from cxr_tools.runtime.outputs import OutputSpec, claim, decide
from cxr_tools.runtime.progress import Progress, null_progress

#: The statistics folder: written again on every run, so an existing one needs no flag; only its recorded files go.
STATS_SPEC = OutputSpec(command="stats", what="statistics folder", restart=True)


@dataclass(frozen=True)
class StatsConfig:
    """Options of ``cxr stats``."""

    cache: Path
    out: Path | None = None  # default CACHE/stats
    plots: bool = True


@dataclass(frozen=True)
class StatsResult:
    """What ``cxr stats`` reports (also written to ``stats.json``)."""

    cache: Path
    source: str
    n_images: int
    n_patients: int
    labels: tuple[LabelStats, ...]
    no_positive_images: int  # images positive for no label (NIH "No Finding")
    labels_per_image: dict[int, int]  # number of positive labels -> images
    splits: dict[str, SplitStats]
    views: dict[str, int]
    cooccurrence: tuple[tuple[int, ...], ...]  # [L, L] images positive for both; diagonal = images per label
    out: Path | None
    plots: tuple[Path, ...]
    datasets: dict[str, DatasetStats] = field(default_factory=dict)  # a cache of several datasets: each one's


@dataclass(frozen=True)
class VerifyResult:
    """What ``cxr stats --verify`` found: one line per damaged file (empty when every file is whole)."""

    cache: Path
    damaged: tuple[str, ...]
    images: int


def verify(cache: Path) -> VerifyResult:
    """Check every file of ``cache`` against the checksums its manifest recorded when it was written (reads the
    whole image store once)."""
    damaged = tuple(verify_cache(cache))
    images = 0
    if not damaged:
        manifest, _ = read_tables(cache)
        images = int((manifest.get("counts") or {}).get("images", 0))
    return VerifyResult(cache=Path(cache), damaged=damaged, images=images)


def run_stats(config: StatsConfig, progress: Progress | None = None) -> StatsResult:
    """Compute the statistics of ``config.cache`` and write the plots and ``stats.json`` into the out dir."""
    progress = null_progress(progress)
    cache = Path(config.cache)
    manifest, index = read_tables(cache)
    labels = [str(x) for x in manifest.get("labels", [])]
    numbers = compute_stats(index, labels)
    out = Path(config.out) if config.out is not None else cache / "stats"
    plots: list[Path] = []
    try:
        claim(decide(out, STATS_SPEC, overwrite=False))
        with progress.task("stats", total=3 if config.plots and labels else 1) as task:
            if config.plots and labels:
                from cxr_tools.eval.plots import plot_cooccurrence, plot_label_counts

                stats = numbers["labels"]
                plots.append(
                    plot_label_counts(
                        out / "label_counts.png",
                        labels,
                        [s.images for s in stats],
                        [s.patients for s in stats],
                        title=f"Images and patients per label ({cache.name})",
                    )
                )
                task.advance()
                plots.append(plot_cooccurrence(out / "cooccurrence.png", labels, numbers["cooccurrence"]))
                task.advance()
            result = StatsResult(
                cache=cache,
                source=str(manifest.get("source", "")),
                out=out,
                plots=tuple(plots),
                **numbers,
            )
            atomic_write_text(out / "stats.json", cfg.to_json(result) + "\n")
            task.advance()
    except PermissionError as exc:
        raise CxrError(f"Cannot write statistics to {out}: {exc.strerror}.", "Pass --output DIR (writable).") from exc
    return result
