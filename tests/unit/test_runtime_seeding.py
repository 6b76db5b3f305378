"""Seeding and RNG states that survive a weights_only checkpoint round trip."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from cxr_tools.errors import ModelError
from cxr_tools.runtime.seeding import (
    derive_seed,
    generator_state,
    make_generator,
    numpy_generator,
    numpy_generator_state,
    rng_state,
    seed_everything,
    set_generator_state,
    set_numpy_generator_state,
    set_rng_state,
)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _draws():
    return random.random(), random.gauss(0, 1), float(np.random.normal()), torch.rand(3).tolist()


def test_seed_everything_makes_all_global_rngs_repeat():
    seed_everything(11)
    first = _draws()
    seed_everything(11)
    assert _draws() == first
    seed_everything(12)
    assert _draws() != first


def test_rng_state_survives_weights_only_checkpoint_and_restores_every_stream():
    seed_everything(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.normal()  # and in NumPy's
    state = _roundtrip(rng_state())
    expected = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == expected


def test_corrupt_rng_state_is_a_model_error():
    state = rng_state()
    del state["numpy"]
    with pytest.raises(ModelError, match="RNG state"):
        set_rng_state(state)


def test_generators_depend_only_on_seed_and_keys():
    a = torch.randperm(20, generator=make_generator(3, 1))
    assert torch.equal(a, torch.randperm(20, generator=make_generator(3, 1)))
    assert not torch.equal(a, torch.randperm(20, generator=make_generator(3, 2)))
    assert derive_seed(3, 1) == derive_seed(3, 1) != derive_seed(3, 2)
    assert 0 <= derive_seed(2**40, 7) < 2**63
    assert numpy_generator(3, 1).integers(0, 10**9) == numpy_generator(3, 1).integers(0, 10**9)


def test_generator_states_round_trip_through_weights_only():
    gen = make_generator(4)
    saved = _roundtrip(generator_state(gen))
    expected = torch.rand(4, generator=gen)
    set_generator_state(gen, saved)
    assert torch.equal(torch.rand(4, generator=gen), expected)

    npgen = numpy_generator(4, 2)
    np_saved = _roundtrip(numpy_generator_state(npgen))  # PCG64's 128-bit ints stored as strings
    np_expected = npgen.random(3)
    set_numpy_generator_state(npgen, np_saved)
    assert np.array_equal(npgen.random(3), np_expected)
