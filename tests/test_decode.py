"""The text decode variants and GPU sharing: the same text whichever runs, and a safe fall-back."""

import numpy as np
import pytest
import torch
from transformers import CompileConfig

from foresight.pipeline import ForesightPipeline
from foresight.profiles import make_settings
from foresight.scheduling import worker_streams

from conftest import frames_of, run_events, with_settings


def test_compiled_static_decode_compiles_once_and_writes_the_same_text(models, photo, tmp_path):
    """On CUDA transformers compiles the static-cache decode step; here the same compile runs on the CPU."""
    import torch._dynamo.utils

    dynamic = ForesightPipeline(models)
    compiled = ForesightPipeline(with_settings(models, decode="static"))
    config = CompileConfig()
    config._compile_all_devices = True  # transformers' switch for compiling off-GPU, meant for tests
    models.vlm.generation_config.compile_config = config
    graphs = torch._dynamo.utils.counters["stats"]
    try:
        for number, question in enumerate(["", "What will happen to the red square in a moment?"]):
            text = run_events(compiled, photo, prompt=question, seed=1, out_dir=tmp_path, video=False)[-1]["text"]
            if number == 0:
                compiled_graphs = graphs["unique_graphs"]
                assert compiled_graphs >= 1, "the decode step was compiled"
            assert text and text == run_events(dynamic, photo, prompt=question, seed=1, out_dir=tmp_path,
                                               video=False)[-1]["text"]
        assert graphs["unique_graphs"] == compiled_graphs, "a longer prompt reuses the compiled step"
    finally:
        models.vlm.generation_config.compile_config = None


def test_warm_up_falls_back_to_the_dynamic_decode_when_static_fails(models, photo):
    pipe = ForesightPipeline(with_settings(models, decode="static"))
    broken = CompileConfig(backend="no-such-compiler")  # as if the machine's compiler could not build the step
    broken._compile_all_devices = True
    models.vlm.generation_config.compile_config = broken
    said = []
    try:
        pipe.warm_up(photo, log=said.append)
    finally:
        models.vlm.generation_config.compile_config = None
    assert pipe.models.settings.decode == "dynamic"
    assert len(said) == 1 and "using the dynamic decode" in said[0] and "no-such-compiler" in said[0]
    models.vlm.generation_config.compile_config = broken  # still broken: the dynamic decode never compiles
    try:
        events = run_events(pipe, photo, seed=1)
    finally:
        models.vlm.generation_config.compile_config = None
    assert "error" not in [ev["type"] for ev in events] and events[-1]["text"]


def test_warm_up_keeps_a_working_static_decode(models, photo):
    pipe = ForesightPipeline(with_settings(models, decode="static"))
    said = []
    pipe.warm_up(photo, log=said.append)
    assert pipe.models.settings.decode == "static" and said == []


def test_streams_exist_only_on_cuda():
    assert worker_streams("streams", "cpu") == (None, None)
    assert worker_streams("shared", "cuda") == (None, None)
    if torch.cuda.is_available():
        text, video = worker_streams("streams", "cuda")
        assert text.priority < video.priority  # lower is more urgent
    with pytest.raises(ValueError, match="use one of shared, streams"):
        worker_streams("round-robin", "cpu")


def test_how_the_gpu_is_shared_is_the_devices_and_benchs_not_the_environments(monkeypatch):
    """The variants are `bench` options and Settings fields (docs/BENCHMARKS.md), not an operator's
    settings: the environment no longer changes them."""
    from foresight.config import CUDA_TEXT_PACE

    for name, value in (("FORESIGHT_DECODE", "static"), ("FORESIGHT_SCHEDULE", "later"), ("FORESIGHT_TEXT_PACE", "9"),
                        ("FORESIGHT_VIDEO_GRAPHS", "1")):
        monkeypatch.setenv(name, value)
    settings = make_settings("full")
    on_cuda = torch.cuda.is_available()
    assert settings.decode == ("static" if on_cuda else "dynamic") and settings.schedule == \
        ("streams" if on_cuda else "shared")
    assert settings.text_pace == (CUDA_TEXT_PACE if on_cuda else 0) and settings.preview_every == 2
    assert not settings.video_graphs and not settings.compile_video and not settings.vision_early
    with pytest.raises(ValueError, match="schedule 'later': use one of shared, streams"):
        make_settings("full", schedule="later")


def test_zero_gpu_keeps_the_uncompiled_decode(monkeypatch):
    from foresight.config import default_decode

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert (default_decode(on_cuda=True), default_decode(on_cuda=False)) == ("static", "dynamic")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # each call runs in a fresh fork: a compile would not last
    assert default_decode(on_cuda=True) == "dynamic"


def test_both_schedules_render_the_same_run(models, photo, tmp_path):
    """On a GPU this checks the hand-over between the workers' streams; on a CPU both schedules are one."""
    from foresight.config import SCHEDULES

    runs = {}
    for schedule in SCHEDULES:
        events = run_events(ForesightPipeline(with_settings(models, schedule=schedule)), photo, mode="fused", seed=3,
                            out_dir=tmp_path, frame_events=True)
        runs[schedule] = events[-1]["text"], frames_of(events)[-1]
    (text_a, frame_a), (text_b, frame_b) = runs.values()
    assert text_a == text_b
    assert np.abs(frame_a - frame_b).mean() < 1.0


def test_every_run_of_a_pipeline_decodes_into_the_same_static_cache(models, photo, tmp_path):
    """CUDA graphs of the compiled step are recorded against the KV tensors' addresses: keep them."""
    pipe = ForesightPipeline(with_settings(models, decode="static"))
    seen = []

    def note_cache(module, args, kwargs):
        cache = kwargs.get("cache")
        if cache is not None and cache.layers[0].is_initialized:
            seen.append((type(cache).__name__, cache.layers[0].keys.data_ptr()))

    hook = models.vlm.model.language_model.layers[0].register_forward_pre_hook(note_cache, with_kwargs=True)
    try:
        texts = [run_events(pipe, photo, prompt=question, seed=1, out_dir=tmp_path, video=False)[-1]["text"]
                 for question in ("", "", "And then?")]
    finally:
        hook.remove()
    assert len(set(seen)) == 1 and seen[0][0] == "StaticCache"
    assert texts[0] == texts[1] != ""  # zeroed between runs: the same prompt gives the same text
