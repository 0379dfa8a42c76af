"""The denoising step without the host in the way: no device syncs in a step or a preview, and the
static-buffer graphs (`video_graphs`) making exactly the frames the eager path makes.

On a CPU the graphs run eagerly on their static buffers, so these tests check the plumbing (keys,
buffers, the transformer's forward swapped and restored, previews through their graph); on a GPU
the same code captures and replays CUDA graphs, which `scripts/device_bench.sh` times.
"""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight import video as video_stage
from foresight.syncs import count_denoising
from foresight.config import PRESETS, VideoSampling
from foresight.graphs import StaticGraphs, graphed_forward
from foresight.inputs import video_view
from foresight.pipeline import ForesightPipeline

from conftest import frames_of, run_events, stop_at_first_preview, with_settings


def previews_of(events):
    return [ev for ev in events if ev["type"] == "video_frame" and ev["kind"] == "preview"]


@pytest.fixture(scope="module")
def graphed(models):
    """A pipeline with the video graphs on, kept across this module's tests (its shapes accumulate)."""
    return ForesightPipeline(with_settings(models, video_graphs=True))


# --- syncs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_no_step_and_no_preview_reads_a_value_back_or_copies_one_in(models, photo, graphs):
    """On a GPU a host read is a sync and a tensor made from Python data a blocking copy; neither can
    be captured in a CUDA graph. Counted on the CPU: none in the transformer's forward, in the rest
    of each step (diffusers' scheduler used to look its first index up: a nonzero and an item), or
    in a preview decode (which used to index with a list and make its timestep from a literal)."""
    condition = video_view(photo, PRESETS["fast"])
    embeds, mask = video_stage.text_conditioning(models, "a square slides")
    video_graphs = video_stage.VideoGraphs(models.video_pipeline, cuda=False) if graphs else None
    counter = count_denoising(models.video_pipeline, lambda: video_stage.render(
        with_settings(models, preview_every=1), [condition], 17, 16, 0, embeds, mask, threading.Event(),
        graphs=video_graphs))
    assert counter.ops["transformer forward"] > 100 and counter.ops["preview decode"] > 100, counter.ops
    for part in ("transformer forward", "step", "preview decode"):
        assert counter.reads[part] == 0 and counter.copies[part] == 0, (part, counter.where)
    assert counter.ops["step"] < 80 * VideoSampling().num_steps, "the loop's own work stays small"


# --- the graphs make what the eager path makes ------------------------------------------------------------


def test_graphed_runs_make_the_same_frames_and_previews_for_several_shapes_in_a_row(models, pipe, photo, tmp_path):
    """Different shapes one after another (each its own buffers), both modes, and a shape seen
    before (its buffers reused): frames and previews identical, previews at the cadence's steps."""
    runs = [(photo, "fast", "fused"), (photo.resize((200, 300)), "fast", "text"), (photo.resize((600, 150)), "fast",
                                                                                     "fused"), (photo, "fast", "fused")]
    graphed = ForesightPipeline(with_settings(models, video_graphs=True))
    for image, preset, mode in runs:
        eager = run_events(pipe, image, preset=preset, mode=mode, seed=5, out_dir=tmp_path, frame_events=True)
        events = run_events(graphed, image, preset=preset, mode=mode, seed=5, out_dir=tmp_path, frame_events=True)
        assert events[-1]["video_url"] and events[0]["width"] == eager[0]["width"]
        assert all(np.array_equal(a, b) for a, b in zip(frames_of(events), frames_of(eager), strict=True))
        assert [Path(ev["path"]).read_bytes() for ev in previews_of(events)] == \
            [Path(ev["path"]).read_bytes() for ev in previews_of(eager)]
        assert [ev["step"] for ev in previews_of(events)] == video_stage.preview_steps(VideoSampling().num_steps, 2)
    assert graphed._video_graphs.transformer.captured == 3  # three shapes; the first seen again is reused


def test_a_graphed_run_stopped_midway_ends_and_the_next_run_renders(graphed, photo, tmp_path):
    events = stop_at_first_preview(graphed, photo, out_dir=tmp_path)
    assert events[-1]["stopped"] and not events[-1]["video_url"]
    assert run_events(graphed, photo, seed=1, out_dir=tmp_path)[-1]["video_url"]


def test_out_of_memory_steps_down_with_the_graphs_as_without(models, graphed, photo, tmp_path):
    from test_pipeline import inject_out_of_memory

    handle = inject_out_of_memory(models, times=1)  # high fails (inside the graphed forward), default renders
    try:
        events = run_events(graphed, photo, preset="high", seed=1, out_dir=tmp_path)
    finally:
        handle.remove()
    assert [ev.get("retry_preset") for ev in events if ev["type"] == "error"] == ["default"]
    assert events[-1]["video_url"] and events[-1]["preset"] == "default"


def test_guidance_above_one_runs_through_the_graphs_as_without(models, photo, tmp_path):
    guided = with_settings(models, sampling=VideoSampling(guidance_scale=3.0))
    eager = run_events(ForesightPipeline(guided), photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True)
    pipe = ForesightPipeline(with_settings(guided, video_graphs=True))
    events = run_events(pipe, photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True)
    assert all(np.array_equal(a, b) for a, b in zip(frames_of(events), frames_of(eager), strict=True))
    key = next(iter(pipe._video_graphs.transformer._shapes))
    assert dict((name, size) for name, size, *rest in key)["hidden_states"][0] == 2, "a batch of two"


def test_the_warm_up_captures_what_a_run_then_replays(models, photo, tmp_path):
    """The warm-up's shapes come from the run's own pipeline call: a run at a warmed size and mode
    prepares no new buffers."""
    pipe = ForesightPipeline(with_settings(models, video_graphs=True))
    view = video_view(photo, PRESETS["fast"])
    graphs = pipe._video_graphs
    video_stage.capture_graphs(pipe.models, graphs, [(view.width, view.height, PRESETS["fast"].num_frames)],
                               video_stage.warm_conditionings(pipe.models))
    assert (graphs.transformer.captured, graphs.preview.captured) == (2, 1)  # bridge and T5 prompts; one preview
    for mode in ("fused", "text"):
        assert run_events(pipe, photo, mode=mode, seed=1, out_dir=tmp_path)[-1]["video_url"]
    assert (graphs.transformer.captured, graphs.preview.captured) == (2, 1)


def test_the_warm_up_captures_each_pass_and_a_two_pass_run_replays_them_as_it_renders_without(models, photo,
                                                                                               tmp_path):
    pipe = ForesightPipeline(with_settings(models, video_graphs=True))
    view = video_view(photo, PRESETS["fast"])
    sizes = [(*size, PRESETS["fast"].num_frames) for size in pipe._pass_sizes(view.size)]
    graphs = pipe._video_graphs
    video_stage.capture_graphs(pipe.models, graphs, sizes, video_stage.warm_conditionings(pipe.models))
    captured = (graphs.transformer.captured, graphs.preview.captured)
    assert len(sizes) == 3 and captured == (6, 3), "one pass's size and each of two passes'"
    graphed = run_events(pipe, photo, mode="fused", seed=1, out_dir=tmp_path, passes=2, frame_events=True)
    assert (graphs.transformer.captured, graphs.preview.captured) == captured, "nothing new to prepare"
    eager = run_events(ForesightPipeline(models), photo, mode="fused", seed=1, out_dir=tmp_path, passes=2,
                       frame_events=True)
    assert all(np.array_equal(a, b) for a, b in zip(frames_of(graphed), frames_of(eager), strict=True))


# --- the mechanism ----------------------------------------------------------------------------------------


def test_static_graphs_keep_a_bounded_number_of_shapes_and_compute_on_their_buffers():
    calls = []

    def double(x, scale):
        calls.append(x.data_ptr())
        return x * scale

    graphs = StaticGraphs(double, cuda=False, max_shapes=2)
    first = torch.ones(3)
    assert torch.equal(graphs(x=first, scale=2), torch.full((3,), 2.0))
    assert torch.equal(graphs(x=torch.full((3,), 5.0), scale=2), torch.full((3,), 10.0))
    assert calls[0] == calls[1] != first.data_ptr(), "the same static buffer, not the caller's tensor"
    graphs(x=torch.ones(4), scale=2)
    graphs(x=torch.ones(3), scale=3)  # another constant is another shape
    assert graphs.captured == 3 and len(graphs._shapes) == 2


def test_the_graphed_forward_is_the_modules_own_again_afterwards(models):
    transformer = models.video_pipeline.transformer
    graphs = StaticGraphs(lambda **inputs: None, cuda=False, max_shapes=1)
    with pytest.raises(RuntimeError):
        with graphed_forward(transformer, graphs):
            assert "forward" in vars(transformer)
            raise RuntimeError("a failed step")
    assert "forward" not in vars(transformer)
