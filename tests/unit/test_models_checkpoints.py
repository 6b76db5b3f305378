"""Model folders (model.json + safetensors) and training checkpoints (weights_only)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from cxr_tools.errors import ModelError
from cxr_tools.models import check_compatible, create_model, load_model_dir, read_model_meta, save_model_dir
from cxr_tools.runtime.checkpointing import load_checkpoint, save_checkpoint
from cxr_tools.runtime.seeding import rng_state, set_rng_state

torch.set_num_threads(1)
LABELS = ["Effusion", "Mass", "Nodule"]


def _x(size: int = 32) -> torch.Tensor:
    return torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(0))


def _trained(name: str, **kw) -> torch.nn.Module:
    """A model whose weights and BatchNorm statistics differ from a fresh one."""
    model = create_model(name, **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.train()
        model(_x())  # updates running stats where there are any
    return model.eval()


@pytest.mark.parametrize(("name", "kw"), [("conv4-tiny", {"hidden": 12}), ("resnet-tiny", {}), ("densenet-tiny", {})])
def test_round_trip_gives_identical_outputs(tmp_path, name, kw):
    model = _trained(name, num_classes=3, **kw)
    meta = {"labels": LABELS, "training": "supervised", "cache_manifest_hash": "abc123", "image_size": 32}
    save_model_dir(model, meta, tmp_path / "model")
    loaded, got = load_model_dir(tmp_path / "model")
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x()), model(_x()), atol=0, rtol=0)
    assert got["architecture"] == name and got["labels"] == LABELS and got["cache_manifest_hash"] == "abc123"
    assert got["input"] == {"channels": 1, "image_size": 32, "normalisation": "unit", "preprocessing": {}}
    assert got["embedding_size"] == model.num_features and got["num_classes"] == 3


def test_model_json_is_self_describing_and_run_dir_works(tmp_path):
    model = create_model("conv4-tiny", num_classes=0, norm="instance")
    save_model_dir(model, {"training": "siamese", "extra": {"distance": "cosine"}}, tmp_path / "run" / "model")
    doc = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert doc["format"] == "cxr-model" and doc["format_version"] == 1
    assert doc["model_args"] == {"num_classes": 0, "norm": "instance"}
    assert doc["training"] == "siamese" and doc["extra"] == {"distance": "cosine"}
    assert doc["tool_version"] and len(doc["weights_sha256"]) == 64
    loaded, meta = load_model_dir(tmp_path / "run")  # a run directory resolves to RUN/model
    assert loaded.norm == "instance" and meta["path"].endswith("model")


def test_safetensors_file_holds_no_pickle(tmp_path):
    save_model_dir(create_model("conv4-tiny"), {}, tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    assert set(state) == set(create_model("conv4-tiny").state_dict())


def test_architecture_mismatch_lists_keys(tmp_path):
    save_model_dir(create_model("conv4-tiny", hidden=8), {}, tmp_path)
    doc = json.loads((tmp_path / "model.json").read_text())
    doc["model_args"] = {"hidden": 16}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"shape mismatch.*features\.0\.weight"):
        load_model_dir(tmp_path)
    doc["architecture"], doc["model_args"] = "resnet-tiny", {}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"missing keys: conv1.weight.*unexpected keys: features"):
        load_model_dir(tmp_path)


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        load_model_dir(tmp_path)
    save_model_dir(create_model("conv4-tiny"), {}, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="checksum"):
        load_model_dir(tmp_path)
    doc = json.loads((tmp_path / "model.json").read_text())
    doc["format_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="Upgrade"):
        read_model_meta(tmp_path)
    with pytest.raises(ModelError, match="label names"):
        save_model_dir(create_model("conv4-tiny", num_classes=2), {"labels": LABELS}, tmp_path / "x")
    with pytest.raises(ModelError, match="training kind"):
        save_model_dir(create_model("conv4-tiny"), {"training": "magic"}, tmp_path / "y")
    with pytest.raises(ModelError, match="create_model"):
        save_model_dir(torch.nn.Linear(2, 2), {}, tmp_path / "z")


def test_check_compatible(tmp_path):
    save_model_dir(create_model("conv4-tiny", num_classes=3), {"labels": LABELS, "image_size": 64}, tmp_path)
    meta = read_model_meta(tmp_path)
    check_compatible(meta, image_size=64, labels=LABELS, normalisation="unit", channels=1)
    with pytest.raises(ModelError, match=r"64 px.*128 px.*--size 64"):
        check_compatible(meta, image_size=128)
    with pytest.raises(ModelError, match="not in the model: Hernia; only in the model: Nodule"):
        check_compatible(meta, labels=["Effusion", "Mass", "Hernia"])
    with pytest.raises(ModelError, match="another order"):
        check_compatible(meta, labels=list(reversed(LABELS)))
    with pytest.raises(ModelError, match="'unit'"):
        check_compatible(meta, normalisation="xrv")
    with pytest.raises(ModelError, match="1-channel"):
        check_compatible(meta, channels=3)


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = create_model("conv4-tiny", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(_x()).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "best": {"auc": 0.71, "epoch": None},
        "history": [0.5, 0.4],
        "rng": rng_state(),
        "config": {"lr": 1e-3, "model": "conv4-tiny"},
    }
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and back["best"] == {"auc": 0.71, "epoch": None}
    torch.testing.assert_close(back["model"]["head.weight"], model.state_dict()["head.weight"])
    opt2 = torch.optim.Adam(create_model("conv4-tiny", num_classes=2).parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert list(tmp_path.joinpath("ckpt").iterdir()) == [path]  # no temporary files left


def test_checkpoint_refuses_what_weights_only_cannot_read(tmp_path):
    with pytest.raises(ModelError, match=r"state\['extra'\]\['arr'\] is a ndarray.*torch.from_numpy"):
        save_checkpoint(tmp_path / "a.pt", {"extra": {"arr": np.zeros(3)}})
    with pytest.raises(ModelError, match="PosixPath"):
        save_checkpoint(tmp_path / "b.pt", {"out": tmp_path})
    assert not (tmp_path / "a.pt").exists()


class _Custom:
    pass


def test_corrupt_and_code_carrying_checkpoints(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="unreadable"):
        load_checkpoint(path)
    torch.save({"epoch": 1, "obj": _Custom()}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="not a safe weights file"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
