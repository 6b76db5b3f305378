"""``generate``: write the synthetic phantom dataset in the NIH or CheXpert layout (docs/science.md).

The dataset is written into a hidden temporary sibling of ``dest`` and renamed into place only when every
file is there, so an interrupted or failed run never leaves anything that looks complete. Each image is
rendered from generators derived from ``(seed, patient, follow-up)``, so the bytes do not depend on
``workers`` or on the order in which images are made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from cxr_tools.errors import ConfigError
from cxr_tools.runtime.outputs import OutputSpec, decide, swap_into_place, tree_entries
from cxr_tools.runtime.progress import Progress, null_progress

LAYOUTS = ("nih", "chexpert")
FORMATS = ("png", "dicom")
NIH_CSV = "Data_Entry_2017_v2020.csv"
CHEXPERT_ROOT = "CheXpert-v1.0-small"
MANIFEST = "synthetic.json"
MAX_PATIENTS = 10_000_000  # 8-digit NIH patient ids


def _legacy_dataset(path: Path) -> tuple[str, ...] | None:
    """A dataset of the previous release (no marker): its synthetic.json names it, and its metadata CSVs and
    image paths list every file it wrote."""
    try:
        return tuple(legacy_files(path))
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: The dataset folder: built whole in a hidden sibling and renamed into place, recording every file it holds.
DATASET_SPEC = OutputSpec(command="download synthetic", what="dataset", swapped=True, recognise=_legacy_dataset)


@dataclass(frozen=True)
class SyntheticConfig:
    """What ``cxr download synthetic`` writes."""

    dest: Path
    patients: int = 200
    size: int = 256
    seed: int = 0
    layout: str = "nih"  # nih | chexpert
    format: str = "png"  # png | dicom (DICOM in the NIH layout only)
    workers: int = 0
    overwrite: bool = False


@dataclass(frozen=True)
class SyntheticResult:
    """What was written."""

    dest: Path
    layout: str
    format: str  # png, jpeg (CheXpert layout) or dicom
    n_images: int
    n_patients: int
    label_counts: dict[str, int]  # images per NIH finding (NIH order), then "No Finding"
    seconds: float
    metadata_csv: Path


def validate(config: SyntheticConfig) -> None:
    """Reject bad settings with a message that says what to pass instead."""
    if config.layout not in LAYOUTS:
        raise ConfigError(f"Unknown layout '{config.layout}'.", f"Use one of: {', '.join(LAYOUTS)}.")
    if config.format not in FORMATS:
        raise ConfigError(f"Unknown format '{config.format}'.", f"Use one of: {', '.join(FORMATS)}.")
    if config.format == "dicom" and config.layout != "nih":
        raise ConfigError("DICOM output is written in the NIH layout only.", "Use --layout nih with --format dicom.")
    for name, value, lo, hi in (("patients", config.patients, 1, MAX_PATIENTS), ("size", config.size, 32, 4096)):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"--{name} must be an integer from {lo} to {hi}, got {value!r}.")
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {config.seed!r}.")
    if not isinstance(config.workers, int) or config.workers < 0:
        raise ConfigError(f"--workers must be 0 (in this process) or a positive number, got {config.workers!r}.")


def generate(config: SyntheticConfig, progress: Progress | None = None) -> SyntheticResult:
    """Write the phantom dataset described by ``config`` and return what was written."""
    from cxr_tools.runtime.locks import scope

    with scope():  # its lock file beside ``dest`` goes when it returns
        return _generate(config, progress)


def _plan(seed: int, patients: int, layout: str, fmt: str) -> tuple[list, set[int]]:
    """Every patient's images (with their paths in the dataset) and the held-out patients."""
    from cxr_tools.data.synthetic.plan import plan_patient, split_patients

    ext = "dcm" if fmt == "dicom" else "png"
    plans = [plan_patient(seed, p, layout, ext) for p in range(1, patients + 1)]
    held_out = split_patients(seed, patients, 0.2 if layout == "nih" else 0.15)
    if layout == "chexpert":
        plans = [_chexpert_paths(plan, plan.patient in held_out) for plan in plans]
    return plans, held_out


def legacy_files(path: Path) -> list[str]:
    """The files (and folders) a dataset of the previous release holds, as its synthetic.json defines them."""
    doc = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    layout, fmt = str(doc["layout"]), str(doc["format"])
    plans, _ = _plan(int(doc["seed"]), int(doc["patients"]), layout, fmt)
    files = {MANIFEST, *(it.spec.relpath for plan in plans for it in plan.images)}
    if layout == "nih":
        files |= {NIH_CSV, "train_val_list.txt", "test_list.txt"}
    else:
        files |= {f"{CHEXPERT_ROOT}/{split}.csv" for split in ("train", "valid")}
    dirs = {f"{parent.as_posix()}/" for f in files for parent in Path(f).parents if parent != Path(".")}
    return sorted(files | dirs)


def _generate(config: SyntheticConfig, progress: Progress | None) -> SyntheticResult:
    from cxr_tools.data.synthetic.writers import label_counts

    validate(config)
    progress = null_progress(progress)
    dest = Path(config.dest).expanduser()
    # refuse before any work; the old dataset is replaced only when the new one is complete (swap_into_place)
    decision = decide(dest, DATASET_SPEC, overwrite=config.overwrite)
    t0 = time.perf_counter()
    plans, held_out = _plan(config.seed, config.patients, config.layout, config.format)
    items = [it for plan in plans for it in plan.images]

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        _render_all(config, plans, tmp, progress, len(items))
        metadata = _write_metadata(config, items, held_out, tmp)
        counts = label_counts(items)
        manifest = {
            "generator": "cxr-tools synthetic phantom",
            "schema": 1,
            "layout": config.layout,
            "format": config.format,
            "patients": config.patients,
            "size": config.size,
            "seed": config.seed,
            "images": len(items),
            "label_counts": counts,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        swap_into_place(tmp, decision, tree_entries(tmp))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticResult(
        dest=dest,
        layout=config.layout,
        format="jpeg" if config.layout == "chexpert" else config.format,
        n_images=len(items),
        n_patients=config.patients,
        label_counts=counts,
        seconds=time.perf_counter() - t0,
        metadata_csv=dest / metadata,
    )


def _chexpert_paths(plan, valid: bool):  # type: ignore[no-untyped-def]
    split = "valid" if valid else "train"
    images = tuple(
        dataclasses.replace(it, spec=dataclasses.replace(it.spec, relpath=f"{CHEXPERT_ROOT}/{split}/{it.spec.relpath}"))
        for it in plan.images
    )
    return dataclasses.replace(plan, images=images)


def _chunks(plans: list, n: int) -> Iterable[list]:
    for i in range(0, len(plans), n):
        yield plans[i : i + n]


def _render_all(config: SyntheticConfig, plans: list, root: Path, progress: Progress, total: int) -> None:
    from cxr_tools.data.synthetic.worker import render_patients

    args = (config.seed, config.size, config.format, config.layout, str(root))
    with progress.task("synthetic images", total=total) as task:
        if config.workers <= 0:
            for plan in plans:
                task.advance(render_patients(*args, [plan]))
            return
        per_chunk = max(1, min(16, len(plans) // (config.workers * 4) or 1))
        ctx = get_context("spawn")  # safe with torch/threads in the parent, same on every OS
        with ProcessPoolExecutor(
            config.workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(render_patients, *args, chunk) for chunk in _chunks(plans, per_chunk)]
            for fut in futures:
                task.advance(fut.result())


def _init_worker(starter: int) -> None:
    import cv2

    from cxr_tools.runtime.workers import exit_with

    exit_with(starter)  # a starter killed with -9 shuts nothing down: leave with it (runtime.workers)

    cv2.setNumThreads(1)  # one process per core already


def _write_metadata(config: SyntheticConfig, items: list, held_out: set[int], root: Path) -> str:
    from cxr_tools.data.synthetic.render import STREAM_PLAN, rng_for
    from cxr_tools.data.synthetic.writers import chexpert_header, chexpert_row, nih_csv

    if config.layout == "nih":
        (root / NIH_CSV).write_text(nih_csv(items), encoding="utf-8")
        test = [it.spec.relpath.rsplit("/", 1)[-1] for it in items if it.spec.patient in held_out]
        train = [it.spec.relpath.rsplit("/", 1)[-1] for it in items if it.spec.patient not in held_out]
        (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in train), encoding="utf-8")
        (root / "test_list.txt").write_text("".join(f"{n}\n" for n in test), encoding="utf-8")
        return NIH_CSV
    rows: dict[str, list[str]] = {"train": [], "valid": []}
    for it in items:
        split = "valid" if it.spec.patient in held_out else "train"
        rng = rng_for(config.seed, STREAM_PLAN, it.spec.patient, it.spec.follow_up, int(it.spec.view == "LL"), 7)
        rows[split].append(chexpert_row(it, it.spec.relpath, split == "valid", rng))
    for split, lines in rows.items():
        text = "\n".join([chexpert_header(), *lines]) + "\n"
        (root / CHEXPERT_ROOT / f"{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / CHEXPERT_ROOT / f"{split}.csv").write_text(text, encoding="utf-8")
    return f"{CHEXPERT_ROOT}/train.csv"
