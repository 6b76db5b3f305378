"""The run directory every training command writes (docs/design.md, on-disk formats), and the rules for reusing one.

Layout::

    RUN/config.yaml        the fully resolved config (written once, when the run starts)
    RUN/run.json           kind, versions, git commit, host, device, SLURM ids, world size, status, sessions
    RUN/metrics.jsonl      one JSON object per logged step / epoch, flushed line by line
    RUN/checkpoints/       last.pt (atomic, frequent) and best.pt
    RUN/model/             model card + weights, written by the trainer when it finishes

A run directory belongs to one command kind (``train``, ``train-siamese``, ``meta-train``). :func:`open_run`
decides what happens to an existing one through the one output policy (:func:`cxr_tools.runtime.outputs.decide`
with :func:`run_spec`): another kind is refused (:class:`ModelError`), a completed run needs ``--overwrite``
(:class:`OutputExistsError`), which removes only what cxr recorded writing there; a folder that is not a cxr run
directory is refused even with ``--overwrite``; an incomplete run (``running``, ``interrupted``, ``failed``) is
continued by default - that is what makes "rerun the same command after preemption" work.
Only the main rank writes, and locks the directory for the command (runtime/locks.py); other ranks get a
read-only :class:`RunDir`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cxr_tools import __version__
from cxr_tools.config import differing_keys, dump_yaml, to_dict
from cxr_tools.errors import ConfigError, ModelError, OutputExistsError
from cxr_tools.runtime.fs import atomic_write_json, atomic_write_text
from cxr_tools.runtime.locks import is_held
from cxr_tools.runtime.outputs import OutputSpec, claim, decide
from cxr_tools.runtime.versions import library_versions

log = logging.getLogger(__name__)

RUN_SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "interrupted", "failed")
#: Config keys that may change between a run and its resumption (they do not change the result).
RESUME_MUTABLE_KEYS = frozenset(
    {
        "device",
        "workers",
        "num_workers",
        "threads",
        "amp",
        "requeue",
        "resume",
        "overwrite",
        "quiet",
        "progress",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
        "log_every_steps",
        "log_every",  # meta-train's name before log_every_steps: runs started then still resume
        "output",
        "out",
        "run_dir",
    }
)
_SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "job_name": "SLURM_JOB_NAME",
    "nodelist": "SLURM_JOB_NODELIST",
    "ntasks": "SLURM_NTASKS",
    "procid": "SLURM_PROCID",
    "restart_count": "SLURM_RESTART_COUNT",
    "partition": "SLURM_JOB_PARTITION",
}


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string (what run.json stores)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """Paths and writers of one run directory; every write is a no-op when ``writable`` is False."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, writable={self.writable})"

    # --- paths --------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_json_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints_dir / "best.pt"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    # --- config and run.json --------------------------------------------------------------------------
    def write_config(self, config: Any) -> None:
        """Save the resolved config (a dataclass or mapping) as config.yaml."""
        if self.writable:
            atomic_write_text(self.config_path, dump_yaml(config))

    def read_config(self) -> dict[str, Any]:
        """The saved config as a mapping ({} when absent)."""
        import yaml

        if not self.config_path.is_file():
            return {}
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def read_info(self) -> dict[str, Any]:
        """run.json as a mapping ({} when absent)."""
        return read_run_info(self.path) or {}

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into run.json (atomically) and return the new content."""
        info = self.read_info()
        info.update(fields)
        if self.writable:
            atomic_write_json(self.run_json_path, info)
        return info

    def set_status(self, status: str, **fields: Any) -> dict[str, Any]:
        """Record ``status`` (running|completed|interrupted|failed); a final status also sets ``end_time``."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        info = self.read_info()
        extra: dict[str, Any] = {"status": status, **fields}
        if status != "running":
            extra["end_time"] = now_iso()
            sessions = list(info.get("sessions") or [])
            if sessions:
                sessions[-1] = {**sessions[-1], "end_time": extra["end_time"], "status": status}
                extra["sessions"] = sessions
        return self.update_info(**extra)

    @property
    def status(self) -> str | None:
        return self.read_info().get("status")

    # --- metrics ----------------------------------------------------------------------------------------
    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl and flush it (a killed job loses at most this line)."""
        if not self.writable:
            return
        line = json.dumps(to_dict(dict(record)), default=_json_default, allow_nan=True)
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete, parseable line of metrics.jsonl (a torn last line is skipped)."""
        return _read_jsonl(self.metrics_path)

    def metrics_count(self) -> int:
        """How many records metrics.jsonl holds (stored in checkpoints to cut the file back on resume)."""
        return len(self.read_metrics())

    def truncate_metrics(self, *, keep: int | None = None, max_step: int | None = None) -> int:
        """Drop records written after a checkpoint: keep the first ``keep`` records and/or those with
        ``step <= max_step``. Returns the number of records kept."""
        records = self.read_metrics()
        kept = records if keep is None else records[:keep]
        if max_step is not None:
            kept = [r for r in kept if not isinstance(r.get("step"), int) or r["step"] <= max_step]
        if self.writable and (len(kept) != len(records) or self._has_torn_line()):
            text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept)
            atomic_write_text(self.metrics_path, text)
        return len(kept)

    def _has_torn_line(self) -> bool:
        if not self.metrics_path.is_file():
            return False
        data = self.metrics_path.read_bytes()
        return bool(data) and not data.endswith(b"\n")

    def remove_stale_temporaries(self) -> None:
        """Remove temporary files left by a job killed mid-write (``.last.pt.*.tmp``)."""
        if not self.writable:
            return
        for folder in (self.path, self.checkpoints_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        tmp.unlink()


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    return str(obj)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn line is always the last one written; nothing after it is trusted
    return out


def read_run_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """run.json of run directory ``path``, or None when there is none."""
    file = Path(path) / "run.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file} is unreadable ({exc}).", "Delete the run directory or pass --overwrite.") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{file} is not a run description.", "Delete the run directory or pass --overwrite.")
    return data


def live_status(path: str | os.PathLike[str], info: Mapping[str, Any] | None = None) -> str | None:
    """The status of run ``path`` as it is now: a run.json saying ``running`` whose command no longer holds the
    run's lock (killed with ``kill -9``, its node lost) is ``interrupted``; run.json itself is corrected by the next
    command that opens the run (:func:`open_run`)."""
    info = read_run_info(path) if info is None else info
    status = None if info is None else info.get("status")
    if status != "running" or is_held(path):
        return status
    again = read_run_info(path) or {}  # the command may have finished between the two reads
    return "interrupted" if again.get("status") == "running" else again.get("status")


def _last_activity(path: Path) -> str | None:
    """When the run last wrote something (metrics or a checkpoint): the best end time of a session that died."""
    files = [path / "metrics.jsonl", path / "checkpoints" / "last.pt", path / "run.json"]
    stamps = [f.stat().st_mtime for f in files if f.is_file()]
    if not stamps:
        return None
    return _dt.datetime.fromtimestamp(max(stamps), _dt.timezone.utc).isoformat(timespec="seconds")


def _close_dead_session(run: RunDir, info: dict[str, Any]) -> dict[str, Any]:
    """Record, in run.json, that the session which left ``running`` behind was interrupted (called with the run's
    lock held, so its command is gone)."""
    if info.get("status") != "running":
        return info
    end = _last_activity(run.path)
    sessions = list(info.get("sessions") or [])
    if sessions:
        sessions[-1] = {**sessions[-1], "end_time": sessions[-1].get("end_time") or end, "status": "interrupted"}
    log.info("%s was left 'running' by a command that is gone; recorded as interrupted.", run.path)
    return run.update_info(status="interrupted", end_time=end, sessions=sessions)


#: What a run directory holds besides the files written atomically (recorded as they are written).
RUN_WRITES = ("config.yaml", "run.json", "metrics.jsonl", "checkpoints/")
#: The files the previous release's run directories held (it wrote no marker; its run.json names the run).
_LEGACY_RUN_FILES = (
    *RUN_WRITES,
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "model/",
    "model/model.json",
    "model/model.safetensors",
    "model/lineage_patients.json",
    "val_episodes.json",
    "meta_split.json",
)


def run_spec(kind: str) -> OutputSpec:
    """The output spec of a run directory of command ``kind``: complete once its run.json says so; an incomplete
    run is continued (``--resume``, the default), and ``--overwrite`` starts it again."""
    return OutputSpec(
        command=kind,
        what="run directory",
        writes=RUN_WRITES,
        complete=lambda p: (read_run_info(p) or {}).get("status") == "completed",
        resumable=True,
        recognise=lambda p: _LEGACY_RUN_FILES if _is_legacy_run(p, kind) else None,
    )


def _is_legacy_run(path: Path, kind: str) -> bool:
    """A run directory of the previous release: its run.json has this tool's schema and this command's kind."""
    with contextlib.suppress(ModelError):
        info = read_run_info(path) or {}
        return (
            info.get("tool") == "cxr-tools"
            and info.get("schema_version") == RUN_SCHEMA_VERSION
            and info.get("kind") == kind
            and "status" in info
        )
    return False


def open_run(
    path: str | os.PathLike[str],
    kind: str,
    config: Any,
    *,
    resume: bool = True,
    overwrite: bool = False,
    is_main: bool = True,
    device: str | None = None,
    world_size: int = 1,
    command: Iterable[str] | None = None,
    mutable_keys: Iterable[str] = RESUME_MUTABLE_KEYS,
) -> RunDir:
    """Create or reopen run directory ``path`` for a command of ``kind`` and mark it ``running``.

    Args:
        kind: the command, e.g. ``"train"``; a directory of another kind is refused.
        config: the resolved config dataclass (or mapping), saved as config.yaml. When resuming, it must
            equal the saved one except for ``mutable_keys`` (device, workers, ...).
        resume: continue an incomplete run (default); False refuses one unless ``overwrite``.
        overwrite: replace a completed or incomplete run of the same kind.
        is_main: only the main rank checks and writes; other ranks get a read-only RunDir.
        device, world_size, command: recorded in run.json (``command`` defaults to ``sys.argv``).
    """
    run = RunDir(path, writable=is_main)
    if not is_main:
        return run
    path = run.path
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"Run path {path} exists and is not a directory.", "Choose another -o/--output.")
    info = read_run_info(path) if path.is_dir() else None
    if info is not None and info.get("kind") != kind:
        raise ModelError(
            f"{path} is a run directory of `cxr {info.get('kind')}`, not `cxr {kind}`.",
            "Choose another -o/--output for this command (a run directory belongs to one command).",
        )
    decision = decide(path, run_spec(kind), overwrite=overwrite, resume=resume)
    fresh = decision.action != "resume"
    if not fresh:
        info = _close_dead_session(run, read_run_info(path) or {})  # kill -9 left "running": now interrupted
        _check_same_config(path, run.read_config(), to_dict(config), set(mutable_keys))
    claim(decision)
    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    run.remove_stale_temporaries()
    session = {
        "start_time": now_iso(),
        "host": socket.gethostname(),
        "device": device,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "world_size": world_size,
    }
    argv = list(command) if command is not None else list(sys.argv)
    if fresh:
        run.write_config(config)
        atomic_write_json(
            run.run_json_path,
            {
                "schema_version": RUN_SCHEMA_VERSION,
                "kind": kind,
                "status": "running",
                "tool": "cxr-tools",
                "tool_version": __version__,
                "versions": library_versions(),
                "git_commit": git_commit(),
                "host": session["host"],
                "platform": platform.platform(),
                "device": device,
                "world_size": world_size,
                "slurm": slurm_info(),
                "command": argv,
                "start_time": session["start_time"],
                "end_time": None,
                "resumed": 0,
                "sessions": [session],
            },
        )
    else:
        previous = info or {}
        run.update_info(
            status="running",
            end_time=None,
            resumed=int(previous.get("resumed", 0)) + 1,
            host=session["host"],
            device=device,
            world_size=world_size,
            slurm=slurm_info(),
            command=argv,
            sessions=[*(previous.get("sessions") or []), session],
        )
    return run


def _check_same_config(path: Path, saved: Mapping[str, Any], new: Any, mutable: set[str]) -> None:
    if not isinstance(new, Mapping) or not saved:
        return
    new = json.loads(json.dumps(new, default=str))
    changed = differing_keys(saved, new, ignore=mutable)
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"{path} is an incomplete run started with different options ({detail}).",
            "Rerun with the original options to resume it, or pass --overwrite to start again.",
        )


def git_commit() -> str | None:
    """The git commit of the cxr-tools source tree, else of the working directory; None outside git."""
    here = Path(__file__).resolve().parent
    for where in (here, Path.cwd()):
        try:
            done = subprocess.run(
                ["git", "-C", str(where), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return None


def slurm_info(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The SLURM job identifiers of this process (None outside SLURM)."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return None
    return {key: env[var] for key, var in _SLURM_VARS.items() if var in env}
