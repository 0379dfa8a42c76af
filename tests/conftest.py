"""Shared fixtures: the tiny profile's models, built once per test session in a private cache."""

import os
import tempfile

os.environ.setdefault("FORESIGHT_CACHE", os.path.join(tempfile.gettempdir(), "foresight-test-cache"))
# Each test process (pytest-xdist runs two) its own Gradio folder: a test that sweeps it, or
# a budget that empties it, touches no other process's files.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="foresight-test-gradio-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# One intra-op thread per test process: the suite runs two processes on two cores (pytest -n 2), each
# with a run's text and video on threads of their own and an app server beside them; more threads
# than cores spin against each other (four alternated runs of four files: 9% less time).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile's CPU kernels without SIMD: the same path (dynamo, inductor, C++ built by the
# compiler), built cold in about half the time (the two compile tests: 36 s -> 20 s on 2 cores,
# 2026-12-07). A GPU builds Triton kernels, never these.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")
os.environ.pop("FORESIGHT_WEIGHTS", None)

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def models():
    from foresight.profiles import load, make_settings

    return load(make_settings("tiny"), log=lambda message: None)


@pytest.fixture(scope="session")
def pipe(models):
    from foresight.pipeline import ForesightPipeline

    return ForesightPipeline(models)


@pytest.fixture
def photo():
    """A 320x240 RGB image with structure (a gradient and a square), not just noise."""
    x = np.linspace(0, 255, 320, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (240, 1)), np.tile(x[::-1], (240, 1)), np.full((240, 320), 90, np.uint8)], -1)
    rgb[60:140, 100:200] = (250, 30, 30)
    return Image.fromarray(rgb)


def run_events(pipe, image, **kwargs):
    kwargs.setdefault("preset", "fast")
    return list(pipe(image, **kwargs))


def stop_at_first_preview(pipe, image, **kwargs):
    """The events of a run whose Stop is pressed as its first video frame arrives."""
    import threading

    stop, events = threading.Event(), []
    for ev in pipe(image, preset="fast", seed=1, stop=stop, **kwargs):
        events.append(ev)
        if ev["type"] == "video_frame":
            stop.set()
    return events


def with_settings(models, **changes):
    """The same loaded models under other settings (a new pipeline reads them)."""
    return dataclasses.replace(models, settings=dataclasses.replace(models.settings, **changes))


def frames_of(events):
    """The final frames of a run asked for with `frame_events=True`, as int16 arrays."""
    from foresight.events import decode_frame

    return [np.asarray(decode_frame(ev), dtype=np.int16) for ev in events
            if ev["type"] == "video_frame" and ev["kind"] == "frame"]


def inject_out_of_memory(models, times: int):
    """The transformer's first `times` forwards raise CUDA's out-of-memory error (a hook; remove it)."""
    import torch

    calls = {"n": 0}

    def out_of_memory(module, args, output):
        calls["n"] += 1
        if calls["n"] <= times:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    return models.video_pipeline.transformer.register_forward_hook(out_of_memory)


def inject_video_failure(models, times: int = 1):
    """The transformer's first `times` forwards fail (a hook; remove it): the video stage fails, the text stays."""
    calls = {"n": 0}

    def fail(module, args, output):
        calls["n"] += 1
        if calls["n"] <= times:
            raise RuntimeError("injected failure")

    return models.video_pipeline.transformer.register_forward_hook(fail)
