"""What ``cxr evaluate`` checks and resolves before it draws an episode (docs/science.md): the run, whether the
cache fits it, the meta-split and pool, the architecture and input normalisation, the default output folder, and
the fixed, seeded episode list.

Refusals, each a :class:`~cxr_tools.errors.CxrError` with a hint, raised before any episode is adapted: a run
without a model folder (never finished), a cache whose image size, preprocessing or label space does not fit the
model, too few positives, and a leak: a run whose lineage (it, or any run it was initialised from,
:mod:`cxr_tools.models.lineage`) trained on a meta-test class or on a patient of the meta-test pool, or has no
lineage record. ``--allow-leak`` evaluates it anyway and says so in ``leak``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.data.sampling.episodes import EpisodeSampler, GeneralizedSampler, episode_list_hash, index_patients
from cxr_tools.data.splits.meta import meta_split_pools, parse_meta_split, resolve_meta_split
from cxr_tools.data.splits.patients import patients_of
from cxr_tools.errors import ConfigError, DataError, ModelError
from cxr_tools.methods.adapters import AUTO_METHOD, ENCODER_METHODS
from cxr_tools.methods.protonet import base_prototypes
from cxr_tools.models import check_compatible, load_model_dir
from cxr_tools.models.checkpoints import read_model_meta
from cxr_tools.models.encoders import is_encoder
from cxr_tools.models.lineage import find_leak, load_patient_sets, recorded_pool_seed
from cxr_tools.models.registry import model_card

if TYPE_CHECKING:
    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode, EpisodeSpec
    from cxr_tools.data.splits.meta import MetaSplit

log = logging.getLogger(__name__)


def load_run(run: Path) -> tuple[Any, dict[str, Any]]:
    """``(model, meta)`` of a finished run; a clear :class:`ModelError` for a run that never finished."""

    run = Path(run)
    if not run.exists():
        raise ModelError(f"Run {run} does not exist.", "Pass the directory a training command wrote (-o RUN).")
    if not (run / "model.json").is_file() and not (run / "model" / "model.json").is_file():
        raise ModelError(
            f"{run} has no model folder (model/model.json): the run never finished training, or is not a run.",
            "Rerun its training command to resume it, or pass a finished run directory.",
        )
    return load_model_dir(run)


def check_data_fits(meta: Mapping[str, Any], cache: CacheReader) -> None:
    """Refuse a cache whose image size, preprocessing or label space differs from what the model was trained on."""

    check_compatible(meta, image_size=int(cache.image_shape[0]), channels=1)
    mine = dict((meta.get("input") or {}).get("preprocessing") or {})
    theirs = dict(cache.manifest.get("preprocessing") or {})
    if mine and theirs:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            detail = "; ".join(f"{k}: model {mine.get(k)!r} vs cache {theirs.get(k)!r}" for k in differ[:5])
            raise ModelError(
                f"Cache {cache.path} was preprocessed differently from the model's training data ({detail}).",
                "Preprocess the data with the model's settings (see its model.json 'input.preprocessing').",
            )
    missing = [c for c in meta.get("labels") or [] if c not in cache.labels]
    if missing:
        raise ModelError(
            f"Label space mismatch: the model's class(es) {', '.join(missing)} are not in cache {cache.path}.",
            f"The cache's labels: {', '.join(cache.labels)}; evaluate on a cache with the model's label space.",
        )


def resolve_split(
    spec: str, meta: Mapping[str, Any] | None, cache: CacheReader, matched: MatchedRun | None = None
) -> MetaSplit:
    """``auto``: the MAML run's meta-split; without a run, the ``--match`` run's (its evaluation's, else the one it
    trained with); else the cache's saved one, else MetaChest. Any other ``spec`` is parsed."""

    auto = (spec or "auto").strip().lower() == "auto"
    run_split = ((meta or {}).get("extra") or {}).get("meta_split")
    if auto and isinstance(run_split, Mapping):
        return parse_meta_split(dict(run_split), cache.labels)
    if auto and meta is None and matched is not None:
        copied = _matched_split(matched)
        if copied is not None:
            return parse_meta_split(dict(copied), cache.labels)
    return resolve_meta_split(spec, cache.path, cache.labels, cache.manifest)


def _matched_split(matched: MatchedRun) -> Mapping[str, Any] | None:
    """The meta-split the matched run was evaluated on, else the one it trained with (MAML, ``--classes base``)."""
    for value in (
        (matched.summary or {}).get("meta_split"),
        (matched.meta.get("extra") or {}).get("meta_split"),
        ((matched.meta.get("lineage") or {}).get("pool") or {}).get("meta_split"),
    ):
        if isinstance(value, Mapping) and value.get("test"):
            return value
    return None


def default_output(run: Path | None, method_label: str, kind: str | None) -> Path:
    """``RUN/eval`` for the run's own method, ``RUN/eval-<method>`` for another (a run dir, not ``RUN/model``)."""

    if run is None:
        raise ConfigError(f"Evaluating without a run (--method {method_label}) needs an output: -o OUT.")
    base = Path(run).parent if (Path(run) / "model.json").is_file() else Path(run)
    own = {"finetune": "finetune-head"}.get(AUTO_METHOD.get(kind or "", ""), AUTO_METHOD.get(kind or "", ""))
    return base / ("eval" if method_label == own else f"eval-{method_label}")


@dataclass(frozen=True)
class MatchedRun:
    """What ``--match`` copies (docs/science.md, "Baselines"): the run's ``model.json`` and, when the run has been
    evaluated with its own method, that evaluation's ``summary.json`` (its budget with any evaluation-time
    override, its meta-split and pool seed).

    Attributes:
        path: the run directory as given (or the evaluation's run).
        meta: the run's ``model.json``.
        evaluation: the matched evaluation directory, or None when the run has not been evaluated.
        summary: that evaluation's ``summary.json`` (None without one).
    """

    path: str
    meta: dict[str, Any]
    evaluation: Path | None = None
    summary: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any] | None:
        """The adaptation settings the matched evaluation recorded, with its directory as ``evaluation`` (None
        without one)."""
        value = (self.summary or {}).get("settings")
        return {**value, "evaluation": str(self.evaluation)} if isinstance(value, Mapping) else None

    @property
    def pair(self) -> tuple[str, dict[str, Any]]:
        """``(path, model.json)``, as :func:`~cxr_tools.methods.adapters.build_adapter` takes ``match``."""
        return self.path, self.meta


def matched_run(match: Path | None, method: str) -> MatchedRun | None:
    """The run ``--match`` names (scratch copies its budget and meta-split): a run directory (its own evaluation
    ``RUN/eval`` is read when there is one) or an evaluation directory (its ``summary.json`` names the run)."""
    if match is None:
        return None
    if method != "scratch":
        raise ConfigError(f"--match applies to --method scratch, not {method}.", "Drop --match.")

    match = Path(match)
    if not match.exists():
        raise ModelError(f"--match run {match} does not exist.", "Pass the directory a training command wrote.")
    evaluation = _matched_evaluation(match)
    summary = _read_summary(evaluation) if evaluation is not None else None
    run = match
    if (match / "summary.json").is_file():  # an evaluation directory: its run is the one matched
        recorded = (summary or {}).get("run")
        if not recorded or not Path(recorded).exists():
            raise ModelError(
                f"--match {match} is an evaluation whose run ({recorded or 'none recorded'}) is not found.",
                "Pass the run directory itself, or an evaluation of a run that still exists.",
            )
        run = Path(recorded)
    return MatchedRun(str(run), read_model_meta(run), evaluation, summary)


def match_arguments(matched: MatchedRun | None) -> dict[str, Any]:
    """``match`` and ``match_settings`` of :func:`~cxr_tools.methods.adapters.build_adapter` for ``matched``."""
    if matched is None:
        return {"match": None, "match_settings": None}
    return {"match": matched.pair, "match_settings": matched.settings}


def _matched_evaluation(match: Path) -> Path | None:
    """The evaluation ``--match`` points at: the directory itself, else the run's own ``eval/`` (None: none)."""
    for candidate in (match, match / "eval", match.parent / "eval" if match.name == "model" else None):
        if candidate is not None and (candidate / "summary.json").is_file():
            return candidate
    return None


def _read_summary(evaluation: Path) -> dict[str, Any]:
    try:
        data = json.loads((evaluation / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {evaluation / 'summary.json'}: {exc}.", "Re-run its cxr evaluate.") from exc
    return data if isinstance(data, dict) else {}


def run_name(run: Path) -> str:
    """The run's folder name, also when ``run`` points at its ``model/`` folder."""
    return run.parent.name if run.name == "model" else run.name


def normalisation_for(meta: Mapping[str, Any] | None, backbone: str, cache: CacheReader) -> str:
    """The input normalisation a run was trained with, else the architecture's (refusing too small images)."""

    if meta is not None:
        return str((meta.get("input") or {}).get("normalisation") or "unit")
    card = model_card(backbone)
    if min(cache.image_shape) < card.min_image_size:
        raise ModelError(
            f"{backbone} needs images of at least {card.min_image_size} px; cache {cache.path} has "
            f"{min(cache.image_shape)} px.",
            "Use a larger --size in cxr preprocess, or another --backbone.",
        )
    return card.normalisation


def check_no_leak(
    meta: Mapping[str, Any] | None, cache: CacheReader, split: MetaSplit, pool: np.ndarray, allow: bool
) -> str | None:
    """Refuse a run whose lineage trained on a meta-test class or patient (or cannot be checked); with ``allow``,
    return that as one line instead (None: no leak; nothing to check without trained weights)."""
    if meta is None:
        return None

    sets = load_patient_sets(meta["path"]) if meta.get("path") else {}
    leak = find_leak(meta, sets, split.test, patients_of(cache.index, pool))
    if leak is None:
        return None
    if allow:
        log.warning("Evaluating a leaking model (--allow-leak): %s.", leak)
        return leak
    if "cannot be checked" in leak or "missing or altered" in leak:
        hint = "Retrain the run (and its parents) with this version of cxr-tools, or pass --allow-leak to explore."
    elif "whose labels taught" in leak:
        hint = (
            "Start the chain from weights that never learned the meta-test classes (--weights imagenet or none), "
            "evaluate on classes those weights were not trained on, or pass --allow-leak to explore."
        )
    else:
        hint = (
            "Train every run of the chain on the meta-train pool only (--classes base, the same --pool-seed as "
            "meta-train), or pass --allow-leak to explore (the summary then records the leak)."
        )
    raise DataError(f"Leak: {leak}, so its few-shot scores on the meta-test split would be inflated.", hint)


def check_rows(episodes: Sequence[Episode], pool: np.ndarray, classes: Sequence[str], seen: Sequence[str] = ()) -> None:
    """Every image an episode reads lies in the meta-test pool, every unseen class is a meta-test class and every
    seen one a meta-train class."""
    for ep in episodes:
        rows = np.concatenate([ep.support_rows, ep.query_rows])
        if not np.isin(rows, pool).all() or not set(ep.unseen) <= set(classes) or not set(ep.seen) <= set(seen):
            raise DataError("An episode left the meta-test classes or pool.", "Report this as a bug.")


def meta_test_episodes(
    cache: CacheReader, split: MetaSplit, pool: np.ndarray, spec: EpisodeSpec, count: int, seed: int
) -> tuple[list[Episode], str]:
    """The fixed, seeded episode list on the meta-test classes and pool, checked, and its hash (addressed by the
    cache's content fingerprint, so an identical re-preprocessed cache gives the same hash).

    With ``spec.seen_ways`` the episodes are generalized
    (:class:`~cxr_tools.data.sampling.episodes.GeneralizedSampler`): ``seen_ways`` meta-train classes join the
    ``ways`` meta-test ones, images still from the meta-test pool."""

    patients = index_patients(cache.index)
    try:
        if spec.seen_ways:
            sampler: EpisodeSampler = GeneralizedSampler(
                cache.raw_labels(), cache.labels, split.test, split.train, pool, spec, patients=patients
            )
        else:
            sampler = EpisodeSampler(cache.raw_labels(), cache.labels, split.test, pool, spec, patients=patients)
    except DataError as exc:
        raise DataError(f"Meta-test classes/pool: {exc.message}", exc.hint) from None
    episodes = sampler.fixed_list(count, seed)
    check_rows(episodes, pool, split.test, split.train)
    return episodes, episode_list_hash(episodes, cache.fingerprint)


def check_options(episodes: int, pairs: int, bootstrap: int) -> None:
    """Refuse evaluation options out of range before anything is read (the threshold rule:
    :func:`~cxr_tools.eval.thresholds.parse_rule`)."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be at least 1 (got {episodes}).")
    if pairs < 0:
        raise ConfigError(f"--pairs must be >= 0 (got {pairs}).")
    if bootstrap < 0:
        raise ConfigError(f"bootstrap must be >= 0 replicates (got {bootstrap}).", "Use 1000 or more, or 0.")


def architecture_for(
    method: str,
    backbone: str | None,
    meta: Mapping[str, Any] | None,
    matched: MatchedRun | None,
    cache: CacheReader,
) -> tuple[str | None, str]:
    """``(architecture, normalisation)`` the method reads images with: the run's, else ``--backbone``, else the
    ``--match`` run's, else conv4; ``pixels`` has no network and reads the pixels in [0, 1]."""
    if meta is not None and backbone and method == "scratch" and backbone != meta.get("architecture"):
        raise ConfigError(
            f"--backbone {backbone} differs from the run's architecture {meta.get('architecture')}.",
            "Drop --backbone (scratch follows the run) or drop RUN.",
        )
    source = meta if meta is not None else matched.meta if matched is not None else {}
    arch = backbone or str(source.get("architecture") or "conv4")
    if method == "pixels":
        return None, "unit"
    return arch, normalisation_for(meta, arch, cache)


def meta_test_pool(
    cache: CacheReader,
    split: MetaSplit,
    pool_seed: int | None,
    meta: Mapping[str, Any] | None,
    matched: MatchedRun | None = None,
) -> tuple[int, np.ndarray]:
    """``(pool_seed, rows)`` of the meta-test pool; the pool seed defaults to the one the run recorded, else (no
    run) the ``--match`` run's evaluation's or training's, else 0."""

    if pool_seed is None and meta is None and matched is not None:
        recorded = (matched.summary or {}).get("pool_seed")
        pool_seed = int(recorded) if recorded is not None else recorded_pool_seed(matched.meta)
    if pool_seed is None:
        pool_seed = recorded_pool_seed(meta or {}) or 0
    return pool_seed, meta_split_pools(cache.index, cache.labels, split, seed=pool_seed)["test"]


def model_to_evaluate(run: Path | None, backbone: str | None, method: str | None) -> tuple[Any, dict[str, Any] | None]:
    """``(model, meta)`` of the run, else of the foundation encoder ``--backbone`` names for a method that scores
    frozen features (:func:`~cxr_tools.models.foundation.encoder_run`), else ``(None, None)``."""
    encoder = is_encoder(backbone)
    if run is not None:
        if encoder:
            raise ConfigError(
                f"--backbone {backbone} names an encoder, but RUN {run} is evaluated.",
                "Pass either a run or --backbone ENCODER (without a run), not both.",
            )
        return load_run(Path(run))
    if encoder and method == "scratch":
        raise ConfigError(
            f"--method scratch trains from random weights; {backbone} is a pretrained encoder.",
            f"Use --method {'|'.join(ENCODER_METHODS)} to score the encoder, or a zoo --backbone for scratch.",
        )
    if encoder and method in ENCODER_METHODS:
        from cxr_tools.models.foundation import encoder_run

        return encoder_run(str(backbone))
    return None, None


def known_seen(adapter: Any, model: Any, meta: Any, cache: Any, split: Any, pool_seed: int, seen: list[str]) -> None:
    """Give a protonet run's prototype adapter the base prototypes of the seen classes: the mean trained embedding
    of the meta-train pool's images positive for each (the pool the run trained on; docs/science.md)."""
    if getattr(adapter, "rule", None) != "mean-distance":
        return

    rows = meta_split_pools(cache.index, cache.labels, split, seed=pool_seed)["train"]
    adapter.known = dict(zip(seen, base_prototypes(model, meta, cache, rows, seen), strict=True))


def seen_knowledge(adapter: Any) -> str:
    """summary.json ``settings.seen_classes``: what a generalized evaluation scored the seen classes with."""
    if getattr(adapter, "known", None) and getattr(adapter, "rule", None) == "mean-distance":
        return "base prototypes: the trained embedding's mean over the meta-train pool's positives"
    if adapter.method == "finetune" and getattr(adapter, "known", ()):
        return "the run's trained head rows (frozen)"
    return "the episode's support set, like the unseen classes"
