"""Errors users see.

Every failure a user can cause or fix is a :class:`CxrError` whose message says what went wrong *and what
to do next*. The CLI prints the message as one line on stderr and exits with :attr:`CxrError.exit_code`
(1); ``CXR_DEBUG=1`` adds the traceback. Never ``assert`` on user input.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base class of every error the CLI turns into one clear line and exit code 1."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} {hint}")

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} {self.hint}"


class ConfigError(CxrError):
    """A configuration value or file is invalid (bad YAML, unknown key, out-of-range value)."""


class WorkspaceError(ConfigError):
    """A dataset, cache or run name that names nothing, or a default with several candidates: a usage error (exit
    2) whose message lists what exists, so the user can name one."""

    exit_code = 2


class InputError(CxrError):
    """An input path, file or CSV is missing, unreadable or malformed."""


class OutputExistsError(CxrError):
    """The output already exists and is complete; ``--overwrite`` or ``--resume`` is needed."""


class OutputLockedError(OutputExistsError):
    """Another live process is writing the same output (runtime/locks.py)."""


class DownloadError(CxrError):
    """A download failed, was cut short, or did not match its checksum."""


class DataError(CxrError):
    """A dataset or cache is inconsistent (missing columns, unknown labels, too few images)."""


class CacheError(DataError):
    """A preprocessed cache is incomplete, corrupt, or of an unsupported schema version."""


class ModelError(CxrError):
    """A model name, checkpoint or run directory cannot be used as asked."""


class DependencyError(CxrError):
    """An optional dependency (e.g. learn2learn) is missing; the message says how to install it."""


class ResourceError(CxrError):
    """Out of memory or another resource limit; the message says what to lower."""


class NoSpaceError(ResourceError):
    """The disk (or quota) of an output is full; the message names the output and how to finish once space is
    freed. Whatever was complete before stays as it was (runtime/space.py)."""
