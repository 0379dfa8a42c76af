"""The timeline's mechanisms: text at every token, pacing, compiled video, and settings that change
timing but never what is made."""

import threading
import time

import numpy as np
import pytest
import torch

from foresight.pipeline import ForesightPipeline
from foresight.scheduling import Pacer
from foresight.vlm import TokenStreamer

from conftest import frames_of, run_events, stop_at_first_preview, with_settings


class SpellingTokenizer:
    """Token ids are byte values: decodes like a byte-level BPE does, U+FFFD for a cut character."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_is_handed_on_at_every_token_and_only_whole_characters():
    chunks, tokens = [], []
    streamer = TokenStreamer(SpellingTokenizer(), chunks.append, on_token=lambda: tokens.append(1))
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: skipped
    for byte in "Next: café".encode():
        streamer.put(torch.tensor([byte]))
    streamer.end()
    assert "".join(chunks) == "Next: café" and len(tokens) == len("Next: café".encode())
    assert chunks[:6] == list("Next: "), "no waiting for the end of a word"
    assert "\ufffd" not in "".join(chunks) and chunks[-1] == "é"  # held until its second byte came


def test_the_first_text_follows_the_first_token(pipe, photo, tmp_path, monkeypatch):
    """The first token's text is handed on before the second token is made: the order in which the
    thinker reports, not a time (a busy conductor may hand on the first few tokens' texts merged)."""
    from foresight import jobs

    posted, post = [], jobs.Run.post

    def recording(run, what, **data):
        posted.append((what, len(run.token_times), data.get("chunk")))
        post(run, what, **data)

    monkeypatch.setattr(jobs.Run, "post", recording)
    events = run_events(pipe, photo, seed=1, out_dir=tmp_path)
    kind, tokens_made, text = next(entry for entry in posted if entry[0] == "text")
    assert tokens_made == 1, "reported before the second token"
    first_chunk = next(ev for ev in events if ev["type"] == "text_chunk")
    assert first_chunk["content"].startswith(text) and events[-1]["ttft"] == first_chunk["t"]


class FakeClock:
    """A clock the test moves: `sleep` moves it on by what is asked."""

    def __init__(self):
        self.now, self.slept = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pacer_holds_the_rate_between_tokens_and_lets_go():
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.hold(50.0)
    stamps = []
    for _ in range(6):  # tokens that take 5 ms to make
        pacer.wait()
        stamps.append(clock.now)
        clock.now += 0.005
    assert np.diff(stamps) == pytest.approx([0.02] * 5), "one token every 20 ms at 50 tokens a second"
    slept = len(clock.slept)
    for _ in range(3):  # tokens slower than the pace are not held back
        clock.now += 0.03
        pacer.wait()
    assert len(clock.slept) == slept
    pacer.release()
    pacer.wait()
    assert len(clock.slept) == slept and not pacer.held, "released: no more waiting"


def test_a_release_wakes_a_thinker_waiting_for_its_next_token():
    pacer, waiting = Pacer(), threading.Event()
    sleep = pacer._sleep
    pacer._sleep = lambda seconds: (waiting.set(), sleep(seconds))[1]
    pacer.hold(0.001)  # a token every 1000 s
    pacer.wait()  # the first goes at once
    thinker = threading.Thread(target=pacer.wait)
    thinker.start()
    assert waiting.wait(30), "the thinker is waiting for its next token"
    pacer.release()
    thinker.join(30)  # a deadline for a broken pacer, not a measurement
    assert not thinker.is_alive()


class RecordingPacer(Pacer):
    """A pacer that keeps, in order, when it was held and released and whether each token waited."""

    log: list = []

    def hold(self, rate):
        self.log.append(("hold", rate))
        super().hold(rate)

    def release(self):
        self.log.append(("release", None))
        super().release()

    def wait(self):
        self.log.append(("token", self.held))
        super().wait()


def test_while_the_video_renders_the_text_is_paced_and_says_the_same(models, photo, tmp_path, monkeypatch):
    """Order and counts, not milliseconds: the pace is held from the video's start to its end, the
    tokens in between wait for it, those after do not, and nothing made changes."""
    from foresight import jobs

    long = with_settings(models, max_new_tokens=240)  # 6 s of text at the pace: it outlasts the video
    free = run_events(ForesightPipeline(long), photo, mode="fused", seed=4, out_dir=tmp_path, frame_events=True)
    monkeypatch.setattr(jobs, "Pacer", RecordingPacer)  # each run's pacer is made with its Run
    monkeypatch.setattr(RecordingPacer, "log", [])
    paced = run_events(ForesightPipeline(with_settings(long, text_pace=40.0)), photo, mode="fused", seed=4,
                       out_dir=tmp_path, frame_events=True)
    log, kinds = RecordingPacer.log, [entry[0] for entry in RecordingPacer.log]
    held_from, released_at = kinds.index("hold"), kinds.index("release")
    assert log[held_from] == ("hold", 40.0) and held_from < released_at
    assert [entry for entry in log[:held_from] if entry[1]] == [], "not held before the video starts"
    held = [entry for entry in log[held_from:released_at] if entry[0] == "token"]
    assert len(held) >= 3 and all(waited for _, waited in held), "held while the video renders"
    after = [waited for kind, waited in log[released_at:] if kind == "token"]
    assert after and not any(after), "full speed once the video is done"
    assert paced[-1]["text"] == free[-1]["text"]
    assert all(np.array_equal(a, b) for a, b in zip(frames_of(paced), frames_of(free), strict=True))


def test_stop_during_pacing_ends_the_run_at_the_next_token(models, photo, tmp_path):
    slow = ForesightPipeline(with_settings(models, text_pace=1.0))  # a token a second while the video renders
    events = stop_at_first_preview(slow, photo, out_dir=tmp_path)
    stopped_at = next(ev["t"] for ev in events if ev["type"] == "video_frame")
    end = events[-1]
    assert end["stopped"] and not end["video_url"]
    assert len([t for t in end["token_times"] if t > stopped_at]) <= 2, "not the rest of the text at a token a second"


def test_every_timing_setting_makes_the_same_text_and_frames(models, photo, tmp_path):
    """Schedules, pacing and preview cadence change when things happen, never what is made."""
    reference = run_events(ForesightPipeline(models), photo, mode="text", seed=6, out_dir=tmp_path, frame_events=True)
    for changes in ({"schedule": "streams"}, {"text_pace": 60.0}, {"preview_every": 2}, {"preview_decode": "whole"}):
        events = run_events(ForesightPipeline(with_settings(models, **changes)), photo, mode="text", seed=6,
                            out_dir=tmp_path, frame_events=True)
        assert events[-1]["text"] == reference[-1]["text"], changes
        assert events[-1]["prediction"] == reference[-1]["prediction"], changes
        assert all(np.array_equal(a, b) for a, b in zip(frames_of(events), frames_of(reference))), changes
        assert protocol(events) == protocol(reference), changes


def protocol(events):
    """The run's events but its text chunks and frames, whose number and place are timing: how fast
    the text comes beside the video, and how many chunks a busy consumer gets merged."""
    return [ev["type"] for ev in events if ev["type"] not in ("video_frame", "text_chunk")]


def test_dinov2_early_reads_the_image_beside_the_prefill_and_makes_the_same_video(models, photo, tmp_path):
    """DINOv2 needs no prefill: with `vision_early` it starts at once, else after the first token."""
    def run(pipe):
        events = run_events(pipe, photo, mode="fused", seed=6, out_dir=tmp_path, frame_events=True)
        return events, {span["name"]: span for span in events[-1]["spans"]}

    late, late_spans = run(ForesightPipeline(models))
    early, early_spans = run(ForesightPipeline(with_settings(models, vision_early=True)))
    assert late_spans["DINOv2"]["start"] >= late_spans["prefill"]["end"]
    assert early_spans["DINOv2"]["start"] < early_spans["prefill"]["end"]
    assert early_spans["DINOv2"]["end"] <= early_spans["bridge"]["start"]
    assert early[-1]["text"] == late[-1]["text"] and early[-1]["video_url"]
    assert all(np.array_equal(a, b) for a, b in zip(frames_of(early), frames_of(late)))
    assert protocol(early) == protocol(late)


def test_dinov2_begun_early_ends_with_its_run(models, photo, tmp_path):
    """A run stopped before its first token leaves no DINOv2 work behind on the renderer."""
    calls = []

    def slow(module, args):
        calls.append("started")
        time.sleep(0.3)

    hooks = [models.vision.register_forward_pre_hook(slow),
             models.vision.register_forward_hook(lambda module, args, output: calls.append("finished"))]
    try:
        stop = threading.Event()
        stop.set()  # Stop pressed while the run waited in the queue
        events = run_events(ForesightPipeline(with_settings(models, vision_early=True)), photo, mode="fused", seed=1,
                            out_dir=tmp_path, stop=stop)
        ended_with = list(calls)
        time.sleep(0.5)  # long enough for work left behind to begin
    finally:
        for hook in hooks:
            hook.remove()
    assert events[-1]["stopped"] and not events[-1]["video_url"]
    assert ended_with in ([], ["started", "finished"]) and calls == ended_with, (ended_with, calls)


def test_the_compiled_video_path_compiles_once_and_makes_the_same_video(models, photo, tmp_path):
    """On CUDA the warm-up pays this compile; here the same compile runs on the CPU. It compiles the
    loaded modules for good, so it runs on a copy of the tiny models."""
    import torch._dynamo.utils

    from foresight.profiles import load

    eager = run_events(ForesightPipeline(models), photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True)
    copy = load(models.settings, log=lambda m: None)
    compiled = ForesightPipeline(with_settings(copy, compile_video=True))
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    events = run_events(compiled, photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True)
    compiled_graphs = graphs["unique_graphs"]
    assert compiled_graphs > before, "the video path was compiled"
    for image in (photo.resize((600, 150)),):  # another shape, of another aspect
        other_size = run_events(compiled, image, mode="fused", seed=2, out_dir=tmp_path)
        assert other_size[-1]["video_url"] and graphs["unique_graphs"] == compiled_graphs, "no compile per shape"
    assert max(np.abs(a - b).max() for a, b in zip(frames_of(events), frames_of(eager))) <= 16
