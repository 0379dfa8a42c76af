"""The page on ZeroGPU: each run crosses into a process that `spaces.GPU` forks once and reuses, with
only what pickles, and Stop crosses too. Through the page's own handlers and the real wrapper
(`tests/zero_gpu.py`), around the real pipeline in the tiny profile."""

import multiprocessing
import os
import pickle
from pathlib import Path

import imageio.v3 as iio

from foresight.config import ZERO_GPU_DURATION_S
from foresight.runtime import StopFlag

from test_app import EXAMPLE, FAST_FRAMES
from test_story_page import Visitor, handlers, last
from zero_gpu import zero_gpu  # noqa: F401 - the fixture

FORK = multiprocessing.get_context("fork")


def test_a_stop_flag_crosses_a_pickle_and_a_fork():
    flag = StopFlag()
    copy = pickle.loads(pickle.dumps(flag))
    assert not copy.is_set()
    child = FORK.Process(target=flag.set)
    child.start()
    child.join(30)
    assert copy.is_set() and flag.is_set(), "set in another process, seen in this one"
    flag.discard()


def test_runs_cross_into_the_forked_worker_stop_ends_one_within_a_step_and_the_next_makes_its_video(
        models, pipe, zero_gpu):
    """The first run makes its mp4 in the worker; the second is stopped as its first preview arrives,
    while its next step is held (a gate on the real transformer, set up before the fork), and
    ends after that one step with no video; the third, in the same worker, makes its mp4."""
    gate, held, forwards, worker = FORK.Event(), FORK.Value("i", 0), FORK.Value("i", 0), FORK.Value("i", 0)

    def hold_the_second_step(module, args):  # runs in the worker: it counts, and waits while held
        worker.value = os.getpid()
        if held.value:
            forwards.value += 1
            if forwards.value == 2:
                gate.wait(60)

    hook = models.video_pipeline.transformer.register_forward_pre_hook(hold_the_second_step)
    page = handlers(pipe)  # on ZeroGPU: its run goes through spaces.GPU
    ui = page.ui
    try:
        shown = last(page.generate(EXAMPLE, "", "fast", False, "auto", 0, True, StopFlag(), Visitor()))
        first = shown[ui.record]
        assert first.video and iio.imread(first.video, plugin="FFMPEG").shape[0] == FAST_FRAMES, shown[ui.status]
        assert worker.value not in (0, os.getpid()), "the run happened in the forked worker"
        first_worker = worker.value

        held.value, stop = 1, StopFlag()
        for shown in page.generate(EXAMPLE, "", "fast", False, "auto", 0, True, stop, Visitor()):
            if shown[ui.preview] and not stop.is_set():
                page.on_stop(stop)  # the Stop button, in this process
                gate.set()
        stopped = shown[ui.record]
        assert stopped.stopped and not stopped.video and shown[ui.status] == "Stopped."
        assert forwards.value == 2, "the step under way when Stop came was the last"
        assert not Path(stopped.folder).exists(), "a run stopped before its video leaves no files"

        held.value = 0
        third = last(page.generate(EXAMPLE, "", "fast", False, "auto", 0, True, StopFlag(), Visitor()))[ui.record]
        assert third.video and worker.value == first_worker, "the next run, in the same worker, makes its video"
        assert zero_gpu and all(lease.total_seconds() == ZERO_GPU_DURATION_S for lease in zero_gpu), \
            "each run asks for the lease its deadline is fitted into"
    finally:
        hook.remove()
        gate.set()


def test_a_page_closed_mid_run_stops_the_forked_call_at_its_next_step(models, pipe, zero_gpu):
    """A video-only retry yields nothing but previews, so `spaces` alone would tell its worker of a
    closed page only at the next preview: the page's Stop, set as it closes, ends it at the step
    under way. (The gate opens once the Stop is set, or after a while without it.)"""
    import threading

    gate, held, failing, forwards = FORK.Event(), FORK.Value("i", 0), FORK.Value("i", 1), FORK.Value("i", 0)

    def fail_then_hold(module, args):  # runs in the worker
        if failing.value:
            raise RuntimeError("injected failure")
        if held.value:
            forwards.value += 1
            if forwards.value == 2:
                gate.wait(60)

    hook = models.video_pipeline.transformer.register_forward_pre_hook(fail_then_hold)
    page = handlers(pipe)
    try:
        failed = last(page.generate(EXAMPLE, "", "fast", False, "auto", 0, True, StopFlag(), Visitor()))[page.ui.record]
        assert failed.video_error and not failed.video
        failing.value, held.value, stop = 0, 1, StopFlag()

        def open_once_stopped():
            for _ in range(200):  # bounded: under a broken Stop the gate opens anyway
                if stop.is_set():
                    break
                threading.Event().wait(0.05)
            gate.set()

        retry = page.retry_video(failed, stop, Visitor())
        for shown in retry:
            if shown[page.ui.preview]:
                threading.Thread(target=open_once_stopped, daemon=True).start()
                retry.close()  # the page is gone: Gradio closes its handler
                break
        assert forwards.value == 2, "the step under way when the page closed was the last"
    finally:
        hook.remove()
        gate.set()
