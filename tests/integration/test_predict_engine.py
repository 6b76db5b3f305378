"""`cxr predict` engine on real files: mixed folders, lists, thresholds, batch independence, cache-identical inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_fixtures import SIZE, make_mixed_folder, make_model_dir, phantom, read_rows, write_png

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.decoding.for_model import decode_stream, model_ops
from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.data.predict_io.inputs import InputItem, list_inputs
from cxr_tools.engine.predict import PredictConfig, run_predict
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess
from cxr_tools.errors import ConfigError, InputError, ModelError, OutputExistsError
from cxr_tools.eval.thresholds import parse_thresholds
from cxr_tools.models import load_model_dir
from cxr_tools.models.inputs import to_model_input
from cxr_tools.runtime.progress import RecordingProgress

torch.set_num_threads(1)


@pytest.fixture
def model_dir(tmp_path):
    return make_model_dir(tmp_path / "run" / "model")


def _reference_probs(model_dir: Path, paths: list[str]) -> np.ndarray:
    """What the model says about each file, decoded by hand one image at a time."""
    from cxr_tools.data.decoding.imaging import load_image

    model, meta = load_model_dir(model_dir)
    ops = ImageOps.from_dict(meta["input"]["preprocessing"])
    with torch.inference_mode():
        return np.concatenate(
            [torch.sigmoid(model(to_model_input(load_image(p, ops)[None], meta))).numpy() for p in paths]
        )


def test_mixed_folder_rows_in_order_with_errors(tmp_path, model_dir):
    folder = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "pred.csv"
    progress = RecordingProgress()
    res = run_predict(PredictConfig(input=tmp_path / "imgs", output=out, model=model_dir, batch_size=3), progress)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == folder["order"]
    # no support set, no validation thresholds in this run: 0.5, stated in the thresholds file beside the CSV
    assert list(rows[0]) == ["path", "Effusion", "Mass", "Effusion_pred", "Mass_pred", "error"]
    assert res.thresholds == {"Effusion": 0.5, "Mass": 0.5} and "default 0.5" in str(res.threshold_rule)
    assert json.loads((tmp_path / "pred.thresholds.json").read_text())["source"] == "default"
    assert (res.n_inputs, res.n_ok, res.n_failed, res.n_skipped) == (7, 5, 2, 1)
    by_path = {r["path"]: r for r in rows}
    assert "truncated PNG" in by_path[folder["bad"][0]]["error"]
    assert "text file" in by_path[folder["bad"][1]]["error"]
    for bad in folder["bad"]:
        assert by_path[bad]["Effusion"] == "" and by_path[bad]["Mass"] == ""
    good = [p for p in folder["order"] if p not in folder["bad"]]
    got = np.array([[float(by_path[p]["Effusion"]), float(by_path[p]["Mass"])] for p in good])
    assert np.allclose(got, _reference_probs(model_dir, good), atol=2e-6)
    assert all(by_path[p]["error"] == "" for p in good)
    assert progress.done("predict") == 7
    assert dict(res.failures) == {
        folder["bad"][0]: by_path[folder["bad"][0]]["error"],
        folder["bad"][1]: by_path[folder["bad"][1]]["error"],
    }


def test_monochrome1_dicom_is_seen_like_its_inverse_png(tmp_path, model_dir):
    from predict_fixtures import write_dicom

    img = phantom(np.random.default_rng(3))
    img[0, 0], img[-1, -1] = 0, 255  # full range: the viewer's MONOCHROME1 inversion (lo + hi - x) is then 255 - x
    write_png(tmp_path / "d" / "plain.png", img)
    write_dicom(tmp_path / "d" / "inverted.dcm", 255 - img, photometric="MONOCHROME1")
    run_predict(PredictConfig(input=tmp_path / "d", output=tmp_path / "p.csv", model=model_dir, workers=0))
    rows = read_rows(tmp_path / "p.csv")
    assert [Path(r["path"]).name for r in rows] == ["inverted.dcm", "plain.png"]
    assert rows[0]["Effusion"] == rows[1]["Effusion"] and rows[0]["Mass"] == rows[1]["Mass"]


def test_scores_do_not_depend_on_batch_size_or_workers(tmp_path, model_dir):
    rng = np.random.default_rng(1)
    for i in range(11):
        write_png(tmp_path / "imgs" / f"{i:02d}.png", phantom(rng))
    (tmp_path / "imgs" / "05.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    outs = {}
    for bs, workers in ((1, 0), (7, 0), (7, 2)):
        out = tmp_path / f"p{bs}_{workers}.csv"
        run_predict(PredictConfig(input=tmp_path / "imgs", output=out, model=model_dir, batch_size=bs, workers=workers))
        outs[(bs, workers)] = read_rows(out)
    a, b, c = outs.values()
    assert [r["path"] for r in a] == [r["path"] for r in b] == [r["path"] for r in c]
    assert [r["error"] for r in a] == [r["error"] for r in b] and a[5]["error"] and not a[4]["error"]
    assert b == c  # same batches whether decoded here or in worker processes
    for ra, rb in zip(a, b, strict=True):
        for col in ("Effusion", "Mass"):
            # same value as written (float32 kernels may differ by one unit in the last bit between batch shapes)
            assert (ra[col] == rb[col] == "") or abs(float(ra[col]) - float(rb[col])) <= 1e-6


def test_a_rows_score_ignores_its_batch_mates(tmp_path, model_dir):
    model, meta = load_model_dir(model_dir)
    rng = np.random.default_rng(5)
    batch = np.stack([phantom(rng, SIZE, SIZE) for _ in range(6)])
    other = batch.copy()
    other[1:] = 255 - other[1:]  # change every other image of the batch
    with torch.inference_mode():
        x1 = torch.sigmoid(model(to_model_input(batch, meta)))[0]
        x2 = torch.sigmoid(model(to_model_input(other, meta)))[0]
    assert torch.equal(x1, x2)


def test_csv_list_relative_paths_and_missing_file(tmp_path, model_dir):
    rng = np.random.default_rng(2)
    write_png(tmp_path / "data" / "x" / "one.png", phantom(rng))
    write_png(tmp_path / "data" / "two.png", phantom(rng))
    lst = tmp_path / "data" / "list.csv"
    lst.write_text("patient,path\np1,two.png\np2,x/one.png\np3,gone.png\n")
    res = run_predict(PredictConfig(input=lst, output=tmp_path / "p.csv", model=model_dir))
    rows = read_rows(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == ["two.png", "x/one.png", "gone.png"]
    assert rows[2]["error"] == "file not found" and rows[0]["error"] == "" and rows[0]["Mass"]
    assert (res.n_ok, res.n_failed) == (2, 1)
    # a plain list of paths with a header line, and a single file
    plain = tmp_path / "data" / "files.txt"
    plain.write_text("filename\ntwo.png\n\nx/one.png\n")
    assert [it.display for it in list_inputs(plain).items] == ["two.png", "x/one.png"]
    single = list_inputs(tmp_path / "data" / "two.png")
    assert single.kind == "file" and len(single.items) == 1


def test_list_without_path_column_is_refused(tmp_path):
    bad = tmp_path / "l.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="none called 'path'"):
        list_inputs(bad)


def test_empty_folder_missing_input_and_existing_output(tmp_path, model_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"No images found .*1 other file"):
        run_predict(PredictConfig(input=tmp_path / "empty", output=tmp_path / "p.csv", model=model_dir))
    with pytest.raises(InputError, match="does not exist"):
        run_predict(PredictConfig(input=tmp_path / "nope", output=tmp_path / "p.csv", model=model_dir))
    assert not (tmp_path / "p.csv").exists()
    write_png(tmp_path / "one" / "a.png", phantom(np.random.default_rng(0)))
    earlier = "path,A,error\nkeep.png,0.5,\n"  # an earlier prediction (--overwrite replaces nothing else)
    (tmp_path / "p.csv").write_text(earlier)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_predict(PredictConfig(input=tmp_path / "one", output=tmp_path / "p.csv", model=model_dir))
    assert (tmp_path / "p.csv").read_text() == earlier
    run_predict(PredictConfig(input=tmp_path / "one", output=tmp_path / "p.csv", model=model_dir, overwrite=True))
    assert read_rows(tmp_path / "p.csv")[0]["error"] == ""


def test_thresholds_global_and_per_label(tmp_path, model_dir):
    rng = np.random.default_rng(4)
    for i in range(4):
        write_png(tmp_path / "imgs" / f"{i}.png", phantom(rng))
    (tmp_path / "imgs" / "9.png").write_text("oops")
    res = run_predict(
        PredictConfig(input=tmp_path / "imgs", output=tmp_path / "a.csv", model=model_dir, threshold="0.5")
    )
    assert res.thresholds == {"Effusion": 0.5, "Mass": 0.5}
    rows = read_rows(tmp_path / "a.csv")
    assert list(rows[0]) == ["path", "Effusion", "Mass", "Effusion_pred", "Mass_pred", "error"]
    for r in rows[:4]:
        for label in ("Effusion", "Mass"):
            assert r[f"{label}_pred"] == str(int(float(r[label]) >= 0.5))
    assert rows[4]["Effusion_pred"] == "" and rows[4]["error"]
    # per label: a threshold below every score and one above every score
    run_predict(
        PredictConfig(input=tmp_path / "imgs", output=tmp_path / "b.csv", model=model_dir, threshold="Mass=0.0")
    )
    rows = read_rows(tmp_path / "b.csv")
    assert list(rows[0]) == ["path", "Effusion", "Mass", "Mass_pred", "error"]
    assert [r["Mass_pred"] for r in rows[:4]] == ["1"] * 4


@pytest.mark.parametrize(
    ("text", "match"),
    [("1.5", r"\[0, 1\]"), ("Nodule=0.3", "not predicted"), ("abc", "not a number"), ("=0.3", "LABEL=VALUE")],
)
def test_bad_thresholds(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_thresholds(text, ["Effusion", "Mass"])


def test_model_ops_from_a_cache_manifest_and_fallback(caplog):
    manifest_style = {"grayscale": True, "interpolation": "area", **ImageOps(size=48, clahe=False).to_dict()}
    assert model_ops({"input": {"image_size": 48, "preprocessing": manifest_style}}) == ImageOps(size=48, clahe=False)
    with caplog.at_level(logging.WARNING, logger="cxr_tools"):
        assert model_ops({"input": {"image_size": 40, "preprocessing": {}}, "path": "m"}) == ImageOps(size=40)
    assert "records no preprocessing" in caplog.text
    with pytest.raises(ModelError, match="cannot reproduce"):
        model_ops({"input": {"image_size": 48, "preprocessing": {**manifest_style, "grayscale": False}}})


def test_model_without_preprocessing_warns_and_still_predicts(tmp_path, caplog):
    model = make_model_dir(tmp_path / "m", preprocessing={}, size=40)
    write_png(tmp_path / "imgs" / "a.png", phantom(np.random.default_rng(0)))
    with caplog.at_level(logging.WARNING, logger="cxr_tools"):
        res = run_predict(PredictConfig(input=tmp_path / "imgs", output=tmp_path / "p.csv", model=model))
    assert res.n_ok == 1 and "records no preprocessing" in caplog.text


def test_maml_and_siamese_runs_need_a_support_set(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", phantom(np.random.default_rng(0)))
    for kind in ("maml", "siamese"):
        model = make_model_dir(tmp_path / kind, training=kind, num_classes=2)
        with pytest.raises(ModelError, match="--support"):
            run_predict(PredictConfig(input=tmp_path / "imgs", output=tmp_path / "p.csv", model=model))


def test_predict_inputs_equal_the_cache_of_cxr_preprocess(tmp_path):
    """The same files through `cxr preprocess` and through predict reach the model as identical tensors."""
    rng = np.random.default_rng(7)
    src = tmp_path / "ds"
    for cls in ("Effusion", "NORMAL"):
        for i in range(3):
            h, w = (52, 44) if i % 2 else (40, 60)  # odd shapes: crop + resize + CLAHE all matter
            write_png(src / cls / f"{cls}_{i}.png", phantom(rng, h, w))
    res = preprocess(
        PreprocessConfig(src=src, output=tmp_path / "cache", source="folder", views=("all",), size=SIZE, workers=0)
    )
    assert res.images == 6
    cache = open_cache(tmp_path / "cache")
    manifest_ops = dict(cache.manifest["preprocessing"])
    model_dir = make_model_dir(tmp_path / "m", preprocessing=manifest_ops)
    model, meta = load_model_dir(model_dir)
    ops = model_ops(meta)
    paths = [str(p) for p in cache.index["source_path"]]
    cached = cache.read(np.arange(len(cache)))
    decoded = np.concatenate([b for _, b, _ in decode_stream([InputItem(p, p) for p in paths], ops, workers=0)])
    assert np.array_equal(decoded, cached)
    lst = tmp_path / "list.csv"
    lst.write_text("path\n" + "\n".join(paths) + "\n")
    run_predict(PredictConfig(input=lst, output=tmp_path / "p.csv", model=model_dir, batch_size=6))
    rows = read_rows(tmp_path / "p.csv")
    with torch.inference_mode():
        expected = torch.sigmoid(model(to_model_input(cached, meta))).numpy()
    got = np.array([[float(r["Effusion"]), float(r["Mass"])] for r in rows])
    assert np.array_equal(got, np.round(expected.astype(np.float64), 6))


def test_default_decoding_workers_follow_the_device_and_the_input_count(monkeypatch):
    from cxr_tools.data.decoding import pipeline as preprocess_pipeline
    from cxr_tools.data.decoding.for_model import decode_workers

    monkeypatch.setattr(preprocess_pipeline, "available_cores", lambda: 16)
    assert decode_workers(3, 10, accelerator=False) == 3  # asked for: always honoured
    assert decode_workers(None, 63, accelerator=True) == 0  # a pool start costs more than it saves
    assert decode_workers(None, 64, accelerator=True) == 16
    assert decode_workers(None, 64, accelerator=False) == 4  # the forward pass's threads use the rest


def test_a_supervised_run_without_support_uses_its_validation_thresholds_and_says_so(tmp_path):
    extra = {"thresholds": {"Effusion": 0.2, "Mass": None}, "threshold_rule": "max F1 on the validation split"}
    model = make_model_dir(tmp_path / "m", extra=extra)
    make_mixed_folder(tmp_path / "imgs")
    res = run_predict(PredictConfig(input=tmp_path / "imgs", output=tmp_path / "p.csv", model=model, workers=0))
    assert res.thresholds == {"Effusion": 0.2, "Mass": 0.5}
    record = json.loads((tmp_path / "p.thresholds.json").read_text())
    assert record["source"] == "validation" and record["defaulted"] == ["Mass"]
    assert "validation split" in record["rule"] and "Mass: none could be chosen, 0.5 used" in record["rule"]
    for r in read_rows(tmp_path / "p.csv"):
        if not r["error"]:
            assert r["Effusion_pred"] == str(int(float(r["Effusion"]) >= 0.2))
    with pytest.raises(ConfigError, match="needs a support set"):
        run_predict(PredictConfig(input=tmp_path / "imgs", output=tmp_path / "q.csv", model=model, threshold="support"))
    none = run_predict(PredictConfig(input=tmp_path / "imgs", output=tmp_path / "n.csv", model=model, threshold="none"))
    assert none.thresholds is None and not (tmp_path / "n.thresholds.json").exists()
