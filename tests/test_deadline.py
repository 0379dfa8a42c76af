"""A run has a deadline: a stage that never returns ends the run in words, the next run gets fresh
threads and clean models, and a device that stops answering stops the app taking runs."""

import dataclasses
import threading

import numpy as np

from foresight.health import DeviceHealth
from foresight.pipeline import BROKEN_MESSAGE, ForesightPipeline

from conftest import frames_of, run_events, with_settings

SAFETY_S = 120  # the injected stage gives up after this, so a broken deadline fails the test instead of hanging it


def hooks(module):
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def test_a_stage_that_never_returns_ends_at_the_deadline_and_the_next_run_makes_its_video(models, photo, tmp_path):
    pipe = ForesightPipeline(with_settings(models, run_timeout_s=4, stop_grace_s=0.5, video_graphs=True))
    transformer, layer = models.video_pipeline.transformer, models.vlm.model.language_model.layers[-3]
    before = hooks(transformer), hooks(layer)
    release, stuck = threading.Event(), threading.Event()

    def never_returns(module, args):  # a denoising step that hangs (a driver hang, a deadlock)
        if not stuck.is_set():
            stuck.set()
            release.wait(SAFETY_S)

    injected = transformer.register_forward_pre_hook(never_returns)
    try:
        events = run_events(pipe, photo, mode="fused", seed=3, out_dir=tmp_path)
        injected.remove()
        assert stuck.is_set()
        errors = [ev for ev in events if ev["type"] == "error"]
        assert len(errors) == 1 and errors[0]["stage"] == "run" and "longer than its 4 s limit" in errors[0]["message"]
        assert errors[0]["t"] >= 4 and events[-1]["type"] == "thinking_complete" and not events[-1]["video_url"]
        assert pipe.abandoned == 1, "the stuck thread is left behind and counted"
        assert (hooks(transformer), hooks(layer)) == before, "nothing of the stuck run stays on the shared models"
        assert "forward" not in transformer.__dict__
        again = run_events(pipe, photo, mode="fused", seed=3, out_dir=tmp_path)
        assert again[-1]["video_url"] and not [ev for ev in again if ev["type"] == "error"], \
            "the next run is served on fresh threads though the stuck one never returned"
        assert pipe.health.broken is None, "one hung stage is not a hung device: the probe answered"
    finally:
        injected.remove()
        release.set()


def test_a_run_that_stops_in_time_abandons_nothing(models, photo, tmp_path):
    pipe = ForesightPipeline(with_settings(models, run_timeout_s=120, stop_grace_s=0.5))
    events = run_events(pipe, photo, out_dir=tmp_path)
    assert events[-1]["video_url"] and pipe.abandoned == 0


def test_a_second_stuck_run_soon_after_the_first_means_the_device_is_gone(models, photo, tmp_path):
    told, now = [], [1000.0]
    health = DeviceHealth("cpu", on_broken=told.append, window_s=600, clock=lambda: now[0])
    health.after_stuck("passed its 90 s deadline")
    assert health.broken is None, "a first stuck run with a probe that answers: a stage hung"
    now[0] += 599
    health.after_stuck("did not stop within 10 s of Stop")
    assert health.broken == told[0] == ("two runs' workers did not stop within 10 minutes "
                                        "(the last did not stop within 10 s of Stop)")
    pipe = ForesightPipeline(models)
    pipe.runtime.health = health
    events = run_events(pipe, photo, out_dir=tmp_path)
    assert [ev["type"] for ev in events] == ["error"] and events[0]["message"] == BROKEN_MESSAGE
    assert list(tmp_path.iterdir()) == [], "no run starts"


def test_past_a_few_abandoned_runs_the_process_asks_for_a_restart():
    told, now = [], [0.0]
    health = DeviceHealth("cpu", on_broken=told.append, window_s=600, clock=lambda: now[0], max_abandoned=3)
    for _ in range(2):
        now[0] += 3600  # far apart: each alone looks like one hung stage
        health.after_stuck("did not stop within 10 s of Stop")
        assert health.broken is None
    now[0] += 3600
    health.after_stuck("passed its 60 s deadline")
    assert told == ["3 runs' threads are stuck in this process (the last passed its 60 s deadline)"]


def test_a_worker_that_does_not_stop_after_stop_is_abandoned_and_judged_as_a_deadline_is(models, photo, tmp_path):
    """Stop pressed while a denoising step hangs: the run ends in words, its threads are left behind
    and counted, the health check probes the device, and the next run is served."""
    pipe = ForesightPipeline(with_settings(models, run_timeout_s=120, stop_grace_s=0.5))
    probes = []
    pipe.health.probe = lambda: probes.append("probe")
    release, stuck, stop = threading.Event(), threading.Event(), threading.Event()

    def never_returns(module, args):
        if not stuck.is_set():
            stuck.set()
            stop.set()  # Stop, pressed while this step hangs
            release.wait(SAFETY_S)

    injected = models.video_pipeline.transformer.register_forward_pre_hook(never_returns)
    try:
        events = run_events(pipe, photo, mode="fused", seed=3, out_dir=tmp_path, stop=stop)
        injected.remove()
        assert events[-1]["type"] == "thinking_complete" and events[-1]["stopped"] and not events[-1]["video_url"]
        assert pipe.abandoned == 1 and probes == ["probe"] and pipe.health.stuck and pipe.health.broken is None
        again = run_events(pipe, photo, mode="fused", seed=3, out_dir=tmp_path)
        assert again[-1]["video_url"], "the next run is served on fresh threads"
    finally:
        injected.remove()
        release.set()


def test_a_woken_worker_of_an_abandoned_run_cannot_touch_the_run_after_it(models, photo, tmp_path):
    """Mid-run, another thread does what an abandoned renderer does when it wakes up: a transformer
    forward and a scheduler step on the shared models. Both are refused, and the run's video is
    the same as without it."""
    from foresight.scheduler import ForeignStep
    from foresight.video import Stopped

    pipe = ForesightPipeline(models)
    reference = frames_of(run_events(pipe, photo, seed=4, out_dir=tmp_path, frame_events=True))
    transformer, scheduler = models.video_pipeline.transformer, models.video_pipeline.scheduler
    refused = []

    def intrude(module, args, kwargs):
        if refused:
            return
        inputs = dict(kwargs)

        def woken_worker():
            for attempt in (lambda: transformer(**inputs),
                            lambda: scheduler.step(inputs["hidden_states"], scheduler.timesteps[0],
                                                   inputs["hidden_states"])):
                try:
                    attempt()
                    refused.append("allowed")
                except (Stopped, ForeignStep) as exc:
                    refused.append(type(exc).__name__)

        intruder = threading.Thread(target=woken_worker)
        refused.append("started")
        intruder.start()
        intruder.join()

    hook = transformer.register_forward_pre_hook(intrude, with_kwargs=True)
    try:
        frames = frames_of(run_events(pipe, photo, seed=4, out_dir=tmp_path, frame_events=True))
    finally:
        hook.remove()
    assert refused == ["started", "Stopped", "ForeignStep"]
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference, strict=True))


def test_the_numbers_a_gpu_run_depends_on_leave_it_room_and_fit_zero_gpus_lease(models, monkeypatch):
    """Nothing injected: the deadline, the grace and the probe as a GPU (and a ZeroGPU Space) runs
    with them. A default run takes about 10 s on an H100 and 2-3x that on an A100
    (docs/DESIGN.md): its deadline is 9x the one and 3x the other; `high` has 4x the tokens."""
    from foresight.config import (CUDA_RUN_TIMEOUT_S, PRESETS, PROBE_TIMEOUT_S, ZERO_GPU_DURATION_S, Settings,
                                  run_timeout)

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    gpu = Settings(device="cuda")
    deadlines = {name: run_timeout(gpu, preset) for name, preset in PRESETS.items()}
    assert deadlines == CUDA_RUN_TIMEOUT_S == {"fast": 60.0, "default": 90.0, "high": 180.0}
    h100_default_s, a100_slower = 10, 3
    assert deadlines["default"] >= 9 * h100_default_s and deadlines["default"] >= 3 * a100_slower * h100_default_s
    assert deadlines["high"] >= 2 * deadlines["default"]
    assert gpu.stop_grace_s == 10 and PROBE_TIMEOUT_S == 10
    assert ForesightPipeline(models).health.probe_timeout_s == PROBE_TIMEOUT_S, "the pipeline's probe waits that long"

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # past its lease ZeroGPU aborts the call with a bare error
    cap = run_timeout(dataclasses.replace(gpu, run_timeout_s=3600), PRESETS["high"])  # what an owner sets is capped
    assert cap == 95 and cap + gpu.stop_grace_s + PROBE_TIMEOUT_S + 5 == ZERO_GPU_DURATION_S == 120
    assert {name: run_timeout(gpu, preset) for name, preset in PRESETS.items()} == {"fast": 60, "default": 90,
                                                                                    "high": 95}
