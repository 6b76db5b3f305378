"""Each image of an evaluated pool embedded once: frozen features shared across episodes, methods and processes.

Frozen-feature methods (``linear-probe``, ``prototype``, ``finetune --finetune head``) only ever look at a fixed
function of each image. Because that function runs in eval mode, BatchNorm on its running statistics and without
gradients, an image's features do not depend on its batch (docs/science.md), so computing them once for the
pool and indexing rows per episode gives the scores of embedding each episode again, within float rounding.

**Key.** A feature matrix is identified by :func:`feature_key`: the weights fingerprint and the function
(:class:`Embedder`: ``weights`` and ``function``, which must name everything else that changes the output:
normalisation, input size, pooling), the cache's content fingerprint (pixels, rows and preprocessing) and the
cache image shape. Two evaluations that agree on the key share rows; nothing else does.

**Where it lives** (:class:`EmbeddingStore`): in memory for the process (least recently used keys are dropped
past :data:`MEMORY_BYTES`), so every method and episode of one process reuses it; and, given a folder, in
``FOLDER/<key digest>.npz`` (rows, features and the key itself), written atomically and merged with what the
file already held, so a later ``cxr evaluate --features-dir FOLDER`` or benchmark step reuses it. A file is only
replaced when it is one this module wrote (its recorded key matches); anything else there is left alone.

API (what a foundation encoder's evaluation calls)::

    embedder = Embedder(fn, weights="sha256:…", function="hf:rad-dino|cls|518px|imagenet-mean")
    feats = features_for(embedder, rows, cache)          # float32 [len(rows), D] on the CPU, rows in order

``fn`` maps cache images (uint8 ``[n, H, W]``) to features ``[n, D]`` (any device or float dtype); it is called
under ``torch.inference_mode`` on blocks of ``batch_size`` rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import ModelError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode
    from cxr_tools.runtime.progress import Progress

log = logging.getLogger(__name__)

#: Format tag and version of a feature file (part of every key: a change of recipe never collides).
FEATURES_FORMAT = "cxr-features"
FEATURES_VERSION = 1
#: In-memory budget of the process-wide store; the least recently used keys beyond it are dropped.
MEMORY_BYTES = 2 << 30


@dataclass(frozen=True)
class Embedder:
    """How cache images become features, and what identifies the result.

    Attributes:
        fn: uint8 cache images ``[n, H, W]`` (numpy) -> features ``[n, D]`` (a tensor on any device).
        weights: fingerprint of the weights (a model card's ``weights_sha256``, a hub revision...).
        function: what ``fn`` computes from those weights: the network function and everything else that changes
            its output (input normalisation, resize, pooling).
        batch_size: images per call of ``fn`` (features do not depend on it).
    """

    fn: Callable[[np.ndarray], Tensor]
    weights: str
    function: str
    batch_size: int = 256


def feature_key(embedder: Embedder, cache: CacheReader) -> dict[str, Any]:
    """What a feature matrix of ``cache`` through ``embedder`` is keyed by (module docstring)."""
    return {
        "format": FEATURES_FORMAT,
        "version": FEATURES_VERSION,
        "weights": embedder.weights,
        "function": embedder.function,
        "cache_fingerprint": cache.fingerprint,
        "image_shape": list(cache.image_shape),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """A short hash of a :func:`feature_key` (the file name of its features)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class _Entry:
    rows: np.ndarray  # sorted unique int64
    features: Tensor  # float32 [len(rows), D], CPU

    @property
    def nbytes(self) -> int:
        return int(self.features.numel()) * 4 + int(self.rows.nbytes)


class EmbeddingStore:
    """Feature rows by :func:`feature_key`: in memory, and in ``folder`` when given (module docstring)."""

    def __init__(self, folder: str | Path | None = None, *, memory_bytes: int = MEMORY_BYTES) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.memory_bytes = int(memory_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # images embedded by this store (what the tests and the benchmark count)

    def features_for(
        self, embedder: Embedder, rows: Any, cache: CacheReader, progress: Progress | None = None
    ) -> Tensor:
        """Features float32 ``[len(rows), D]`` (CPU) of cache ``rows`` in the order given (repeats allowed);
        rows neither in memory nor in the folder's file are embedded, in row order, and stored."""
        import torch

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        key = feature_key(embedder, cache)
        digest = key_digest(key)
        with self._lock:
            entry = self._entries.get(digest)
            if self.folder is not None and (entry is None or _missing(entry, rows).size):
                entry = _merge(entry, self._load(digest, key, len(cache)))
            missing = _missing(entry, rows) if entry is not None else np.unique(rows)
            if missing.size:
                new = _Entry(missing, embed_rows(embedder, missing, cache, progress))
                self.computed += len(missing)
                entry = _merge(entry, new)
                if self.folder is not None:
                    self._save(digest, key, entry)
            if entry is None:  # no rows asked for
                return torch.zeros((0, 0), dtype=torch.float32)
            self._remember(digest, entry)
        return entry.features[torch.from_numpy(np.searchsorted(entry.rows, rows))]

    def _remember(self, digest: str, entry: _Entry) -> None:
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > 1 and sum(e.nbytes for e in self._entries.values()) > self.memory_bytes:
            self._entries.popitem(last=False)

    def path_of(self, digest: str) -> Path | None:
        """The file of a key digest in the folder (None without a folder)."""
        return None if self.folder is None else self.folder / f"{digest}.npz"

    def _load(self, digest: str, key: Mapping[str, Any], n_rows: int) -> _Entry | None:
        """The folder's entry for ``key``, or None (missing; or unreadable / another key: logged, left alone)."""
        import torch

        path = self.path_of(digest)
        if path is None or not path.is_file():
            return None
        held = _read_file(path)
        if held is None or held[0] != json.loads(json.dumps(key)):
            log.warning("Ignoring %s: not a feature file of this key (it is left as it is).", path)
            return None
        _, rows, feats = held
        if rows.ndim != 1 or feats.ndim != 2 or len(rows) != len(feats) or (rows.size and rows.max() >= n_rows):
            log.warning("Ignoring %s: its rows and features do not fit the cache; they will be recomputed.", path)
            return None
        order = np.argsort(rows, kind="stable")
        return _Entry(rows[order].astype(np.int64), torch.from_numpy(np.ascontiguousarray(feats[order], np.float32)))

    def _save(self, digest: str, key: Mapping[str, Any], entry: _Entry) -> None:
        """Write the entry atomically, unless the folder holds something else under its name."""
        from cxr_tools.runtime.fs import atomic_path

        path = self.path_of(digest)
        assert path is not None
        if path.exists():
            held = _read_file(path)
            if held is None or held[0] != json.loads(json.dumps(key)):
                log.warning("Not replacing %s: cxr did not write it as features of this key.", path)
                return
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, key=np.array(json.dumps(key, sort_keys=True)), rows=entry.rows, features=entry.features.numpy()
            )


def _read_file(path: Path) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """``(key, rows, features)`` of a feature file, or None when it is not one (unreadable, other content)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != {"key", "rows", "features"}:
                return None
            return json.loads(str(data["key"])), np.asarray(data["rows"]), np.asarray(data["features"])
    except (OSError, ValueError, KeyError):
        return None


def _missing(entry: _Entry, rows: np.ndarray) -> np.ndarray:
    """The unique ``rows`` the entry lacks, sorted."""
    want = np.unique(rows)
    return want[~np.isin(want, entry.rows, assume_unique=True)]


def _merge(a: _Entry | None, b: _Entry | None) -> _Entry | None:
    """The union of two entries (rows sorted; a row in both keeps ``a``'s features)."""
    import torch

    if a is None or b is None:
        return a if b is None else b
    if a.features.shape[1] != b.features.shape[1]:
        raise ModelError(f"Stored features have {b.features.shape[1]} dimensions, expected {a.features.shape[1]}.")
    extra = ~np.isin(b.rows, a.rows, assume_unique=True)
    rows = np.concatenate([a.rows, b.rows[extra]])
    feats = torch.cat([a.features, b.features[torch.from_numpy(extra)]])
    order = np.argsort(rows, kind="stable")
    return _Entry(rows[order], feats[torch.from_numpy(order)])


def embed_rows(embedder: Embedder, rows: np.ndarray, cache: CacheReader, progress: Progress | None = None) -> Tensor:
    """``embedder.fn`` over cache ``rows`` in blocks, under ``torch.inference_mode``: float32 ``[n, D]`` (CPU)."""
    import torch

    from cxr_tools.runtime.progress import null_progress

    parts = []
    step = max(1, int(embedder.batch_size))
    with null_progress(progress).task("embed", total=len(rows)) as task:
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            with torch.inference_mode():
                out = embedder.fn(cache.read(block)).float().cpu()
            parts.append(out.clone())  # a normal tensor: fine-tuned heads backpropagate through these rows
            task.advance(len(block))
    if not parts:
        raise ModelError("Nothing to embed: no rows were asked for.")
    return torch.cat(parts)


_stores: dict[str, EmbeddingStore] = {}


def default_store() -> EmbeddingStore:
    """The process-wide in-memory store (what every evaluation of one process shares)."""
    return store_for(None)


def store_for(folder: str | Path | None) -> EmbeddingStore:
    """The process-wide store, or the process's store backed by ``folder`` (one per folder)."""
    name = "" if folder is None else str(Path(folder).expanduser().resolve())
    if name not in _stores:
        _stores[name] = EmbeddingStore(name or None)
    return _stores[name]


def features_for(
    embedder: Embedder,
    rows: Any,
    cache: CacheReader,
    *,
    store: EmbeddingStore | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """Features float32 ``[len(rows), D]`` of cache ``rows`` through ``embedder``, each image embedded once per
    key in ``store`` (default: the process-wide in-memory one)."""
    return (store or default_store()).features_for(embedder, rows, cache, progress)


# --- zoo models -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSource:
    """The frozen network function of a method (its features are shared by every method naming the same one).

    ``name`` is ``forward_features`` (the backbone's pooled features) or ``output`` (the model's output, a
    Siamese projection); ``fn`` computes it from model inputs ``[n, 1, H, W]``.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    module: nn.Module
    batch_size: int = 256

    def __call__(self, x: Tensor) -> Tensor:
        """float32 ``[n, D]`` (CPU), in eval mode without gradients (batch-independent)."""
        from cxr_tools.methods.adapters import outputs_in_chunks

        return outputs_in_chunks(self.fn, self.module, x, self.batch_size)

    def then(self, post: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
        """``post(self(x))`` (this source itself without ``post``): a method's embedding of images."""
        if post is None:
            return self
        return lambda x: post(self(x))


def model_source(model: nn.Module, name: str, batch_size: int = 256) -> FeatureSource:
    """A zoo model's ``forward_features`` (backbone features) or ``output`` (its output: a Siamese projection)."""
    net: Any = model
    if name == "forward_features":
        if not hasattr(model, "forward_features"):
            raise ModelError(f"{type(model).__name__} has no forward_features(); frozen features need a zoo model.")
        return FeatureSource(name, lambda x: net.forward_features(x).float(), model, batch_size)
    if name == "output":
        return FeatureSource(name, lambda x: net(x).float(), model, batch_size)
    raise ModelError(f"Unknown feature source {name!r}.", "Use forward_features or output.")


def run_weights(meta: Mapping[str, Any]) -> str:
    """The weights fingerprint of a model folder: its card's checksum, else the weights file's size and time."""
    from cxr_tools.methods.scoring import weights_fingerprint

    return json.dumps(weights_fingerprint(meta), sort_keys=True)


def channels_last(source: FeatureSource) -> FeatureSource:
    """The same source on a ``channels_last`` copy of its model (the run's model is left as it is), for a
    :func:`model_source`; any other source unchanged. Embedding a pool this way was 1.3-2.3x faster for conv4 on a
    CPU (benchmarks/evaluate_cache.py); the features agree within float rounding. A foundation encoder (a
    transformer: one patch convolution, then matrix products) is measured by nobody to gain from it and is not
    copied (a ViT-B is 350 MB)."""
    import copy

    import torch

    if source.name not in ("forward_features", "output"):
        return source
    from cxr_tools.models.foundation import FoundationEncoder

    if isinstance(source.module, FoundationEncoder):
        return source
    clone = copy.deepcopy(source.module).to(memory_format=torch.channels_last)
    return model_source(clone, source.name, source.batch_size)


def zoo_embedder(source: FeatureSource, weights: str, normalisation: str, device: Any) -> Embedder:
    """An :class:`Embedder` of a zoo model's feature source on cache images in ``normalisation``, run on a
    ``channels_last`` copy of the model (:func:`channels_last`)."""
    import torch

    from cxr_tools.models.inputs import to_model_input

    fast: list[FeatureSource] = []  # the copy is made on the first rows to embed, not when all are stored

    def fn(images: np.ndarray) -> Tensor:
        if not fast:
            fast.append(channels_last(source))
        return fast[0](to_model_input(images, normalisation, device).contiguous(memory_format=torch.channels_last))

    return Embedder(fn, weights=weights, function=f"{source.name}|{normalisation}", batch_size=source.batch_size)


class EpisodeFeatures:
    """A frozen-feature adapter fed from an :class:`EmbeddingStore`: ``cxr evaluate``'s episodes index rows of
    the pool's features instead of embedding their images again.

    ``adapter`` has ``feature_source`` (a :class:`FeatureSource`), ``feature_post`` (what turns its rows into
    the method's features, or None) and ``fit_features(features, targets, generator=...)``, whose scorer takes
    features where the image-level one takes images. The store holds the source's rows, so methods that share
    a source (the linear probe, the fine-tuned head and the prototypes of a run's backbone) share them.
    """

    def __init__(self, adapter: Any, embedder: Embedder, cache: CacheReader, store: EmbeddingStore) -> None:
        self.adapter = adapter
        self.embedder = embedder
        self.cache = cache
        self.store = store
        self._rows = np.zeros(0, dtype=np.int64)
        self._features: Tensor | None = None

    def prepare(self, episodes: list[Episode], progress: Progress | None = None) -> None:
        """Embed (or find) every support and query image of ``episodes`` at once."""
        if not episodes:
            return
        rows = np.unique(np.concatenate([np.r_[ep.support_rows, ep.query_rows] for ep in episodes]).astype(np.int64))
        self._rows = rows
        self._features = self.store.features_for(self.embedder, rows, self.cache, progress)

    def tensors(self, episode: Episode) -> tuple[Tensor, Tensor, Tensor]:
        """``(support_features, support_y, query_features)`` of a prepared episode (CPU)."""
        import torch

        if self._features is None:
            raise ModelError("EpisodeFeatures.prepare() must see an episode before its tensors are asked for.")
        where = np.searchsorted(self._rows, np.r_[episode.support_rows, episode.query_rows].astype(np.int64))
        feats = self._features[torch.from_numpy(where)]
        post = getattr(self.adapter, "feature_post", None)
        if post is not None:
            feats = post(feats)
        n = len(episode.support_rows)
        return feats[:n], torch.from_numpy(np.asarray(episode.support_targets)), feats[n:]


def episode_features(
    adapter: Any,
    cache: CacheReader,
    weights: str | None,
    normalisation: str,
    device: Any,
    store: EmbeddingStore | None = None,
) -> EpisodeFeatures | None:
    """:class:`EpisodeFeatures` of ``adapter`` on ``cache``, or None when its method adapts more than a frozen
    function (MAML, scratch, whole-network fine-tuning), has no feature source, or the weights are unknown."""
    source = getattr(adapter, "feature_source", None)
    if source is None or weights is None or not hasattr(adapter, "fit_features"):
        return None
    embedder = zoo_embedder(source, weights, normalisation, device)
    return EpisodeFeatures(adapter, embedder, cache, store or default_store())
