"""Per-episode journal of ``cxr evaluate``: an interrupted evaluation resumes after its last finished episode.

Every episode's results (its ``episodes.csv`` records and ``scores.csv`` rows) are appended as one JSON line to
``OUT/progress.jsonl`` and handed to the OS before the next episode starts, so ``kill -9``, a SLURM time limit or
Ctrl-C loses at most the episode in flight. ``OUT/progress.json`` records what the results depend on (run and
weights, method and its settings, episode list hash, threshold, ...). A rerun with the same settings reuses the
finished episodes; episode ``i`` draws its randomness from ``(seed, i)`` alone, so the resumed evaluation equals
an uninterrupted one. Other settings start the evaluation over, with a warning naming what differs. Both files
are removed once ``summary.json`` is written. Finished episodes drawn the old way (episode-list format version 1,
image- rather than patient-disjoint) are never mixed with new ones: :func:`check_resumable` refuses them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr_tools.config import differing_keys
from cxr_tools.data.sampling.episodes import EPISODE_LIST_VERSION
from cxr_tools.errors import DataError
from cxr_tools.runtime.fs import atomic_write_json, complete_lines

log = logging.getLogger(__name__)

JOURNAL = "progress.jsonl"
SETTINGS = "progress.json"

#: One finished episode: its ``episodes.csv`` records and ``scores.csv`` rows.
EpisodeResult = tuple[list[dict[str, Any]], list[dict[str, Any]]]


def check_resumable(folder: Path) -> None:
    """Refuse to resume an interrupted evaluation in ``folder`` whose finished episodes were drawn the old way."""
    folder = Path(folder)
    path, settings_path = folder / JOURNAL, folder / SETTINGS
    if not (path.is_file() and settings_path.is_file() and complete_lines(path).strip()):
        return  # no finished episode: nothing could be mixed
    try:
        recorded = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # unreadable settings never match: the evaluation starts over
    version = recorded.get("episode_list_version", 1) if isinstance(recorded, dict) else 1
    if version != EPISODE_LIST_VERSION:
        raise DataError(
            f"The interrupted evaluation in {folder} ran on episodes of format version {version} (image-disjoint: "
            f"a patient could be in support and query); its episodes cannot be resumed as version "
            f"{EPISODE_LIST_VERSION} (patient-disjoint) ones.",
            "Re-evaluate from the start: rerun with --overwrite (or --no-resume).",
        )


class EpisodeJournal:
    """The finished episodes of an evaluation in ``folder`` (see the module docstring).

    Attributes:
        done: episode index -> its results, for the episodes an earlier run finished.
    """

    def __init__(self, folder: Path, settings: Mapping[str, Any], *, resume: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / JOURNAL
        self.settings_path = self.folder / SETTINGS
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.done: dict[int, EpisodeResult] = self._read() if resume else {}
        if not self.done:
            self.path.write_text("", encoding="utf-8")
            atomic_write_json(self.settings_path, self.settings)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _read(self) -> dict[int, EpisodeResult]:
        if not (self.path.is_file() and self.settings_path.is_file()):
            return {}
        check_resumable(self.folder)
        try:
            recorded = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        differ = differing_keys(recorded, self.settings)
        if differ:
            log.warning(
                "The interrupted evaluation in %s used other settings (%s differ); starting over.",
                self.folder,
                ", ".join(differ),
            )
            return {}
        done: dict[int, EpisodeResult] = {}
        for line in complete_lines(self.path).decode("utf-8").splitlines():  # a torn last episode runs again
            entry = json.loads(line)
            done[int(entry["episode"])] = (entry["records"], entry["scores"])
        if done:
            log.info("Resuming the evaluation in %s: %d episode(s) already done.", self.folder, len(done))
        return done

    def add(self, episode: int, records: list[dict[str, Any]], scores: list[dict[str, Any]]) -> None:
        """Record a finished episode (one line, flushed)."""
        line = json.dumps({"episode": episode, "records": records, "scores": scores}, allow_nan=True)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def remove(self) -> None:
        """Drop the journal once the evaluation is complete."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.settings_path.unlink(missing_ok=True)
