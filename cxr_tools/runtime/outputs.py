"""Where an output's fate is decided: the one ownership rule and the one overwrite / resume policy of every command.

**Ownership by record.** Every output folder cxr creates carries :data:`MARKER` (``.cxr-output.json``): the
command that wrote it, the tool version and the entries (paths relative to the folder; a folder ends in ``/``)
cxr wrote there. Entries are recorded *before* they are written: the fixed names a command writes
(:attr:`OutputSpec.writes`) when the folder is claimed, every file written through
:func:`cxr_tools.runtime.fs.atomic_path` below a claimed folder as it is written, anything else with
:func:`record`. A folder is ours when it holds the marker; replacing it removes only what the marker records
(and the cxr outputs nested in it, each by its own marker), never anything else, dot-files included. A folder
of the previous release, which wrote no marker, is ours only where a record it wrote names its files
(:attr:`OutputSpec.recognise`: a run's ``run.json``, a cache's ``manifest.json``...); anything else is refused,
``--overwrite`` or not, with one line. A file output (a predictions CSV) is recognised by its own content.

**Policy** (:func:`decide`, docs/design.md "Overwrite and resume"): the output is locked for the command
(runtime/locks.py); a missing or empty one is new; another command's output is refused; a complete one is
replaced only with ``--overwrite``; an incomplete one is resumed with ``--resume`` where the command can resume,
else restarted where the command allows it or with ``--overwrite``, else refused with a hint naming both
flags. :func:`decide` deletes nothing; :func:`claim` carries the decision out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cxr_tools import __version__
from cxr_tools.errors import OutputExistsError

log = logging.getLogger(__name__)

MARKER = ".cxr-output.json"
MARKER_FORMAT = "cxr-output"
MARKER_VERSION = 1
Action = Literal["new", "replace", "resume"]


@dataclass(frozen=True)
class OutputSpec:
    """What one command writes at its output path and how an existing output of it may be reused.

    Attributes:
        command: the command that writes it (``preprocess``, ``train``, ``predict --cam``...), recorded in the
            marker; an output another command wrote is refused.
        what: its name in messages (``cache``, ``evaluation``...).
        writes: entries the command may write without :func:`~cxr_tools.runtime.fs.atomic_path` (stores,
            append-only logs, folders), recorded when the folder is claimed.
        complete: whether an existing output is finished (then only ``--overwrite`` replaces it); None: never.
        resumable: an incomplete output is continued with ``--resume``.
        resume_first: with both ``--resume`` and ``--overwrite`` an incomplete output is resumed (a requeued job
            passes both); otherwise ``--overwrite`` wins.
        restart: an incomplete output that is not resumed is started again without ``--overwrite``.
        file: the output is one file (it appears by an atomic rename, so it is complete when it exists).
        swapped: the folder is replaced whole by a rename when finished (its lock lies beside it).
        recognise: what an output without the marker holds that a record of the command's own format defines
            (the previous release wrote no marker), or None when it is not the command's; for a file output,
            a non-None answer means the file is the command's.
    """

    command: str
    what: str
    writes: tuple[str, ...] = ()
    complete: Callable[[Path], bool] | None = None
    resumable: bool = False
    resume_first: bool = False
    restart: bool = False
    file: bool = False
    swapped: bool = False
    recognise: Callable[[Path], Sequence[str] | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class OutputDecision:
    """What a command does with its output: ``new``, ``replace`` (remove what cxr recorded there first) or
    ``resume``; ``entries`` are what cxr recorded there (its marker, or the previous release's record)."""

    path: Path
    spec: OutputSpec
    action: Action
    entries: tuple[str, ...] = ()


def decide(path: str | os.PathLike[str], spec: OutputSpec, *, overwrite: bool, resume: bool = False) -> OutputDecision:
    """Lock ``path`` for this process and decide what the command does with it (module docstring); nothing is
    written or deleted.

    Raises:
        OutputExistsError: the output is not the command's, or must not be touched without another flag (the
            hint names it).
        OutputLockedError: another live process is writing it.
    """
    from cxr_tools.runtime.locks import lock_output

    path = Path(path)
    if spec.file:
        return _decide_file(path, spec, overwrite=overwrite)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory.", "Choose another -o path.")
    lock_output(path, file=spec.swapped)
    if not path.exists() or not [p for p in _contents(path) if p.name != MARKER]:
        return OutputDecision(path, spec, "new")  # missing, empty, or claimed by a command that wrote nothing
    marker = read_marker(path)
    if marker is None:
        entries = spec.recognise(path) if spec.recognise is not None else None
        if entries is None:
            held = ", ".join(sorted(p.name for p in _contents(path) if not p.name.startswith("."))[:5])
            raise OutputExistsError(
                f"{path} is not a cxr {spec.what} (it holds {held or 'hidden files'}).",
                f"Choose another -o directory (--overwrite replaces only a {spec.what} cxr wrote, never other files).",
            )
        marker = {"command": spec.command, "what": spec.what, "entries": list(entries)}
    if marker.get("command") != spec.command:
        raise OutputExistsError(
            f"{path} is a cxr {marker.get('what', 'output')} written by `cxr {marker.get('command')}`, "
            f"not a {spec.what}.",
            "Choose another -o path (an output folder belongs to the command that wrote it).",
        )
    entries = tuple(str(e) for e in marker.get("entries") or ())
    if spec.complete is not None and spec.complete(path):
        if overwrite:
            return OutputDecision(path, spec, "replace", entries)
        raise OutputExistsError(
            f"{spec.what.capitalize()} {path} is already complete (`cxr {spec.command}` completed it).",
            "Pass --overwrite to replace it, or choose another -o directory.",
        )
    if spec.resumable and resume and (spec.resume_first or not overwrite):
        return OutputDecision(path, spec, "resume", entries)
    if overwrite or spec.restart:
        if spec.complete is not None:  # it has a finished state it did not reach: interrupted
            log.info("Restarting the interrupted %s in %s.", spec.what, path)
        return OutputDecision(path, spec, "replace", entries)
    hint = "Pass --resume to continue it, or --overwrite to start again." if spec.resumable else "Pass --overwrite."
    raise OutputExistsError(f"{spec.what.capitalize()} {path} is incomplete (an interrupted run?).", hint)


def _decide_file(path: Path, spec: OutputSpec, *, overwrite: bool) -> OutputDecision:
    from cxr_tools.runtime.locks import lock_output

    if path.is_dir():
        raise OutputExistsError(f"Output {path} is a directory.", "Pass a file name with -o.")
    lock_output(path, file=True)
    if not path.exists():
        return OutputDecision(path, spec, "new")
    if spec.recognise is not None and spec.recognise(path) is None:
        raise OutputExistsError(
            f"{path} is not a cxr {spec.what}.", f"Choose another -o (--overwrite replaces only a cxr {spec.what})."
        )
    if overwrite:
        return OutputDecision(path, spec, "replace", (path.name,))
    raise OutputExistsError(f"Output {path} already exists.", "Pass --overwrite to replace it, or another -o.")


def claim(decision: OutputDecision) -> Path:
    """Carry out ``decision`` for a folder: on ``replace`` remove what cxr recorded there, make sure the folder
    exists, write its marker (keeping the record on ``resume``) and record what this process writes in it from
    now on. A file output needs no claim (it appears by an atomic rename); its path is returned."""
    path = decision.path
    if decision.spec.file:
        return path
    if decision.action == "replace":
        remove_recorded(path, decision.entries)
    path.mkdir(parents=True, exist_ok=True)
    kept = decision.entries if decision.action == "resume" else ()
    _note_in_enclosing(path)
    _active[_key(path)] = _Claim(path, decision.spec, set(kept) | set(decision.spec.writes))
    _active[_key(path)].save()
    return path


def restart(decision: OutputDecision) -> Path:
    """Start a claimed output over (a resume found its journal unusable): remove what its marker records now."""
    marker = read_marker(decision.path) or {}
    return claim(replace(decision, action="replace", entries=tuple(marker.get("entries") or decision.entries)))


def prepare(path: str | os.PathLike[str], spec: OutputSpec, *, overwrite: bool) -> Path:
    """:func:`decide` then :func:`claim`: the output folder of a command that cannot resume."""
    return claim(decide(path, spec, overwrite=overwrite))


# --- the previous release ----------------------------------------------------------------------------------------
#: What the previous release (0.2, which wrote no marker) left in each kind of output, by the files that record
#: one: ``kind: (record files, the entries its format defines)``. Frozen: these are that release's names, whatever
#: the current writers call their files. Runs (run.json) and synthetic datasets (synthetic.json) are recognised
#: by their own modules, which read the record's content.
_PREVIOUS_RELEASE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cache": (
        ("manifest.json", "preprocess.journal"),
        (
            "manifest.json",
            "index.csv",
            "rejected.csv",
            "preprocess.journal",
            "meta_split.json",
            "images.h5",
            "images.npy",
        ),
    ),
    "evaluation": (
        ("episodes.json", "summary.json"),
        (
            *("episodes.json", "summary.json", "episodes.csv", "scores.csv", "progress.jsonl", "progress.json"),
            *("plots/", "plots/roc.png", "plots/auc_per_class.png", "plots/confusion.png", "plots/overall.png"),
        ),
    ),
    "comparison": (
        ("comparison.json",),
        ("comparison.csv", "comparison.md", "comparison.png", "comparison.json"),
    ),
    "benchmark report": (
        ("report.json",),
        ("report.md", "report.csv", "report.json", "report.html", "auc_vs_shots.png", "per_class_auc.png"),
    ),
}


def previous_release(kind: str) -> Callable[[Path], tuple[str, ...] | None]:
    """An :attr:`OutputSpec.recognise` for an output ``kind`` of the previous release (:data:`_PREVIOUS_RELEASE`):
    a folder holding one of its record files holds the entries its format defines."""
    records, entries = _PREVIOUS_RELEASE[kind]
    return lambda path: entries if any((path / name).is_file() for name in records) else None


def json_record(*keys: str) -> Callable[[Path], tuple[str, ...] | None]:
    """An :attr:`OutputSpec.recognise` for a file output: a JSON object holding ``keys`` (a side file cxr wrote)."""

    def recognise(path: Path) -> tuple[str, ...] | None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return (path.name,) if isinstance(doc, dict) and all(k in doc for k in keys) else None

    return recognise


# --- the marker ------------------------------------------------------------------------------------------------
@dataclass
class _Claim:
    path: Path
    spec: OutputSpec
    entries: set[str]

    def save(self) -> None:
        write_marker(self.path, self.spec, self.entries)


_active: dict[Path, _Claim] = {}


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def write_marker(folder: Path, spec: OutputSpec, entries: Iterable[str]) -> Path:
    """Write ``folder``'s marker atomically (no time stamp: the same output gives the same bytes)."""
    from cxr_tools.runtime.fs import atomic_write_json

    doc = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "command": spec.command,
        "what": spec.what,
        "tool": "cxr-tools",
        "tool_version": __version__,
        "entries": sorted(set(entries)),
    }
    return atomic_write_json(Path(folder) / MARKER, doc)


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``folder``'s marker, or None when it has none (or an unreadable one: then it is not known to be ours)."""
    file = Path(folder) / MARKER
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or not isinstance(doc.get("entries"), list):
        return None
    return doc


def record(target: str | os.PathLike[str]) -> None:
    """Record ``target`` (a file, or a folder when it ends in ``/`` or is one) in the claimed output of this
    process that holds it, before it is written; a path outside every claimed output is not recorded."""
    if not _active:
        return
    raw = os.fspath(target)
    target = Path(os.path.abspath(raw))
    if target.name == MARKER:
        return
    owner = _owner_of(target)
    if owner is None:
        return
    rel = target.relative_to(_key(owner.path))
    if rel.as_posix() in owner.entries or f"{rel.as_posix()}/" in owner.entries:
        return  # recorded already: a checkpoint rewritten every few minutes costs nothing here
    if not (owner.path / MARKER).is_file():  # the folder went away under us
        _active.pop(_key(owner.path), None)
        return
    owner.entries |= {f"{p.as_posix()}/" for p in rel.parents if p != Path(".")}
    owner.entries.add(rel.as_posix() + ("/" if raw.endswith("/") or target.is_dir() else ""))
    owner.save()


def _owner_of(target: Path) -> _Claim | None:
    """The deepest claimed output strictly containing ``target``."""
    for parent in target.parents:
        claim_ = _active.get(parent)
        if claim_ is not None:
            return claim_
    return None


def _note_in_enclosing(path: Path) -> None:
    """A nested output (a demo's cache, a run's evaluation) is recorded as a folder of the output around it."""
    record(f"{_key(path)}/")


def release(folder: str | os.PathLike[str]) -> None:
    """End this process's claim on ``folder`` (its lock is released); a marker that records nothing present,
    in a folder holding nothing else, goes too (the command failed before writing)."""
    path = Path(folder)
    _active.pop(_key(path), None)
    marker = read_marker(path)
    if marker is None:
        return
    with contextlib.suppress(OSError):
        others = [p for p in path.iterdir() if p.name != MARKER and not p.name.endswith(".lock")]
        if not others:
            (path / MARKER).unlink()


# --- removing what cxr wrote -------------------------------------------------------------------------------------
def remove_recorded(folder: str | os.PathLike[str], entries: Iterable[str]) -> None:
    """Remove from ``folder`` the recorded ``entries`` and the cxr outputs nested in it (each by its own marker),
    then its marker; nothing else (a folder that still holds something unrecorded stays, with that inside)."""
    folder = Path(folder)
    entries = sorted(set(entries))
    dirs = [e.rstrip("/") for e in entries if e.endswith("/")]
    nested = {folder / d for d in dirs}
    with contextlib.suppress(OSError):
        nested |= {p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()}
    for sub in sorted(nested, key=lambda p: len(p.parts), reverse=True):
        marker = read_marker(sub) if sub.is_dir() and not sub.is_symlink() else None
        if marker is not None:
            remove_recorded(sub, marker.get("entries") or ())
    for entry in entries:
        if entry.endswith("/"):
            continue
        target = folder / entry
        if _inside(folder, target) and (target.is_symlink() or target.is_file()):
            target.unlink()
    for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        target = folder / d
        if _inside(folder, target) and target.is_dir() and not target.is_symlink():
            with contextlib.suppress(OSError):
                target.rmdir()  # only when empty
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when nothing is left (a held lock file keeps the folder being replaced)


def _inside(folder: Path, target: Path) -> bool:
    """Whether ``target`` lies inside ``folder`` without passing through a link (a recorded entry never reaches
    out of its folder, not even through a folder someone replaced by a link to their own)."""
    rel = Path(os.path.relpath(os.path.abspath(target), os.path.abspath(folder)))
    if ".." in rel.parts:
        return False
    return not any((folder / parent).is_symlink() for parent in rel.parents if parent != Path("."))


def _contents(path: Path) -> list[Path]:
    """What a folder holds, its lock file aside."""
    from cxr_tools.runtime.locks import LOCK_NAME

    return [p for p in path.iterdir() if p.name != LOCK_NAME]


# --- outputs replaced whole by a rename ------------------------------------------------------------------------
def swap_into_place(tmp: Path, decision: OutputDecision, entries: Iterable[str]) -> Path:
    """Finish a swapped output: write ``tmp``'s marker recording ``entries``, rename ``tmp`` onto the output and,
    when replacing, remove what cxr recorded in the old one; what the old one held that cxr did not write is moved
    into the new one (a name the new output also uses stays beside it, in a hidden ``.<name>.kept-*`` folder)."""
    dest = decision.path
    write_marker(tmp, decision.spec, entries)
    old: Path | None = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "data")
    os.replace(tmp, dest)
    _note_in_enclosing(dest)
    if old is None:
        return dest
    remove_recorded(old / "data", decision.entries)
    if (old / "data").exists() and _move_back(old / "data", dest):
        kept = dest.parent / f".{dest.name}.kept-{old.name.rsplit('-', 1)[-1]}"
        os.replace(old / "data", kept)
        log.warning("Files of yours in the old %s clash with the new output's names; kept in %s.", dest, kept)
    old.rmdir()
    return dest


def _move_back(src: Path, dest: Path) -> bool:
    """Move everything left in ``src`` into ``dest`` (folders merged); True when a name clashed."""
    clashed = False
    for item in list(src.iterdir()):
        target = dest / item.name
        if not target.exists():
            os.replace(item, target)
        elif item.is_dir() and target.is_dir() and not item.is_symlink():
            clashed |= _move_back(item, target)
            with contextlib.suppress(OSError):
                item.rmdir()
        else:
            clashed = True
    with contextlib.suppress(OSError):
        src.rmdir()
    return clashed


def tree_entries(root: Path) -> list[str]:
    """Every file and folder under ``root`` as marker entries (for an output built whole in a fresh folder)."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        out.append(f"{rel}/" if p.is_dir() and not p.is_symlink() else rel)
    return sorted(out)
