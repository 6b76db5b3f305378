"""conv4's max-pool: the fast no-autograd path gives nn.MaxPool2d(2)'s values bit for bit, and the autograd path
is nn.MaxPool2d(2) itself (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxr_tools.models import create_model
from cxr_tools.models.backbones import MaxPool2x2


def _awkward(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Values with many ties (rounded), NaNs, infinities and signed zeros."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2).round()
    flat = x.view(-1)
    flat[::7] = float("nan")
    flat[::11] = -float("inf")
    flat[::17] = float("inf")
    flat[3::13] = -0.0
    return x


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (5, 2, 3, 4), (4, 6, 6), (1, 1, 2, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_grad_path_equals_nn_maxpool(shape: tuple[int, ...], channels_last: bool) -> None:
    x = _awkward(shape)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = nn.MaxPool2d(2)(x), MaxPool2x2()(x)
    assert got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    if not channels_last:  # the native channels-last kernel itself may return +0.0 for a window of 0.0 and -0.0
        assert torch.equal(got.signbit(), expected.signbit())
    with torch.inference_mode():
        assert torch.equal(MaxPool2x2()(x).nan_to_num(), expected.nan_to_num())


def test_autograd_path_routes_gradients_like_nn_maxpool() -> None:
    x = _awkward((3, 4, 9, 8), seed=1)
    grad = torch.randn(3, 4, 4, 4)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    nn.MaxPool2d(2)(a).backward(grad)
    MaxPool2x2()(b).backward(grad)
    assert torch.equal(a.grad, b.grad)


def test_conv4_scores_equal_with_and_without_autograd() -> None:
    torch.manual_seed(0)
    model = create_model("conv4", num_classes=2).eval()
    x = torch.rand(5, 1, 48, 48)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)  # autograd on: the native kernel
    assert torch.equal(fast, slow.detach())
