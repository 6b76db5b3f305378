"""Honest time: durations in the units people plan with, estimates that say what they rest on, a forward-call
clock that predicts a long step from its first inner steps, and the training loop's estimate, whole-run ETA,
dry-run measure and Ctrl-C message."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import signal

import pytest
import torch

from cxr_tools.cli.progress import PlainProgress
from cxr_tools.runtime.checkpointing import CheckpointPolicy
from cxr_tools.runtime.estimate import (
    Estimate,
    EstimateSettings,
    EstimatingProgress,
    ForwardClock,
    UnitTimer,
    format_duration,
    maml_step_units,
    quick_try,
)
from cxr_tools.runtime.progress import RecordingProgress
from cxr_tools.runtime.rundir import open_run
from cxr_tools.runtime.trainer import LoopOptions, LoopParts, TrainLoop


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (40, "40 s"),
        (245, "4 min 5 s"),
        (1500, "25 min"),
        (3 * 3600 + 12 * 60, "3 h 12 min"),
        (7200, "2 h"),
        (86400 + 600, "1 day"),
        (2 * 86400 + 5 * 3600, "2 days 5 h"),
        (16 * 86400 + 3 * 3600, "16 days"),
    ],
)
def test_durations_read_in_days_hours_and_minutes(seconds, text):
    assert format_duration(seconds) == text


def test_an_estimate_says_what_it_rests_on_and_offers_a_quicker_try_only_when_long():
    long = Estimate(16 * 86400, 2, "inner steps", "cpu", hint="cxr meta-train --backbone conv4")
    assert long.message() == (
        "estimated 16 days on cpu at this size (an estimate from 2 measured inner steps); "
        "for a quick try: cxr meta-train --backbone conv4"
    )
    short = Estimate(300, 1, "steps", "cuda:0", hint="cxr train --model conv4", remaining=True)
    assert short.message() == "remaining 5 min on cuda:0 at this size (an estimate from 1 measured step)"


def test_quick_try_names_the_smaller_cache_only_when_the_cache_is_larger():
    assert "cxr preprocess --size 64" in quick_try("train", "--model conv4", 256)
    assert "preprocess" not in quick_try("train", "--model conv4", 64)


def test_unit_timer_leaves_the_warm_up_out_once_three_units_are_measured():
    timer = UnitTimer(total=10, done=4)  # a resumed run: 4 units were done before
    timer.add(5.0)
    assert timer.per_unit() == 5.0
    timer.add(1.0)
    timer.add(1.0)
    assert timer.per_unit() == 1.0 and timer.done == 7


def test_second_order_meta_steps_cost_more_inner_steps_than_first_order():
    assert maml_step_units(5, 4, first_order=False) > maml_step_units(5, 4, first_order=True) > 4 * 5
    assert maml_step_units(5, 4, first_order=True) == 4 * maml_step_units(5, 1, first_order=True)


def test_forward_clock_predicts_from_one_inner_step_once_and_unhooks():
    model = torch.nn.Linear(2, 1)
    predictions = []
    clock = ForwardClock(model, units_per_step=10.0)
    clock.start(lambda seconds, n: predictions.append((seconds, n)))
    for _ in range(6):
        model(torch.zeros(1, 2))
    assert len(predictions) == 1 and predictions[0][1] == 1 and predictions[0][0] >= 0
    assert not model._forward_pre_hooks  # the hook is gone after the prediction


def test_estimating_progress_skips_read_back_units_and_reports_once():
    reported: list[Estimate] = []
    progress = EstimatingProgress(RecordingProgress(), "evaluate", "cpu", reported.append, skip=2)
    clock = iter([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    import cxr_tools.runtime.estimate as estimate

    real = estimate.time.monotonic
    estimate.time.monotonic = lambda: next(clock)  # type: ignore[assignment]
    try:
        with progress.task("evaluate", total=10) as task:
            for _ in range(7):
                task.advance()
    finally:
        estimate.time.monotonic = real  # type: ignore[assignment]
    assert len(reported) == 1
    first = reported[0]
    assert first.measured == 3 and first.unit == "episodes" and first.remaining  # 2 read back, 3 measured
    assert first.seconds == pytest.approx(5 * 1.0)  # 5 episodes left at 1 s each


@dataclasses.dataclass(frozen=True)
class _Cfg:
    name: str = "t"


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    return model, [(x[i : i + 3], y[i : i + 3]) for i in range(0, 12, 3)]


def test_the_loop_logs_one_estimate_and_progress_lines_carry_the_whole_run_eta(tmp_path, caplog, monkeypatch):
    model, batches = _model_and_data()
    seconds = iter(range(0, 10_000, 2))  # every clock read is 2 s later: each step "takes" time
    monkeypatch.setattr("cxr_tools.runtime.trainer.time.monotonic", lambda: float(next(seconds)))

    def step_fn(batch):
        return {"loss": torch.nn.functional.mse_loss(model(batch[0]), batch[1])}

    stream = io.StringIO()
    loop = TrainLoop(
        open_run(tmp_path / "run", "test", _Cfg()),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        LoopParts(step_fn, lambda epoch, start: batches[start:]),
        LoopOptions(max_epochs=3, checkpoint=CheckpointPolicy(every_minutes=None), estimate=EstimateSettings()),
        progress=PlainProgress(stream, interval=0),
    )
    with caplog.at_level(logging.INFO, logger="cxr_tools"):
        loop.fit()
    estimates = [r.getMessage() for r in caplog.records if "at this size" in r.getMessage()]
    assert len(estimates) == 1 and estimates[0].startswith("estimated ") and "measured steps" in estimates[0]
    assert "run ~" in stream.getvalue()  # the whole run's remaining time, next to the epoch's


def test_measure_times_steps_in_memory_and_a_probe_cuts_a_long_step_short(tmp_path):
    model, batches = _model_and_data()
    finished = []

    def step_fn(batch):
        for _ in range(5):  # five "inner steps"; the probe predicts from the second and stops the step
            loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        finished.append(1)
        return {"loss": loss}

    settings = EstimateSettings("meta-step", probe=ForwardClock(model, units_per_step=6.0))
    loop = TrainLoop(
        None,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        LoopParts(step_fn, lambda epoch, start: batches[start:]),
        LoopOptions(max_epochs=100, estimate=settings),
    )
    estimate = loop.measure()
    assert estimate is not None and estimate.unit == "inner steps" and estimate.measured == 1
    assert not finished  # the step was cut short as soon as its duration was predicted
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(TypeError, match="no run directory"):
        loop.fit()


def test_ctrl_c_says_at_once_when_it_takes_effect_and_a_second_one_stops_at_once(tmp_path, caplog):
    model, batches = _model_and_data()
    run = open_run(tmp_path / "run", "test", _Cfg())
    calls = {"n": 0}

    def step_fn(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: said at once, the step goes on
            assert any("Ctrl-C: stopping after the current step" in r.getMessage() for r in caplog.records)
            os.kill(os.getpid(), signal.SIGINT)  # second Ctrl-C: stops here, in the middle of the step
            calls["after"] = True
        return {"loss": torch.nn.functional.mse_loss(model(batch[0]), batch[1])}

    loop = TrainLoop(
        run,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        LoopParts(step_fn, lambda epoch, start: batches[start:]),
        LoopOptions(max_epochs=3, checkpoint=CheckpointPolicy(every_steps=1, every_minutes=None)),
    )
    with caplog.at_level(logging.INFO, logger="cxr_tools"), pytest.raises(KeyboardInterrupt):
        loop.fit()
    message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Ctrl-C"))
    assert "after the current step (" in message and "Press Ctrl-C again to stop at once" in message
    assert "resumes from step 2" in message  # the last checkpoint a rerun starts from
    assert "after" not in calls
    assert json.loads(run.run_json_path.read_text())["status"] == "interrupted"
