"""Grad-CAM (cxr_tools.models.saliency): every zoo family is explained, and the map points at the lesion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_tools.errors import ConfigError
from cxr_tools.models.inputs import to_model_input
from cxr_tools.models.registry import create_model
from cxr_tools.models.saliency import cam_classes, chosen, file_name, overlay, saliency_maps
from cxr_tools.models.siamese import SiameseNet


@pytest.mark.parametrize("name", ["conv4-tiny", "simple-cnn", "resnet-tiny", "densenet-tiny"])
def test_every_zoo_family_gets_maps_and_the_model_probabilities(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    x = torch.rand(2, 1, 32, 32)
    maps, probs = saliency_maps(model, x, [0, 2])
    assert maps.shape == (2, 2, 32, 32)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps.reshape(2, 2, -1).max(axis=2), 1.0).sum() >= 1  # scaled per image and class
    with torch.no_grad():
        expected = torch.sigmoid(model(x)).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)  # independent sigmoids, not a softmax
    assert not model.training


def test_a_siamese_wrapper_is_explained_through_its_backbone():
    torch.manual_seed(0)
    net = SiameseNet(create_model("conv4-tiny", num_classes=4))
    from cxr_tools.models.saliency import target_layer

    assert target_layer(net) in set(net.backbone.modules())


def test_maps_of_one_image_do_not_depend_on_its_batch_mates():
    torch.manual_seed(0)
    model = create_model("resnet-tiny", num_classes=2)  # BatchNorm: eval mode keeps images independent
    x = torch.rand(3, 1, 32, 32)
    alone, _ = saliency_maps(model, x[:1], [1])
    batch, _ = saliency_maps(model, x, [1])
    np.testing.assert_allclose(alone[0], batch[0], atol=1e-5)


def test_classes_to_explain_and_file_names():
    labels = ["Effusion", "Mass", "No Finding"]
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]], np.float32)
    assert chosen(probs, labels, None, None) == [[0, 2], []]
    assert chosen(probs, labels, {"Effusion": 0.95, "Mass": 0.1}, None) == [[1, 2], [1]]
    assert chosen(probs, labels, None, ["Mass"]) == [[1], [1]]
    assert cam_classes(labels, "Mass, Effusion") == ["Mass", "Effusion"]
    with pytest.raises(ConfigError, match="Pneumonia"):
        cam_classes(labels, "Pneumonia")
    assert file_name(3, "/data/x ray/p1.dcm", "No Finding") == "00003_p1_No_Finding.png"


def test_overlay_is_an_upscaled_rgb_heat_map():
    img = np.zeros((32, 32), np.uint8)
    cam = np.zeros((32, 32), np.float32)
    cam[8:12, 20:24] = 1.0
    out = overlay(img, cam)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    hot = out[10 * 8, 22 * 8]
    cold = out[28 * 8, 4 * 8]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # JET: red where the map peaks, blue where it is zero


def _mass_phantoms(patients: int, size: int):
    """Phantoms of each patient with and without a Mass (same anatomy, pose and noise), and the Mass's region:
    where the two films differ, as the generator drew it."""
    from cxr_tools.data.synthetic.anatomy import render_layers, sample_anatomy
    from cxr_tools.data.synthetic.render import STREAM_ANATOMY, ImageSpec, render_image, rng_for

    images, targets, regions = [], [], []
    for p in range(1, patients + 1):
        a = sample_anatomy(rng_for(0, STREAM_ANATOMY, p))
        layers = render_layers(a, size, rng_for(0, STREAM_ANATOMY, p, 1))
        with_mass = render_image(0, ImageSpec(p, 0, "PA", (("Mass", 0),), "x.png", 50, "F"), a, layers)
        without = render_image(0, ImageSpec(p, 0, "PA", (), "x.png", 50, "F"), a, layers)
        diff = with_mass.astype(np.float32) - without
        diff -= np.median(diff)  # automatic exposure shifts the whole film a little
        images += [with_mass, without]
        targets += [1.0, 0.0]
        regions += [diff >= 0.5 * diff.max(), None]
    return np.stack(images), torch.tensor(targets)[:, None], regions


@pytest.mark.slow
def test_cam_peak_lies_inside_the_lesion_far_above_chance():
    """A conv4-tiny trained for a few steps to tell Mass from no Mass: on held-out patients the Grad-CAM peak
    falls inside the mass (grown by three pixels, under half a cell of the 8x8 map) far more often than a
    random pixel would."""
    import cv2

    images, y, regions = _mass_phantoms(100, 64)
    x = to_model_input(images, "unit")
    n_train = 150
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model("conv4-tiny", num_classes=1)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(150):
            idx = torch.randint(0, n_train, (32,))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        test = [i for i in range(n_train, len(images)) if regions[i] is not None]
        maps, _ = saliency_maps(model, x[test], [0])
    finally:
        torch.set_num_threads(threads)
    hits, chance = 0, []
    for k, i in enumerate(test):
        region = cv2.dilate(regions[i].astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        peak = np.unravel_index(int(np.argmax(maps[k, 0])), maps[k, 0].shape)
        hits += bool(region[peak])
        chance.append(region.mean())
    rate, expected = hits / len(test), float(np.mean(chance))
    assert expected < 0.08
    assert rate >= 0.5 and rate >= 6 * expected, (hits, len(test), expected)
