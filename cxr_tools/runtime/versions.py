"""The versions of the libraries that change a result: one list, recorded in every run.json and every evaluation's
summary.json, so two results can be told apart by what computed them (a scikit-learn or SciPy upgrade changes a
logistic fit or a confidence interval as surely as a torch upgrade changes a network)."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

#: Distributions whose versions are recorded (absent ones are left out): the numerical stack first, then the
#: image decoders and the optional meta-learning engines.
VERSIONED_PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "h5py",
    "opencv-python-headless",
    "Pillow",
    "learn2learn",
    "higher",
)


def library_versions() -> dict[str, str]:
    """Python's version and those of :data:`VERSIONED_PACKAGES` that are installed (``{"python": "3.11.9", ...}``)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out
