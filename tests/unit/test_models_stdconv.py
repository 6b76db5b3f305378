"""Weight-standardised convolutions under GroupNorm keep conv4's ReLUs alive on non-negative images."""

from __future__ import annotations

import torch
from torch import nn

from cxr_tools.models import create_model
from cxr_tools.models.backbones import ConvNet, StdConv2d

torch.set_num_threads(1)


def test_stdconv_kernels_have_zero_mean_and_unit_variance():
    torch.manual_seed(0)
    conv = StdConv2d(3, 5, 3, padding=1, bias=False)
    # A constant image: every interior output is the kernel sum times the constant, zero once standardised.
    out = conv(torch.full((1, 3, 8, 8), 0.7))
    assert out[..., 1:-1, 1:-1].abs().max() < 1e-5
    # A single-pixel impulse reads the standardised kernel back.
    x = torch.zeros(1, 3, 3, 3)
    x[0, 0, 1, 1] = 1.0
    k = conv(x)[0, :, 1, 1]
    w = conv.weight[:, 0, 1, 1]
    mean = conv.weight.mean(dim=(1, 2, 3))
    std = conv.weight.var(dim=(1, 2, 3), unbiased=False).add(1e-5).sqrt()
    torch.testing.assert_close(k, (w - mean) / std)


def test_only_multi_channel_group_norm_uses_standardised_kernels():
    assert sum(isinstance(m, StdConv2d) for m in create_model("conv4", num_classes=2).modules()) == 4
    assert not any(isinstance(m, StdConv2d) for m in create_model("conv4-tiny", num_classes=2).modules())
    assert not any(isinstance(m, StdConv2d) for m in create_model("conv4", num_classes=2, norm="batch").modules())
    assert next(iter(create_model("conv4", num_classes=2).state_dict())) == "features.0.weight"


def _dead_last_block_channels(model: ConvNet, x: torch.Tensor) -> int:
    h = model.features[:-1](x)  # up to the last ReLU
    return int(((h > 0).float().mean(dim=(0, 2, 3)) == 0).sum())


def test_group_norm_conv4_has_no_dead_channels_on_bright_images():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = 0.5 + 0.1 * torch.rand(8, 1, 32, 32, generator=g)  # bright, low-contrast, like radiographs
    model = create_model("conv4", num_classes=2).eval()
    with torch.no_grad():
        assert _dead_last_block_channels(model, x) == 0
        # the same weights as plain convolutions: GroupNorm centres groups, not channels, so many die
        plain = create_model("conv4", num_classes=2).eval()
        plain.load_state_dict(model.state_dict())
        for i, m in enumerate(plain.features):
            if isinstance(m, StdConv2d):
                c = nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1, bias=False)
                c.weight.copy_(m.weight)
                plain.features[i] = c
        assert _dead_last_block_channels(plain, x) >= 4
