"""Preprocess workers keep freed memory for reuse (``keep_freed_memory``): no page faults for the buffers every
image allocates again, in worker processes only; the calling process's malloc is left as it was."""

from __future__ import annotations

import platform
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

_SCRIPT = """
import resource, sys
import numpy as np
from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.data.decoding.pipeline import ChunkTask, keep_freed_memory, ordered_map, process_chunk

def faults_after_chunk(path):
    result = process_chunk(ChunkTask(0, (path,), ImageOps(size=8)))
    assert result.images.shape == (1, 8, 8) and not result.rejected
    np.ones(1 << 19).sum()  # the first 4 MiB block is new memory either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(1 << 19).sum()  # 4 MiB, allocated and freed as an image's buffers are
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, keep_freed_memory.cache_info().currsize

if __name__ == "__main__":
    here = faults_after_chunk(sys.argv[1])
    [worker] = ordered_map(faults_after_chunk, [sys.argv[1]], workers=1)
    print(*here, *worker)
"""


def test_worker_processes_keep_freed_memory_and_the_caller_does_not(tmp_path):
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8))
    script = tmp_path / "probe.py"
    script.write_text(_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(png)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    here_faults, here_tuned, worker_faults, worker_tuned = map(int, out.split())
    assert (here_tuned, worker_tuned) == (0, 1)
    assert here_faults > 200, "the untuned process should page-fault its 4 MiB buffers in again"
    assert worker_faults < here_faults / 10
