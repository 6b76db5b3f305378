"""Device resolution, AMP switches and thread counts (CPU-only machine; CUDA paths are checked on a GPU)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cxr_tools.errors import ConfigError, CxrError
from cxr_tools.runtime.devices import (
    AmpSettings,
    autocast_context,
    describe_device,
    make_grad_scaler,
    resolve_amp,
    resolve_device,
    set_threads,
)


def test_cpu_and_auto_resolve_on_a_cpu_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in {expected, "mps"}
    assert resolve_device(None).type == resolve_device("auto").type


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_missing_cuda_is_a_clear_error(spec):
    with pytest.raises(CxrError, match=r"CUDA is not available.*--device cpu"):
        resolve_device(spec)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_missing_mps_is_a_clear_error():
    with pytest.raises(ConfigError, match="no usable MPS"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda:-1"])
def test_unknown_device_names_the_valid_choices(spec):
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N or mps"):
        resolve_device(spec)


def test_amp_is_off_on_cpu_and_autocast_is_a_no_op():
    cpu = torch.device("cpu")
    amp = resolve_amp(cpu, True)
    assert amp == AmpSettings(False, "bf16") and not amp.needs_scaler
    assert isinstance(autocast_context(cpu, True), contextlib.nullcontext)
    with autocast_context(cpu, amp):
        out = torch.nn.Linear(3, 2)(torch.ones(1, 3))
    assert out.dtype == torch.float32
    scaler = make_grad_scaler(cpu, amp)
    assert not scaler.is_enabled()
    loss = out.sum()
    assert scaler.scale(loss) is loss


def test_amp_dtype_is_validated():
    with pytest.raises(ConfigError, match="bf16 or fp16"):
        resolve_amp(torch.device("cpu"), True, "fp8")
    assert AmpSettings(True, "fp16").needs_scaler and not AmpSettings(True, "bf16").needs_scaler


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_runs_in_half_precision():
    dev = resolve_device("cuda")
    amp = resolve_amp(dev, True, "fp16")
    with autocast_context(dev, amp):
        out = torch.nn.Linear(8, 8).to(dev)(torch.ones(2, 8, device=dev))
    assert out.dtype == torch.float16 and make_grad_scaler(dev, amp).is_enabled()
    assert describe_device(dev).startswith("cuda:")


def test_set_threads_sets_and_reports():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert set_threads(None) == 1
        assert describe_device(torch.device("cpu")) == "cpu"
    finally:
        torch.set_num_threads(before)


def test_a_real_allocator_failure_becomes_a_resource_error_naming_what_to_lower():
    from cxr_tools.errors import ResourceError
    from cxr_tools.runtime.devices import explain_out_of_memory

    with (
        pytest.raises(ResourceError, match="Lower --batch-size") as info,
        explain_out_of_memory("Out of memory at batch size 4096.", "Lower --batch-size."),
    ):
        torch.empty(2 * 10**12, dtype=torch.uint8)  # 2 TB: the CPU allocator refuses at once
    assert "can't allocate memory" in str(info.value.__cause__)
    assert str(info.value) == "Out of memory at batch size 4096. Lower --batch-size."


def test_other_errors_pass_through_and_memory_error_counts():
    from cxr_tools.errors import ResourceError
    from cxr_tools.runtime.devices import explain_out_of_memory, is_out_of_memory

    with pytest.raises(RuntimeError, match="shape mismatch"), explain_out_of_memory("m", "h"):
        raise RuntimeError("shape mismatch")
    with pytest.raises(ResourceError), explain_out_of_memory("m", "h"):
        raise MemoryError
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(ValueError("out of memory"))
