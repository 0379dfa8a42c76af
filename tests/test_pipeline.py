"""The pipeline's event stream, its video, both conditioning modes, seeds, stop and failures."""

import dataclasses
import json
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from foresight.config import PRESETS
from foresight.events import decode_frame
from foresight.pipeline import ForesightPipeline

from conftest import frames_of, inject_out_of_memory, run_events, stop_at_first_preview


def types(events):
    return [ev["type"] for ev in events]


@pytest.mark.parametrize("mode", ["fused", "text"])
def test_events_arrive_in_protocol_order(pipe, photo, tmp_path, mode):
    events = run_events(pipe, photo, mode=mode, seed=3, out_dir=tmp_path, frame_events=True)
    kinds = types(events)
    assert kinds[0] == "thinking_start" and kinds[-1] == "thinking_complete"
    assert "error" not in kinds
    start = events[0]
    assert start["mode"] == mode and start["preset"] == "fast" and start["num_steps"] == 7
    assert start["width"] % 32 == 0 and start["height"] % 32 == 0
    first_text = kinds.index("text_chunk")
    done = kinds.index("video_complete")
    previews = [i for i, ev in enumerate(events) if ev["type"] == "video_frame" and ev["kind"] == "preview"]
    assert first_text < done and previews and previews[0] < done
    steps = [events[i]["step"] for i in previews]
    assert steps == [0, 2, 4, 6], "a preview every second denoising step and at the last, in order"
    assert all(events[i]["num_steps"] == 7 and events[i]["frame_index"] == start["num_frames"] - 1 for i in previews)
    assert [ev["t"] for ev in events] == sorted(ev["t"] for ev in events)
    frames = [ev for ev in events if ev["type"] == "video_frame" and ev["kind"] == "frame"]
    assert [f["frame_index"] for f in frames] == list(range(PRESETS["fast"].num_frames))
    assert max(previews) < events.index(frames[0])
    assert decode_frame(frames[0]).size == (start["width"], start["height"])
    end = events[-1]
    assert end["text"] == "".join(ev["content"] for ev in events if ev["type"] == "text_chunk") != ""
    assert end["video_url"] == events[done]["video_url"]
    assert 0 < end["ttft"] and 0 < end["first_frame"] <= end["video_ready"] <= end["t"]
    assert (end["prediction"] is None) == (mode == "fused")
    json.dumps(events)  # every event is JSON-serialisable


def test_final_frames_are_sent_only_when_asked_for(pipe, photo, tmp_path):
    events = run_events(pipe, photo, seed=3, out_dir=tmp_path)
    assert [ev["kind"] for ev in events if ev["type"] == "video_frame"] == ["preview"] * 4
    assert "video_complete" in types(events)


def test_the_run_records_where_its_time_went(pipe, photo, tmp_path):
    end = run_events(pipe, photo, mode="fused", seed=3, out_dir=tmp_path)[-1]
    names = [span["name"] for span in end["spans"]]
    for name in ("load image", "VLM processor", "Qwen vision tower", "prefill", "condition image", "DINOv2", "bridge",
                 "encode image", "step 0", "step 6", "preview 0", "VAE decode", "mp4"):
        assert name in names, name
    assert all(span["track"] in ("text", "video", "host") and 0 <= span["start"] <= span["end"] <= end["t"]
               for span in end["spans"])
    by_name = {span["name"]: span for span in end["spans"]}
    assert by_name["Qwen vision tower"]["end"] <= by_name["prefill"]["start"] + 1e-3  # a GPU end, a CPU start
    assert by_name["prefill"]["end"] <= end["token_times"][0] + 1e-3 <= end["ttft"] + 1e-3
    assert by_name["step 0"]["end"] <= by_name["step 6"]["start"] <= by_name["VAE decode"]["start"]
    assert by_name["condition image"]["end"] <= by_name["encode image"]["end"]  # prepared before LTX encodes it
    assert by_name["mp4"]["end"] <= end["video_ready"]


def test_a_slow_consumer_gets_the_same_text_in_fewer_chunks(pipe, photo, tmp_path):
    events = []
    for ev in pipe(photo, preset="fast", seed=3, out_dir=tmp_path):
        events.append(ev)
        time.sleep(0.02)  # a busy web server between updates
    chunks = [ev["content"] for ev in events if ev["type"] == "text_chunk"]
    fast = [ev["content"] for ev in run_events(pipe, photo, seed=3, out_dir=tmp_path) if ev["type"] == "text_chunk"]
    assert "".join(chunks) == "".join(fast) == events[-1]["text"] != ""
    assert len(chunks) < len(fast), "waiting chunks arrive merged"
    assert [ev["t"] for ev in events] == sorted(ev["t"] for ev in events)
    assert types(events)[-1] == "thinking_complete" and "video_complete" in types(events)


def test_mp4_decodes_to_the_presets_frames_and_size(pipe, photo, tmp_path):
    events = run_events(pipe, photo, seed=1, out_dir=tmp_path)
    start, end = events[0], events[-1]
    frames = iio.imread(end["video_url"], plugin="FFMPEG")
    assert frames.shape == (start["num_frames"], start["height"], start["width"], 3)
    assert frames.std() > 1  # not a blank clip


@pytest.mark.parametrize("name", ["fast", "default", "high"])
def test_an_mp4_plays_at_its_presets_rate_for_its_presets_length(name, tmp_path):
    """What a viewer gets per preset: its frames, at its frame rate, so the clip lasts as long as it says."""
    from foresight.media import Mp4Writer

    preset = PRESETS[name]
    rgb = np.random.default_rng(0).integers(0, 255, (preset.num_frames, 64, 96, 3), dtype=np.uint8)
    path = Mp4Writer(tmp_path / f"{name}.mp4", 96, 64, preset.fps).write(rgb)
    meta = iio.immeta(path, plugin="FFMPEG")
    assert iio.imread(path, plugin="FFMPEG").shape[0] == preset.num_frames
    assert meta["fps"] == preset.fps and meta["duration"] == pytest.approx(preset.seconds, abs=0.05)


def test_the_pipeline_writes_the_mp4_at_the_presets_rate(pipe, photo, tmp_path, monkeypatch):
    """A preset at another rate, at `fast`'s small size: the run's mp4 says that rate."""
    from foresight.config import Preset

    monkeypatch.setitem(PRESETS, "fast", Preset("fast", 256, 256, 17, 30))
    events = run_events(pipe, photo, seed=1, out_dir=tmp_path)
    meta = iio.immeta(events[-1]["video_url"], plugin="FFMPEG")
    assert events[0]["fps"] == 30 and meta["fps"] == 30 and meta["duration"] == pytest.approx(17 / 30, abs=0.05)


def test_same_seed_same_video_other_seed_other_video(pipe, photo, tmp_path):
    def last_frame(seed):
        return frames_of(run_events(pipe, photo, mode="fused", seed=seed, out_dir=tmp_path, frame_events=True))[-1]

    a, b, c = last_frame(7), last_frame(7), last_frame(8)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1


def test_without_bridge_weights_text_mode_runs_and_says_so(models, photo, tmp_path):
    no_bridge = dataclasses.replace(models, bridge=None, bridge_note="no bridge weights in weights/")
    events = run_events(ForesightPipeline(no_bridge), photo, mode="fused", seed=1, out_dir=tmp_path)
    start = events[0]
    assert start["mode"] == "text" and "fused mode is unavailable" in start["note"]
    assert "video_complete" in types(events) and events[-1]["mode"] == "text"


def test_a_failing_video_stage_keeps_the_text(models, pipe, photo, tmp_path):
    def explode(module, args, output):
        raise RuntimeError("injected failure")

    handle = models.video_pipeline.transformer.register_forward_hook(explode)
    try:
        events = run_events(pipe, photo, seed=1, out_dir=tmp_path)
    finally:
        handle.remove()
    errors = [ev for ev in events if ev["type"] == "error"]
    assert len(errors) == 1 and errors[0]["stage"] == "video" and "injected failure" in errors[0]["message"]
    assert errors[0]["recoverable"] is True
    assert "video_complete" not in types(events)
    end = events[-1]
    assert end["type"] == "thinking_complete" and end["text"] and end["video_url"] is None
    assert list(tmp_path.iterdir()) == [], "no partial mp4"


def test_out_of_memory_steps_down_one_preset_at_a_time(models, pipe, photo, tmp_path):
    handle = inject_out_of_memory(models, times=2)  # high fails, then default fails, then fast renders
    try:
        events = run_events(pipe, photo, preset="high", seed=1, out_dir=tmp_path)
    finally:
        handle.remove()
    notices = [ev for ev in events if ev["type"] == "error"]
    assert [ev["retry_preset"] for ev in notices] == ["default", "fast"]
    assert "retrying at default" in notices[0]["message"] and all(ev["recoverable"] for ev in notices)
    done = [ev for ev in events if ev["type"] == "video_complete"]
    assert len(done) == 1 and done[0]["num_frames"] == PRESETS["fast"].num_frames and events[-1]["preset"] == "fast"
    clip = iio.imread(done[0]["video_url"], plugin="FFMPEG")
    assert clip.shape[0] == PRESETS["fast"].num_frames and clip.shape[1] < events[0]["height"]  # rendered at fast's size, not high's


def test_out_of_memory_at_the_smallest_preset_is_a_video_error(models, pipe, photo, tmp_path):
    handle = inject_out_of_memory(models, times=1)
    try:
        events = run_events(pipe, photo, preset="fast", seed=1, out_dir=tmp_path)
    finally:
        handle.remove()
    errors = [ev for ev in events if ev["type"] == "error"]
    assert len(errors) == 1 and "retry_preset" not in errors[0] and "even at the fast preset" in errors[0]["message"]
    assert "video_complete" not in types(events) and events[-1]["text"]


def test_stop_ends_the_run_without_a_video(pipe, photo, tmp_path):
    events = stop_at_first_preview(pipe, photo, out_dir=tmp_path)
    assert events[-1]["type"] == "thinking_complete" and events[-1]["stopped"] is True
    assert "video_complete" not in types(events)
    previews = [ev for ev in events if ev["type"] == "video_frame"]
    assert len(previews) < 4  # stopped at the next denoising step, not after all of them
    assert list(tmp_path.glob("*.mp4")) == [], "the mp4 begun beside the video is not left behind"
    assert {path.name for path in tmp_path.iterdir()} == {Path(ev["path"]).name for ev in previews}, \
        "nothing but the previews that were shown"


def test_closing_the_stream_early_stops_the_workers(models, pipe, photo, tmp_path):
    calls = {"vlm": 0, "ltx": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
        return hook

    hooks = [models.vlm.register_forward_hook(count("vlm")),
             models.video_pipeline.transformer.register_forward_hook(count("ltx"))]
    try:
        stream = pipe(photo, preset="fast", seed=1, out_dir=tmp_path)
        assert next(stream)["type"] == "thinking_start"
        next(stream)
        stream.close()  # what Gradio does on Stop: returns once both workers have stopped
        seen = dict(calls)
        time.sleep(0.3)
        assert calls == seen, "no model runs after the stream is closed"
        assert calls["vlm"] < models.settings.max_new_tokens
    finally:
        for hook in hooks:
            hook.remove()


def test_a_run_stopped_before_its_turn_runs_no_model(models, pipe, photo, tmp_path):
    calls = []
    hooks = [module.register_forward_hook(lambda *args: calls.append(1))
             for module in (models.vlm, models.vision, models.video_pipeline.transformer, models.video_pipeline.vae)]
    stop = threading.Event()
    stop.set()  # as when Stop is pressed while the run waits behind another
    try:
        events = run_events(pipe, photo, seed=1, out_dir=tmp_path, stop=stop)
    finally:
        for hook in hooks:
            hook.remove()
    assert types(events) == ["thinking_start", "thinking_complete"] and events[-1]["stopped"] is True
    assert calls == []


def test_runs_share_long_lived_workers(pipe, photo, tmp_path):
    """Compiled decode steps record CUDA graphs per thread: every run must use the same threads."""
    names = set()
    for seed in range(3):
        run_events(pipe, photo, seed=seed, out_dir=tmp_path)
        names.add(frozenset(t.ident for t in threading.enumerate() if t.name.startswith("foresight-")))
    assert len(names) == 1 and len(next(iter(names))) == 3  # thinker, renderer, preview copier


def test_queued_runs_each_condition_their_video_on_their_own_image(pipe, photo, tmp_path):
    """Runs queued behind a busy thinker each get their own prefill states, not the first one's."""
    other = photo.transpose(0).rotate(90, expand=True)  # another picture, another prefill

    alone = frames_of(run_events(pipe, other, mode="fused", seed=5, out_dir=tmp_path, frame_events=True))[-1]
    thinker = pipe.runtime.workers()["thinker"]
    gate = threading.Event()
    thinker.submit(gate.wait)  # the thinker is busy: both runs below queue behind it
    results = {}

    def consume(name, image):
        results[name] = run_events(pipe, image, mode="fused", seed=5, out_dir=tmp_path, frame_events=True)

    threads = [threading.Thread(target=consume, args=("first", photo)),
               threading.Thread(target=consume, args=("second", other))]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # each run has submitted its work
    gate.set()
    for thread in threads:
        thread.join(60)
    assert all(results[name][-1]["video_url"] for name in ("first", "second"))
    assert np.array_equal(frames_of(results["second"])[-1], alone)


def test_text_only_run_has_no_video(pipe, photo, tmp_path):
    events = run_events(pipe, photo, seed=1, out_dir=tmp_path, video=False)
    kinds = types(events)
    assert kinds[0] == "thinking_start" and kinds[-1] == "thinking_complete" and "text_chunk" in kinds
    assert not {"video_frame", "video_complete", "error"} & set(kinds)
    assert events[-1]["video_url"] is None and events[-1]["tokens"] > 1
    assert not list(tmp_path.glob("*.mp4"))


def test_video_only_retry_reuses_the_text(pipe, photo, tmp_path):
    text = "Next: the red square slides to the right.\nBecause it sits on a slope."
    events = run_events(pipe, photo, mode="text", seed=1, out_dir=tmp_path, reasoning=text)
    assert "text_chunk" not in types(events)
    assert "video_complete" in types(events)
    assert events[-1]["text"] == text


@pytest.mark.parametrize("text, expected", [
    ("Next: the cup tips over.\nBecause it leans.", "the cup tips over."),
    ("**Next:** the cup tips over.\nBecause", "the cup tips over."),
    ("## Next - the bird flies off\n", "the bird flies off"),
    ("The ball rolls away.\nIt is on a slope.", "The ball rolls away."),
    ("Next: still writing the first line", None),
    ("Nextdoor's cat jumps.\n", "Nextdoor's cat jumps."),
    ("*Next*: the dog_bed slides off the sofa.\n", "the dog_bed slides off the sofa."),
    ("_Next —_ it rains.\n", "it rains."),
])
def test_the_prediction_is_the_first_complete_line(text, expected):
    from foresight.vlm import prediction_line

    assert prediction_line(text) == expected


def _run_in_child(pipe, image, results):
    events = list(pipe(image, preset="fast", seed=1, video=False))
    results.put([ev["type"] for ev in events])


def test_a_forked_child_runs_with_its_own_workers(models, photo):
    """ZeroGPU runs each GPU call in a forked process: the parent's worker threads do not exist there.

    The child runs on the CPU: a process forked after CUDA started cannot use CUDA (on ZeroGPU the
    parent never starts it), so on a GPU machine this test loads CPU copies of the tiny models."""
    import multiprocessing

    from foresight.profiles import load

    if models.settings.device != "cpu":
        models = load(dataclasses.replace(models.settings, device="cpu", dtype="float32"), log=lambda m: None)
    pipe = ForesightPipeline(models)
    run_events(pipe, photo, video=False)  # the parent's workers exist
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    child = fork.Process(target=_run_in_child, args=(pipe, photo, results))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the child finished its run"
    kinds = results.get(timeout=5)
    assert kinds[0] == "thinking_start" and kinds[-1] == "thinking_complete" and "text_chunk" in kinds
