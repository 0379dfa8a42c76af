"""ForesightPipeline: one image (or a story's last frames) in, the streaming protocol's events out.

    pipe = ForesightPipeline(models)
    for event in pipe("cat.jpg", prompt="What will the cat do?", preset="fast", out_dir="runs/cat"):
        ...

`__call__` reads as a run goes: what it begins from (an image, or a story's last frames with what
it foresaw), Qwen thinking aloud, what conditions the video, the video rendered beside the text
(paced meanwhile) with previews, then the rest of the text. The work happens on the workers
(`jobs.py`: each job reports messages); the run's deadline, Stop and stuck workers are the
runtime's (`runtime.py`); its files are written through `story.RunFiles`. Every decision (when the
video starts, pacing, the out-of-memory step down, failures) is taken here, one message at a time.
"""

from __future__ import annotations

import functools
import logging
import random
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from foresight import jobs
from foresight import passes as passes_stage
from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import MAX_SEGMENTS, PRESETS, SMALLER_PRESET, Preset, run_timeout
from foresight.events import event
from foresight.health import DeviceHealth
from foresight.inputs import InputError, check_question, fit_size, load_image, video_view
from foresight.jobs import Run, RunRequest, VideoJob
from foresight.runtime import Message, Runtime, Workers
from foresight.scheduling import HostCopier, use_stream, worker_streams
from foresight.story import RunFiles
from foresight.trace import Trace

log = logging.getLogger("foresight")
FALLBACK_PREDICTION = "The scene continues naturally."
# The shapes the warm-up captures, per preset: square, cameras' 3:2 and 4:3, phones' and screens' 16:9.
GRAPH_ASPECTS = ((1, 1), (3, 2), (2, 3), (4, 3), (3, 4), (16, 9), (9, 16))
PREDICTION_MAX_CHARS = 320  # a prediction (30 words, vlm.PREDICTION_WORDS) is cut here
BROKEN_MESSAGE = ("The GPU has stopped answering, so no run can be made until the app restarts. "
                  "Please try again in a few minutes.")


def prediction_from(text: str) -> str:
    """What `text` mode conditions the video on: the first line ('Next: …'), else the text so far."""
    return (vlm_stage.prediction_line(text + "\n") or text.strip())[:PREDICTION_MAX_CHARS] or FALLBACK_PREDICTION


def condition_frames(frames: tuple, preset: Preset, notes: list[str] | None = None) -> tuple:
    """What LTX's clip begins with, fitted to `preset`: the last 8k+1 of `frames`, at most the
    preset's `condition_frames` (one frame: the image)."""
    count = (min(preset.condition_frames, len(frames)) - 1) // 8 * 8 + 1
    return tuple(video_view(frame, preset, notes) for frame in frames[-count:])


def merged_text(first: Message, then: Message) -> Message | None:
    """Text waiting behind text, as one chunk: a consumer that falls behind (a busy web server, ~2 ms
    a Gradio update) gets fewer, longer chunks instead of a backlog."""
    if first.kind == then.kind == "text":
        return Message("text", {"chunk": first.data["chunk"] + then.data["chunk"], "t": then.data["t"]})
    return None


def run_files(out_dir, name: str, story, clip, preset: str | None) -> RunFiles:
    """A run's files when the caller brought none: in `out_dir`, else a new temporary folder."""
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="foresight-run-"))
    if story is None and clip is None:
        return RunFiles.first(folder, name)
    return RunFiles.going_on(folder, name, story=story, clip=clip, preset=PRESETS.get(preset or "default"))


def accepted(models, trace: Trace, files: RunFiles, image, prompt, preset, mode, seed, stop, reasoning, video,
             frame_events, passes: int) -> Run:
    """The run's request, checked: the question, what it begins from, the mode, the passes;
    InputError in words."""
    question = check_question(prompt)
    if passes not in models.passes:
        raise InputError("Two passes need LTX's latent upscaler, which is not loaded here." if passes == 2 else
                         f"LTX runs in one pass or two, not {passes}.")
    notes: list[str] = []
    if files.story is None:
        with trace.span("text", "load image", gpu=False):
            looked_at = load_image(image, notes)
        frames, preset = (looked_at,), preset or "default"
    else:
        with trace.span("text", "load story", gpu=False):
            frames = files.last_frames()
        looked_at, preset = frames[-1], preset or files.story.segments[-1]["preset"]
    mode, note = choose_mode(models, mode)
    condition = condition_frames(frames, PRESETS[preset], notes)
    request = RunRequest(
        image=looked_at, frames=frames, condition=condition, question=question, preset=preset, mode=mode,
        seed=random.randrange(2**31) if seed is None else int(seed), reasoning=reasoning, video=video,
        frame_events=frame_events, context=vlm_stage.context_line(files.story.prediction) if files.story else "",
        notes=tuple(notes), mode_note=note, passes=passes)
    return Run(request, files, stop, trace)


def choose_mode(models, requested: str | None) -> tuple[str, str]:
    """The mode that runs, and why it is not the one asked for (in words, or "")."""
    available = models.modes
    if requested in (None, "", "auto"):
        mode = available[0]
        return mode, models.bridge_note if mode == "text" else ""
    if requested not in ("fused", "text"):
        raise InputError(f"Unknown mode {requested!r}; choose fused or text.")
    if requested in available:
        return requested, ""
    fallback = available[0]
    why = models.bridge_note if requested == "fused" else "T5 is not loaded"
    return fallback, f"{requested} mode is unavailable ({why}); ran {fallback} mode instead"


def make_workers(settings) -> Workers:
    """The thinker (Qwen; CUDA graphs of a compiled decode step are recorded per thread) and the
    renderer (LTX), each on its stream for its lifetime, the copier (host work), the thinker's
    static cache and the host copier."""
    text_stream, video_stream = worker_streams(settings.schedule, settings.device)
    return Workers({"thinker": lambda: use_stream(text_stream), "renderer": lambda: use_stream(video_stream),
                    "copier": None}, static_cache=vlm_stage.ReusedStaticCache(settings.static_cache_len),
                   host=HostCopier(settings.device))


class ForesightPipeline:
    def __init__(self, models, on_broken: Callable[[str], None] = lambda why: None):
        """`on_broken(why)`: the device stopped answering; no run is taken any more (`health.py`)."""
        self.models = models
        settings = models.settings
        health = DeviceHealth(settings.device, on_broken=on_broken)
        self.runtime = Runtime(functools.partial(make_workers, settings), settings.stop_grace_s, health)
        if settings.compile_video:
            video_stage.compile_video(models.video_pipeline)
        self._video_graphs = None
        self._fresh_graphs()

    def __call__(self, image=None, prompt: str = "", preset: str | None = None, mode: str | None = None,
                 seed: int | None = None, out_dir: str | Path | None = None, stop=None, reasoning: str | None = None,
                 video: bool = True, frame_events: bool = False, video_name: str | None = None,
                 story: str | Path | None = None, clip: str | Path | None = None,
                 files: RunFiles | None = None, passes: int = 1) -> Iterator[dict]:
        """Yield the run's events.

        `files`: where the run's files go (`story.RunFiles`, as the page and the API make them);
        else made here from `out_dir` (default: a new temporary folder) and `video_name` (the mp4's
        name without .mp4; default the run id), going on from `story` (an mp4 this app made, or a
        folder holding one) or a bare `clip` (a stranger's mp4, decoded under the clip budget).
        `passes=2`: LTX's authors' two passes (sharper, slower: `passes.py`); 1 by default.
        `preset`: default the story's (continuing one), else "default". `stop`: a `runtime.StopFlag`
        or a `threading.Event`. `reasoning`: render the video again for this existing text, without
        the VLM stream. `video=False`: the reasoning alone. `frame_events`: also a `video_frame` event
        (kind `frame`, a JPEG) for every final frame.
        """
        if self.health.broken:
            yield event("error", 0.0, stage="run", recoverable=False, message=BROKEN_MESSAGE)
            return
        trace, run_id, stop = Trace(cuda=self._cuda), uuid.uuid4().hex[:12], stop or threading.Event()
        try:  # 1. what the run begins from: the image, or the story's last frames and what it foresaw
            if preset is not None and preset not in PRESETS:
                raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
            files = files or run_files(out_dir, video_name or run_id, story, clip, preset)
            run = accepted(self.models, trace, files, image, prompt, preset, mode, seed, stop, reasoning, video,
                           frame_events, passes)
        except InputError as exc:
            yield event("error", trace.now(), stage="input", message=str(exc), recoverable=True)
            return
        yield self._started(run, run_id)
        deadline = run_timeout(self.models.settings, PRESETS[run.request.preset])
        run.shift = self.runtime.shift(stop, deadline, clock=run.trace.now)  # not run.now: no cycle to the run
        run.shift.wake(run.pacer.release)
        try:
            # 2. Qwen thinks aloud from its first token; beside its prefill, LTX's condition is prepared
            self._think(run)
            # 3. the video waits for what conditions it: the prefill's states (fused, at the first token)
            #    or the prediction line (text, once written); the text streams meanwhile
            yield from self._until(run, lambda: run.conditioning is not None)
            # 4. the video renders beside the text, which is held to a reader's pace: previews, then the
            #    mp4 (out of GPU memory, again one preset smaller)
            if run.conditioning is not None and not run.shift.given_up:
                self._start_video(run, **run.conditioning)
                yield from self._until(run, lambda: run.renderers == 0)
            # 5. the rest of the text, at full speed
            run.pacer.release()
            yield from self._until(run, lambda: False)
            if run.shift.passed_deadline:
                yield self._on_deadline(run)
            yield self._completed(run)
        finally:  # also on Stop or a closed client: every job ends at its next token or step
            if run.shift.end():  # a stuck thread may still replay on the graphs' buffers
                self._fresh_graphs()

    def _started(self, run: Run, run_id: str) -> dict:
        request, preset, story = run.request, PRESETS[run.request.preset], run.files.story
        return event("thinking_start", run.now(), run_id=run_id, preset=request.preset, mode=request.mode,
                     width=request.condition[0].width, height=request.condition[0].height,
                     num_frames=preset.num_frames, fps=preset.fps, seed=request.seed,
                     num_steps=self.models.settings.sampling.num_steps, passes=request.passes,
                     pass_steps=list(self.models.settings.sampling.pass_steps(request.passes)), note=request.mode_note,
                     input_notes=list(request.notes),
                     segment=run.files.segment, max_segments=MAX_SEGMENTS, condition_frames=len(request.condition),
                     story_frames=story.num_frames if story else 0)

    # --- 2.-5. the timeline: what the jobs tell, and what happens next ----------------------------

    def _think(self, run: Run) -> None:
        """2. The thinker prefills and streams (a retry has its text: the video can start at once);
        beside it the copier prepares LTX's condition, and with `vision_early` DINOv2 reads the image."""
        request, shift = run.request, run.shift
        if request.video:  # the condition's preparation needs nothing but the image
            run.early["prepared"] = shift.begin_early("copier", jobs.prepare, self.models, run, request.condition)
        if request.reasoning is not None:
            run.text = request.reasoning
            run.conditioning = {"prompt": prediction_from(run.text)} if request.mode == "text" else {}
            return
        fused_video = request.mode == "fused" and request.video
        shift.submit("thinker", jobs.think, self.models, run, fused_video)
        if fused_video and self.models.settings.vision_early:  # DINOv2 beside the prefill
            run.early["patch_tokens"] = shift.begin_early("renderer", jobs.see, self.models, run, request.image)

    def _until(self, run: Run, done: Callable[[], bool]) -> Iterator[dict]:
        """The run's events as its jobs' messages tell them, until `done()` or the run is over; each
        says which segment of its story it belongs to."""
        if done():
            return
        for message in run.shift.messages(merge=merged_text):
            happened = self._on(run, message)
            if happened is not None:
                yield {**happened, "segment": run.files.segment}
            if done():
                return

    def _on(self, run: Run, message: Message) -> dict | None:
        data = message.data
        match message.kind:
            case "first_token":
                return self._on_first_token(run, data)
            case "text":
                return self._on_text(run, data)
            case "preview" | "frame":
                return self._on_frame(run, data)
            case "video_done":
                return self._on_video_done(run, data)
            case "out_of_memory":
                return self._on_out_of_memory(run)
            case "text_failed" | "video_failed":
                return self._on_failure(run, message)
            case "done":
                return self._on_done(run, data)
        raise ValueError(f"a job reported {message.kind!r}, which no part of the timeline reads")

    def _start_video(self, run: Run, job: VideoJob | None = None, **conditioning) -> None:
        """4. The video gets the GPU, and the text reads at a human pace meanwhile."""
        request = run.request
        if job is None:
            run.prediction = conditioning.get("prompt")
            job = VideoJob(PRESETS[request.preset], request.condition, run.early.get("prepared"), request.image,
                           request.question, request.context, patch_tokens=run.early.get("patch_tokens"),
                           **conditioning)
        run.rendering, run.video_start = job, run.video_start or round(run.now(), 4)
        run.renderers += 1
        run.pacer.hold(self.models.settings.text_pace)
        run.shift.submit("renderer", jobs.render, self.models, run, job, self._video_graphs)

    def _waits_for_its_line(self, run: Run) -> bool:
        """Text mode's video, not started yet: it waits for the prediction line."""
        return run.request.mode == "text" and run.request.video and run.conditioning is None

    def _on_first_token(self, run: Run, data: dict) -> None:
        if data["capture"] is not None:  # fused: the prefill's states exist, the video can start
            run.conditioning = {"states": data["capture"]}

    def _on_text(self, run: Run, data: dict) -> dict:
        run.text += data["chunk"]
        run.moments["ttft"] = run.moments["ttft"] or round(data["t"], 4)
        if self._waits_for_its_line(run) and (vlm_stage.prediction_line(run.text) is not None or
                                              len(run.token_times) >= self.models.settings.prediction_max_tokens):
            run.conditioning = {"prompt": prediction_from(run.text)}
        return event("text_chunk", data["t"], content=data["chunk"])

    def _on_frame(self, run: Run, data: dict) -> dict:
        run.moments["first_frame"] = run.moments["first_frame"] or round(data["t"], 4)
        return event("video_frame", data["t"], **{k: v for k, v in data.items() if k != "t"})

    def _on_video_done(self, run: Run, data: dict) -> dict:
        """5. The rest of the text runs at full speed."""
        run.pacer.release()
        run.moments["video_ready"], run.video_url = round(data["t"], 4), str(run.files.video)
        run.frames = {"story": data["num_frames"], "new": data["segment_frames"]}
        return event("video_complete", data["t"], video_url=run.video_url, num_frames=data["num_frames"],
                     segment_frames=data["segment_frames"], fps=data["fps"])

    def _on_out_of_memory(self, run: Run) -> dict:
        """One preset smaller, until the smallest; then the video is given up, the text goes on. The
        condition is fitted again from what it was made of (the image, or the story's last frames)."""
        preset = run.rendering.preset.name
        smaller = SMALLER_PRESET.get(preset)
        if smaller is None:
            run.pacer.release()
            return event("error", run.now(), stage="video", recoverable=True,
                         message=f"The video could not be made: out of GPU memory even at the {preset} preset.")
        torch.cuda.empty_cache()
        self._start_video(run, replace(run.rendering, preset=PRESETS[smaller], prepared=None,
                                       condition=condition_frames(run.request.frames, PRESETS[smaller])))
        return event("error", run.now(), stage="video", recoverable=True, retry_preset=smaller,
                     message=f"Out of GPU memory at the {preset} preset; retrying at {smaller}.")

    def _on_failure(self, run: Run, message: Message) -> dict:
        if message.kind == "text_failed":
            return event("error", run.now(), stage="text", recoverable=True,
                         message=f"The reasoning stopped early: {message.data['message']}")
        run.pacer.release()
        return event("error", run.now(), stage="video", recoverable=True,
                     message=f"The video could not be made: {message.data['message']}")

    def _on_done(self, run: Run, data: dict) -> None:
        if data["role"] == "renderer":
            run.renderers -= 1
        elif self._waits_for_its_line(run) and not run.stop.is_set():
            run.conditioning = {"prompt": prediction_from(run.text)}  # the text ended before a line did

    def _on_deadline(self, run: Run) -> dict:
        """Past the deadline: the run ends in words; the runtime leaves behind whatever does not stop."""
        run.pacer.release()
        return event("error", run.now(), stage="run", recoverable=True, segment=run.files.segment,
                     message=f"This run took longer than its {run.shift.deadline_s:.0f} s limit and was ended. "
                             "Press Generate to try again.")

    def _completed(self, run: Run) -> dict:
        request = run.request
        if run.video_url:  # stopped after its mp4 or not: the story can go on from it
            try:
                self._keep_story(run)
            except OSError as exc:  # the run stands; only its story cannot go on
                log.warning("could not keep the story beside %s: %r", run.video_url, exc)
        return event("thinking_complete", run.now(), text=run.text, video_url=run.video_url,
                     stopped=run.stop.is_set(), mode=request.mode, seed=request.seed, prediction=run.prediction,
                     preset=run.rendering.preset.name if run.rendering else request.preset, **run.moments,
                     tokens=len(run.token_times), token_times=[round(t, 4) for t in run.token_times],
                     video_start=run.video_start, overhead_s={k: round(v, 4) for k, v in run.seconds.items()},
                     spans=run.trace.spans(), segment=run.files.segment)

    @staticmethod
    def _keep_story(run: Run) -> None:
        """The record beside the mp4 that lets the story go on: what came before, and this segment."""
        request, job = run.request, run.rendering
        segment = dict(source="run", question=request.question, text=run.text,
                       prediction=run.prediction or prediction_from(run.text), mode=request.mode,
                       preset=job.preset.name, seed=request.seed, frames=run.frames["new"])
        run.files.keep_record(segment, job.condition[0].size, job.preset.fps, run.frames["story"])

    # --- the workers, the warm-up, and what a stuck run leaves to replace --------------------------

    @property
    def _cuda(self) -> bool:
        return self.models.settings.device.startswith("cuda")

    @property
    def health(self) -> DeviceHealth:
        return self.runtime.health

    @property
    def abandoned(self) -> int:
        """Runs whose stuck threads were left behind."""
        return self.runtime.abandoned

    def _fresh_graphs(self) -> None:
        """The video's static graphs, new: a stuck thread may still replay on the old buffers."""
        if self.models.settings.video_graphs:
            self._video_graphs = video_stage.VideoGraphs(self.models.video_pipeline, self._cuda)

    def default_mode(self) -> str:
        return self.models.modes[0]

    def warm_up(self, image, log: Callable[[str], None] = print) -> None:
        """Runs before the first user: kernels, allocators, and what compiles (the static decode;
        with `compile_video`, the video path, at every preset; with `video_graphs`, the video
        graphs of the common shapes).

        One compile at a time: torch.compile is not safe in two threads at once (measured: the
        static decode's compile beside the video's failed), so the text runs alone, then the video
        alone, then both. If the static decode fails here (a compiler problem on this machine), the
        pipeline falls back to the dynamic decode rather than fail every user's run.
        """
        with tempfile.TemporaryDirectory() as scratch:
            events = list(self(image, preset="fast", seed=0, out_dir=scratch, video=False))
            failed = [ev["message"] for ev in events if ev["type"] == "error" and ev["stage"] == "text"]
            if failed and self.models.settings.decode == "static":
                log(f"[foresight] the static-cache decode failed ({failed[0]}); using the dynamic decode")
                self.models = replace(self.models, settings=replace(self.models.settings, decode="dynamic"))
            if self._video_graphs is not None:
                self._capture_graphs(log)
            presets = PRESETS if self.models.settings.compile_video else ["fast"]
            for preset in presets:
                list(self(image, preset=preset, seed=0, out_dir=scratch, reasoning="Next: warming up."))
            list(self(image, preset="fast", seed=0, out_dir=scratch))

    def _pass_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The sizes LTX runs at for a clip of `size`: one pass's, and with the upscaler both of two passes'."""
        if 2 not in self.models.passes:
            return [size]
        return [size, *passes_stage.pass_sizes(*size, self.models.settings.sampling.downscale_factor)]

    def _capture_graphs(self, log: Callable[[str], None]) -> None:
        """The video graphs of every preset at the common aspect ratios (each pass's size too), for both
        conditionings, captured on the renderer thread that replays them."""
        sizes = sorted({(*size, preset.num_frames) for preset in PRESETS.values() for width, height in GRAPH_ASPECTS
                        for size in self._pass_sizes(fit_size(width, height, preset))})
        started = time.perf_counter()
        self.runtime.workers()["renderer"].submit(lambda: video_stage.capture_graphs(  # on the renderer's stream
            self.models, self._video_graphs, sizes, video_stage.warm_conditionings(self.models))).result()
        log(f"[foresight] captured {self._video_graphs.captured} video graphs ({len(sizes)} sizes) in "
            f"{time.perf_counter() - started:.1f}s")
