"""Foundation encoders (``--backbone hf:DIR`` / presets): tiny randomly initialised encoders of the real
architectures, written by their own libraries (transformers ``save_pretrained``, open_clip's hf-hub config writer
and safetensors), loaded offline, fed grey images as their processors would, and used by every command.
Nothing is downloaded: CXR_OFFLINE=1 and an empty Hugging Face cache for every test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from benchmark_fixtures import cxr, write_plan
from cli_helpers import assert_one_line_error
from evaluate_factory import SPLIT, make_eval_cache
from predict_fixtures import write_png
from script_modules import REPO, load_script
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.errors import DataError, ModelError
from cxr_tools.models import create_model, load_model_dir
from cxr_tools.models.encoders import DATACARD_FILE

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

torch.set_num_threads(1)
runner = CliRunner()
TINY = load_script(REPO / "examples" / "benchmark" / "tiny_encoder.py", "tiny_encoder")
SPLIT_TEST = list(SPLIT.test)
SIDE = 28  # the tiny encoders' input size (2 x 2 patches of 14 px)
FAST = ["--episodes", "3", "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots", "--steps", "5"]


def _card(source: str = "", classes: tuple[str, ...] = ()) -> dict:
    return {
        "title": "tiny test encoder",
        "reference": "written by the test",
        "data": [{"dataset": "test phantoms", "source": source, "classes": list(classes), "chest_xray": True}],
    }


def save_dinov2(folder: Path, *, card: dict | None = None, resize: int = SIDE) -> Path:
    """A randomly initialised DINOv2 (hidden 32, 2 layers, patch 14) and its BitImageProcessor, as
    ``save_pretrained`` writes them (the phantom benchmark's tiny encoder); ``card`` becomes its data card."""
    return TINY.save_tiny_dinov2(folder, side=SIDE, resize=resize, card=card)


def save_open_clip(folder: Path) -> tuple[Path, torch.nn.Module]:
    """A randomly initialised tiny open_clip CLIP in the hf-hub format (open_clip_config.json + safetensors)."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    model = open_clip.CLIP(**cfg).eval()
    model.visual.image_mean, model.visual.image_std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # as create_model sets them
    folder.mkdir(parents=True, exist_ok=True)
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, model


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("foundation")
    cache = make_eval_cache(tmp, n=160, size=32)
    dino = save_dinov2(tmp / "dino", card=_card("test"))
    return tmp, cache, dino


def test_grey_images_are_fed_as_the_processor_feeds_their_rgb_copy(env):
    tmp, _, dino = env
    model = create_model(f"hf:{dino}", num_classes=0)
    processor = transformers.AutoImageProcessor.from_pretrained(dino, local_files_only=True)
    grey = np.random.default_rng(0).integers(0, 256, (2, SIDE, SIDE), dtype=np.uint8)
    rgb = [np.repeat(g[..., None], 3, axis=2) for g in grey]
    expected = processor(images=rgb, return_tensors="pt")["pixel_values"]
    got = model.prepare(torch.from_numpy(grey).float().div(255).unsqueeze(1))
    assert got.shape == expected.shape == (2, 3, SIDE, SIDE) and TINY.DATACARD == DATACARD_FILE
    assert torch.allclose(got, expected, atol=1e-5)
    # a larger cache image is resized (shortest side) and centre-cropped to the encoder's size
    resized = save_dinov2(tmp / "dino-resize", resize=SIDE + 4)
    wide = create_model(f"hf:{resized}", num_classes=0).prepare(torch.rand(1, 1, 40, 56))
    assert wide.shape == (1, 3, SIDE, SIDE)


def test_embedding_is_the_pooled_output_batch_independent_and_dtype_agnostic(env):
    _, _, dino = env
    model = create_model(f"hf:{dino}", num_classes=0)
    reference = transformers.AutoModel.from_pretrained(dino, local_files_only=True).eval()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 1, 32, 32), dtype=np.uint8))
    emb = model.embed(images)
    assert emb.shape == (5, 32) and model.num_features == 32 and emb.dtype == torch.float32
    with torch.no_grad():
        pooled = reference(pixel_values=model.prepare(images.float() / 255)).pooler_output
    assert torch.allclose(emb, pooled, atol=1e-5)
    singles = torch.cat([model.embed(images[i : i + 1]) for i in range(5)])
    assert torch.allclose(emb, singles, atol=1e-5)
    assert torch.allclose(emb, model.embed(images[:, 0].float() / 255, batch_size=2), atol=1e-5)


def test_a_two_tower_siglip_keeps_its_vision_tower_and_its_image_features(tmp_path):
    torch.manual_seed(0)
    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    config = transformers.SiglipConfig(
        text_config={**small, "vocab_size": 64, "max_position_embeddings": 8, "bos_token_id": 1, "eos_token_id": 2},
        vision_config={**small, "image_size": 32, "patch_size": 16},
    )
    reference = transformers.SiglipModel(config).eval()
    reference.save_pretrained(tmp_path / "siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    model = create_model(f"hf:{tmp_path / 'siglip'}", num_classes=0)
    assert model.encoder.text_model is None and model.contract.size == (32, 32) and model.contract.resize == 0
    images = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        out = reference.get_image_features(pixel_values=model.prepare(images))
    expected = out if isinstance(out, torch.Tensor) else out.pooler_output  # the attention-pooled image embedding
    assert torch.allclose(model.embed(images), expected, atol=1e-5)


def test_open_clip_folder_loads_its_vision_tower_only(tmp_path):
    folder, reference = save_open_clip(tmp_path / "clip")
    model = create_model(f"hf:{folder}", num_classes=0)
    assert model.library == "open_clip" and model.num_features == 16
    assert not any(k.startswith("encoder.transformer.") and "text" in k for k in model.state_dict())
    images = torch.rand(3, 1, 40, 40)
    with torch.no_grad():
        expected = reference.encode_image(model.prepare(images))
    assert torch.allclose(model.embed(images), expected, atol=1e-5)
    assert torch.allclose(model._mean.flatten(), torch.tensor([0.3, 0.4, 0.5]))
    assert torch.allclose(model._std.flatten(), torch.tensor([0.2, 0.25, 0.3]))


def test_offline_errors_name_the_files_and_where_to_put_them(env, tmp_path):
    with pytest.raises(ModelError) as err:
        create_model("rad-dino")
    text = f"{err.value.message} {err.value.hint}"
    assert "microsoft/rad-dino" in text and "CXR_OFFLINE" in text
    assert "config.json" in text and "preprocessor_config.json" in text and "model.safetensors" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds no encoder") as err:
        create_model(f"hf:{empty}")
    assert "config.json" in err.value.hint
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(env[1]),
            "--method",
            "linear-probe",
            "--backbone",
            "hf:cxr-test/not-cached",
            "-o",
            str(tmp_path / "out"),
            *FAST,
        ],
    )
    assert_one_line_error(res, "cxr-test/not-cached")


def test_a_repo_id_loads_from_the_hugging_face_cache_offline(env, tmp_path, monkeypatch):
    _, _, dino = env
    hub = tmp_path / "hub"
    snapshot = hub / "models--cxr-test--tiny-dino" / "snapshots" / "0123abcd"
    shutil.copytree(dino, snapshot)
    (hub / "models--cxr-test--tiny-dino" / "refs").mkdir()
    (hub / "models--cxr-test--tiny-dino" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    model = create_model("hf:cxr-test/tiny-dino", num_classes=0)
    assert model.model_name == "hf:cxr-test/tiny-dino" and Path(model.source) == snapshot.resolve()


def _evaluate(cache: Path, out: Path, method: str, backbone: str | None, *extra: str) -> dict:
    args = ["evaluate", "--data", str(cache), "--method", method, "-o", str(out), *FAST, *extra]
    res = runner.invoke(app, args + (["--backbone", backbone] if backbone else []))
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text()), res.stdout


def test_evaluate_scores_an_encoder_without_a_run_on_the_same_episodes(env):
    tmp, cache, dino = env
    probe, stdout = _evaluate(cache, tmp / "eval-probe", "linear-probe", f"hf:{dino}")
    proto, _ = _evaluate(cache, tmp / "eval-proto", "prototype", f"hf:{dino}")
    tuned, _ = _evaluate(cache, tmp / "eval-tune", "finetune", f"hf:{dino}")
    pixels, _ = _evaluate(cache, tmp / "eval-pixels", "pixels", None)
    assert probe["episode_list_hash"] == proto["episode_list_hash"] == pixels["episode_list_hash"]
    assert tuned["episode_list_hash"] == pixels["episode_list_hash"]
    assert probe["kind"] == "encoder" and probe["architecture"] == f"hf:{dino}" and probe["run"] is None
    assert probe["encoder"]["embedding_size"] == 32 and probe["encoder"]["library"] == "transformers"
    assert probe["settings"]["features"] == "backbone" and 0.0 <= probe["overall"]["auc"]["mean"] <= 1.0
    # the encoder's data card says it saw this dataset's images ("test" source): every output names it
    assert probe["lineage_notes"] and "tiny test encoder" in probe["lineage_notes"][0]
    assert "Note: the encoder is tiny test encoder" in stdout
    res = runner.invoke(app, ["compare", str(tmp / "eval-probe"), str(tmp / "eval-pixels")])
    assert res.exit_code == 0, res.output
    assert "tiny test encoder" in res.stdout


def test_an_encoder_without_a_card_or_that_learned_a_meta_test_class_is_refused(env, tmp_path):
    _, cache, _ = env
    unknown = save_dinov2(tmp_path / "unknown")
    args = ["evaluate", "--data", str(cache), "--method", "prototype", "--backbone", f"hf:{unknown}", *FAST]
    assert_one_line_error(runner.invoke(app, [*args, "-o", str(tmp_path / "a")]), "cannot be checked")
    summary, _ = _evaluate(cache, tmp_path / "b", "prototype", f"hf:{unknown}", "--allow-leak")
    assert "no data card" in summary["leak"]
    labelled = save_dinov2(tmp_path / "labelled", card=_card(classes=("E",)))
    from cxr_tools.engine.evaluate import EvaluateConfig, evaluate

    with pytest.raises(DataError, match="meta-test class"):
        evaluate(
            EvaluateConfig(
                data=cache,
                method="linear-probe",
                backbone=f"hf:{labelled}",
                output=tmp_path / "c",
                episodes=2,
                shots=2,
                queries=3,
                device="cpu",
                plots=False,
            )
        )


def test_train_freeze_saves_the_head_reloads_offline_predicts_and_refuses_other_weights(env, tmp_path):
    _, cache, dino = env
    run = tmp_path / "run"
    args = [
        "train",
        str(cache),
        "-o",
        str(run),
        "--backbone",
        f"hf:{dino}",
        "--freeze",
        "--classes",
        "base",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--no-augment",
        "--lr",
        "0.01",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["architecture"] == f"hf:{dino}" and meta["model_args"]["frozen"] is True
    assert meta["extra"]["frozen_features"] is True and meta["lineage"]["weights"]["title"] == "tiny test encoder"
    from safetensors.torch import load_file

    assert sorted(load_file(str(run / "model" / "model.safetensors"))) == ["head.bias", "head.weight"]
    model, _ = load_model_dir(run)
    fresh = create_model(f"hf:{dino}", num_classes=0)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(model.forward_features(x), fresh.forward_features(x), atol=1e-6)  # encoder untouched

    from cxr_tools.webapp.service import RunService  # cxr app's Classify tab: scores and Grad-CAM overlays

    service = RunService(run, "cpu")
    upload = write_png(tmp_path / "upload.png", np.random.default_rng(2).integers(0, 256, (48, 40), dtype=np.uint8))
    scored = service.classify([upload])
    assert scored.errors == [""] and scored.probs[0].shape == (2,)
    overlay = service.cam(service.decode(upload), "B")
    assert overlay.ndim == 3 and overlay.shape[2] == 3

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(images / f"im{i}.png", rng.integers(0, 256, (40, 36), dtype=np.uint8))
    res = runner.invoke(
        app,
        ["predict", str(images), "-m", str(run), "-o", str(tmp_path / "pred.csv"), "--workers", "0", "--device", "cpu"],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "pred.csv")
    assert len(table) == 3 and {"A", "B"} <= set(table.columns)

    probe, _ = _evaluate(cache, tmp_path / "eval", "linear-probe", None, str(run))  # trained on the base pool
    assert probe["architecture"] == f"hf:{dino}" and probe["meta_split"]["test"] == SPLIT_TEST

    moved = tmp_path / "other-dino"
    shutil.copytree(dino, moved)
    torch.manual_seed(1)
    other = transformers.Dinov2Model(transformers.Dinov2Config.from_pretrained(dino))
    other.save_pretrained(dino)  # the encoder's files now hold other weights
    try:
        with pytest.raises(ModelError, match="differ from those this run was trained on"):
            load_model_dir(run)
    finally:
        shutil.copytree(moved, dino, dirs_exist_ok=True)


def test_cxr_models_lists_the_presets_with_their_data_cards():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    for name in ("rad-dino", "medsiglip", "biomedclip", "dinov2-small", "dinov2-base", "siglip"):
        assert name in res.stdout
    res = runner.invoke(app, ["models", "rad-dino"])
    assert res.exit_code == 0, res.output
    for needle in ("microsoft/rad-dino", "MIMIC-CXR", "CheXpert", "NIH ChestX-ray14", "PadChest", "BRAX", "768"):
        assert needle in res.stdout
    data = json.loads(runner.invoke(app, ["models", "biomedclip", "--json"]).stdout)
    assert data["encoders"][0]["library"] == "open_clip" and data["encoders"][0]["embedding_size"] == 512


@pytest.mark.slow
def test_the_benchmark_runs_an_encoder_row_beside_pixels_on_the_same_episodes(env, tmp_path):
    _, cache, dino = env
    methods = {"pixels": {}, "encoder": {"method": "encoder-linear-probe", "backbones": [f"hf:{dino}"]}}
    plan = write_plan(tmp_path / "plan.yaml", cache, tmp_path / "out", shots=[1], seeds=1, methods=methods)
    res = cxr("benchmark", "run", str(plan))
    assert res.returncode == 0, res.stderr
    evaluations = tmp_path / "out" / "evaluations" / "1shot"
    pixels = json.loads((evaluations / "pixels" / "summary.json").read_text())
    encoder = json.loads((evaluations / "encoder" / "summary.json").read_text())
    assert encoder["kind"] == "encoder" and encoder["episode_list_hash"] == pixels["episode_list_hash"]
    assert (tmp_path / "out" / "compare" / "1shot").is_dir()


def test_an_encoder_backbone_is_refused_with_a_run_or_for_scratch(env, tmp_path):
    from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
    from cxr_tools.errors import ConfigError

    _, cache, dino = env
    base = {"data": cache, "backbone": f"hf:{dino}", "output": tmp_path / "x", "episodes": 2, "device": "cpu"}
    with pytest.raises(ConfigError, match="Pass either a run or --backbone ENCODER"):
        evaluate(EvaluateConfig(run=tmp_path, method="linear-probe", **base))
    with pytest.raises(ConfigError, match="trains from random weights"):
        evaluate(EvaluateConfig(method="scratch", **base))
    assert not (tmp_path / "x").exists()
