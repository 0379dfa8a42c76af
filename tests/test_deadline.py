"""A run has a deadline: a stage that never returns ends the run in words, the next run gets fresh
threads and clean models, and a device that stops answering stops the app taking runs."""

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


def test_a_second_deadline_soon_after_the_first_means_the_device_is_gone(models, photo, tmp_path):
    told, now = [], [1000.0]
    health = DeviceHealth("cpu", on_broken=told.append, window_s=600, clock=lambda: now[0])
    health.after_deadline(90)
    assert health.broken is None, "a first deadline with a probe that answers: a stage hung"
    now[0] += 599
    health.after_deadline(90)
    assert health.broken == told[0] == "two runs passed their 90 s deadline within 10 minutes"
    pipe = ForesightPipeline(models)
    pipe.health = health
    events = run_events(pipe, photo, out_dir=tmp_path)
    assert [ev["type"] for ev in events] == ["error"] and events[0]["message"] == BROKEN_MESSAGE
    assert list(tmp_path.iterdir()) == [], "no run starts"


def test_a_probe_that_does_not_come_back_means_the_device_is_gone():
    never = threading.Event()
    told = []
    health = DeviceHealth("cpu", probe=lambda: never.wait(SAFETY_S), on_broken=told.append, probe_timeout_s=0.2)
    health.after_deadline(60)
    never.set()
    assert told == ["the GPU did not answer a one-kernel probe within 0.2 s"]
    failing = DeviceHealth("cpu", probe=lambda: 1 / 0)
    failing.after_deadline(60)
    assert failing.broken is not None, "a probe that fails is no answer either"
    answering = DeviceHealth("cpu")
    answering.after_deadline(60)
    assert answering.broken is None


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
