"""`cxr predict --support`: adapting supervised (fine-tune), Siamese (prototypes) and MAML runs to labelled images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from predict_fixtures import make_model_dir, read_rows, write_png

from cxr_tools.data.predict_io.inputs import read_support
from cxr_tools.engine.predict import PredictConfig, run_predict
from cxr_tools.errors import DataError, InputError, ModelError

torch.set_num_threads(1)


def _image(kind: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """Distinct looks per class: a bright disc left (Effusion), a bright bar right (Mass), plain (NORMAL)."""
    img = np.clip(rng.normal(70, 8, size=(size, size)), 0, 255).astype(np.uint8)
    if kind == "Effusion":
        cv2.circle(img, (size // 4, size // 2), size // 5, 250, -1)
    elif kind == "Mass":
        cv2.rectangle(img, (size // 2 + 3, 4), (size - 4, size - 4), 250, -1)
    img[0, 0], img[-1, -1] = 0, 255
    return img


def make_support_folder(root: Path, per_class: int = 3, seed: int = 0, negative: str = "NORMAL") -> Path:
    rng = np.random.default_rng(seed)
    for cls in ("Effusion", "Mass", negative):
        for i in range(per_class):
            write_png(root / cls / f"{cls}_{i}.png", _image(cls if cls != negative else "NORMAL", rng))
    return root


def _scores(rows: list[dict[str, str]], label: str, name_part: str) -> list[float]:
    return [float(r[label]) for r in rows if name_part in Path(r["path"]).name]


def test_supervised_run_fine_tunes_on_a_support_folder(tmp_path):
    model = make_model_dir(tmp_path / "m", labels=("A", "B", "C"))
    support = make_support_folder(tmp_path / "support")
    out = tmp_path / "p.csv"
    res = run_predict(PredictConfig(input=support, output=out, model=model, support=support, threshold="0.5"))
    assert res.labels == ("Effusion", "Mass") and res.method == "finetune" and res.n_support == 9
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "Effusion", "Mass", "Effusion_pred", "Mass_pred", "error"]
    assert len(rows) == 9
    # the new head learnt the support labels: positives above the others on average (random tiny backbone)
    for label, other in (("Effusion", "Mass_"), ("Mass", "Effusion_")):
        pos = np.mean(_scores(rows, label, f"{label}_"))
        assert pos > np.mean(_scores(rows, label, "NORMAL_")) and pos > np.mean(_scores(rows, label, other))
    # deterministic: same seed, same CSV
    again = tmp_path / "q.csv"
    run_predict(PredictConfig(input=support, output=again, model=model, support=support, threshold="0.5"))
    assert again.read_text() == out.read_text()
    # fine-tuning every layer separates the support images completely
    run_predict(PredictConfig(input=support, output=tmp_path / "all.csv", model=model, support=support, finetune="all"))
    rows = read_rows(tmp_path / "all.csv")
    for label in ("Effusion", "Mass"):
        others = [float(r[label]) for r in rows if not Path(r["path"]).name.startswith(label)]
        assert min(_scores(rows, label, f"{label}_")) > max(others)


def test_support_csv_with_labels(tmp_path):
    model = make_model_dir(tmp_path / "m")
    make_support_folder(tmp_path / "s")
    lines = ["path,Effusion,Mass"]
    for p in sorted((tmp_path / "s").rglob("*.png")):
        cls = p.parent.name
        lines.append(f"{p.relative_to(tmp_path)},{int(cls == 'Effusion')},{int(cls == 'Mass')}")
    (tmp_path / "support.csv").write_text("\n".join(lines) + "\n")
    sup = read_support(tmp_path / "support.csv")
    assert sup.classes == ("Effusion", "Mass") and sup.positives() == {"Effusion": 3, "Mass": 3}
    res = run_predict(
        PredictConfig(
            input=tmp_path / "s" / "Mass", output=tmp_path / "p.csv", model=model, support=tmp_path / "support.csv"
        )
    )
    assert res.labels == ("Effusion", "Mass") and res.n_ok == 3


def test_support_without_enough_positives_or_negatives(tmp_path):
    make_support_folder(tmp_path / "s", per_class=2)
    with pytest.raises(DataError, match=r"fewer than 3 positive.*Effusion \(2\), Mass \(2\)"):
        read_support(tmp_path / "s", min_support=3)
    (tmp_path / "only").mkdir()
    write_png(tmp_path / "only" / "Effusion" / "a.png", _image("Effusion", np.random.default_rng(0)))
    with pytest.raises(DataError, match="no negative image for: Effusion"):
        read_support(tmp_path / "only")
    (tmp_path / "bad.csv").write_text("path,Effusion\na.png,-1\n")
    with pytest.raises(InputError, match="must be 0 or 1"):
        read_support(tmp_path / "bad.csv")
    (tmp_path / "empty_class").mkdir()
    make_support_folder(tmp_path / "empty_class", per_class=1)
    (tmp_path / "empty_class" / "Nodule").mkdir()
    with pytest.raises(DataError, match=r"Nodule \(0\)"):
        read_support(tmp_path / "empty_class")


def test_min_support_reaches_the_engine_and_unreadable_support_image(tmp_path):
    model = make_model_dir(tmp_path / "m")
    support = make_support_folder(tmp_path / "s", per_class=2, negative="No Finding")
    cfg = dict(input=support / "Mass", output=tmp_path / "p.csv", model=model, support=support)
    with pytest.raises(DataError, match="fewer than 5"):
        run_predict(PredictConfig(**cfg, min_support=5))
    (support / "Mass" / "zz_broken.png").write_text("not a png")
    with pytest.raises(DataError, match=r"zz_broken\.png cannot be read"):
        run_predict(PredictConfig(**cfg))
    assert not (tmp_path / "p.csv").exists()


def test_siamese_run_uses_prototypes(tmp_path):
    model = make_model_dir(tmp_path / "sia", training="siamese", num_classes=16, extra={"distance": "cosine"})
    support = make_support_folder(tmp_path / "s")
    res = run_predict(PredictConfig(input=support, output=tmp_path / "p.csv", model=model, support=support))
    assert res.method == "prototype" and res.labels == ("Effusion", "Mass")
    rows = read_rows(tmp_path / "p.csv")
    # on its own support set the nearest-prototype rule scores positives above negatives on average
    assert np.mean(_scores(rows, "Effusion", "Effusion_")) > np.mean(_scores(rows, "Effusion", "NORMAL_"))


def test_maml_run_adapts_and_checks_ways(tmp_path):
    extra = {"maml": {"inner_lr": 0.05, "adapt_steps": 3, "ways": 2}}
    model = make_model_dir(tmp_path / "maml", training="maml", num_classes=2, extra=extra)
    support = make_support_folder(tmp_path / "s")
    res = run_predict(PredictConfig(input=support, output=tmp_path / "p.csv", model=model, support=support))
    assert res.method == "maml" and res.labels == ("Effusion", "Mass") and res.n_ok == 9
    write_png(support / "Nodule" / "n.png", _image("Mass", np.random.default_rng(9)))
    with pytest.raises(ModelError, match="--ways 2"):
        run_predict(PredictConfig(input=support, output=tmp_path / "q.csv", model=model, support=support))


def test_support_thresholds_are_chosen_on_the_adapted_support_scores(tmp_path):
    from cxr_tools.eval.thresholds import choose_thresholds

    model = make_model_dir(tmp_path / "m", labels=("A", "B", "C"))
    support = make_support_folder(tmp_path / "support")
    res = run_predict(PredictConfig(input=support, output=tmp_path / "p.csv", model=model, support=support))
    rows = read_rows(tmp_path / "p.csv")  # the support images themselves, scored as queries are (fine-tune)
    targets = np.array([[Path(r["path"]).name.startswith(c) for c in ("Effusion", "Mass")] for r in rows], float)
    scores = np.array([[float(r["Effusion"]), float(r["Mass"])] for r in rows])
    expected = choose_thresholds(targets, scores)
    assert [res.thresholds[c] for c in ("Effusion", "Mass")] == pytest.approx(expected, abs=1e-5)
    assert (tmp_path / "p.thresholds.json").is_file() and "support set" in str(res.threshold_rule)
