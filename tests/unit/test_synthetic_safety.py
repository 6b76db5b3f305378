"""Bad settings are refused clearly, and no run ever leaves something that looks like a complete dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from interrupting_progress import Interrupt

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.errors import ConfigError, OutputExistsError


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"layout": "mimic"}, "Unknown layout 'mimic'"),
        ({"format": "jpeg2000"}, "Unknown format 'jpeg2000'"),
        ({"patients": 0}, "--patients must be"),
        ({"size": -5}, "--size must be"),
        ({"size": 8}, "--size must be"),
        ({"seed": -1}, "--seed must be"),
        ({"workers": -2}, "--workers must be"),
        ({"layout": "chexpert", "format": "dicom"}, "NIH layout only"),
    ],
)
def test_bad_settings_raise_config_error_and_write_nothing(tmp_path, changes, words):
    cfg = SyntheticConfig(**{"dest": tmp_path / "out", "patients": 2, "size": 32, **changes})
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        generate(cfg)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_refused_then_replaced_with_overwrite(tmp_path):
    dest = tmp_path / "ds"
    generate(SyntheticConfig(dest=dest, patients=2, size=32, seed=0))
    before = (dest / "Data_Entry_2017_v2020.csv").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        generate(SyntheticConfig(dest=dest, patients=3, size=32, seed=1))
    assert (dest / "Data_Entry_2017_v2020.csv").read_text() == before
    result = generate(SyntheticConfig(dest=dest, patients=3, size=32, seed=1, overwrite=True))
    assert result.n_patients == 3 and (dest / "Data_Entry_2017_v2020.csv").read_text() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary siblings left behind


def test_empty_existing_directory_is_used(tmp_path):
    (tmp_path / "ds").mkdir()
    result = generate(SyntheticConfig(dest=tmp_path / "ds", patients=1, size=32))
    assert (result.dest / "images").is_dir()


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path):
    dest = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        generate(SyntheticConfig(dest=dest, patients=6, size=32), Interrupt("synthetic images", 3, calls=True))
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_dataset(tmp_path):
    dest = tmp_path / "ds"
    generate(SyntheticConfig(dest=dest, patients=2, size=32, seed=0))
    before = sorted(p.name for p in (dest / "images").iterdir())
    with pytest.raises(KeyboardInterrupt):
        generate(
            SyntheticConfig(dest=dest, patients=6, size=32, seed=5, overwrite=True),
            Interrupt("synthetic images", 2, calls=True),
        )
    assert sorted(p.name for p in (dest / "images").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        generate(SyntheticConfig(dest=Path(target), patients=1, size=32))
