"""ForesightPipeline: one image in, the streaming protocol's events out.

    pipe = ForesightPipeline(models)
    for event in pipe("cat.jpg", prompt="What will the cat do?", preset="fast"):
        ...

A run is one timeline, and `_conduct` reads as it:

1. the thinker prefills Qwen: the first token, and the hidden states the bridge reads;
2. the text streams from that first token;
3. the video starts as soon as its conditioning can exist: in `fused` mode right after the
   prefill (with `vision_early`, DINOv2 has read the image beside it), in `text` mode
   once the prediction line is written; while it renders, the text is paced so that the
   denoising steps get the GPU;
4. previews as it denoises (every `preview_every` steps), then the mp4;
5. the rest of the text at full speed.

A run may continue a story ("And then?", `story.py`): Qwen then looks at the story's last frame
with what it foresaw as context, LTX's clip begins with the story's last frames, and the mp4 is
the whole story, the new frames joined to it without re-encoding what came before.

The two workers (long-lived threads: CUDA graphs of a compiled decode step are recorded per
thread) only do work and report what happened as messages; every decision (when the video
starts, pacing, the out-of-memory fallback, Stop, failures) is taken in `_conduct`. Closing the
generator (Stop, a dropped client) stops both workers at their next token or denoising step.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from foresight import story as story_stage
from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import MAX_SEGMENTS, PRESETS, SMALLER_PRESET, Preset, run_timeout
from foresight.events import event
from foresight.health import DeviceHealth
from foresight.inputs import InputError, check_question, crop_and_resize, fit_size, load_image, video_view
from foresight.media import Mp4Writer, join_mp4, write_jpeg
from foresight.scheduling import HostCopier, Pacer, use_stream, worker_streams
from foresight.trace import Trace

log = logging.getLogger("foresight")
FALLBACK_PREDICTION = "The scene continues naturally."
# The shapes the warm-up captures, per preset: square, cameras' 3:2 and 4:3, phones' and screens' 16:9.
GRAPH_ASPECTS = ((1, 1), (3, 2), (2, 3), (4, 3), (3, 4), (16, 9), (9, 16))
PREDICTION_MAX_CHARS = 320  # a prediction (30 words, vlm.PREDICTION_WORDS) is cut here
STOP_LOOK_S = 0.25  # with no message, the conductor looks at Stop this often
BROKEN_MESSAGE = ("The GPU has stopped answering, so no run can be made until the app restarts. "
                  "Please try again in a few minutes.")


@dataclass
class Message:
    """What a worker reports to the conductor."""

    kind: str  # first_token, text, text_failed, preview, frame, video_done, out_of_memory, video_failed, done
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunRequest:
    """What a run was asked, made once in `__call__` and handed down."""

    image: object  # PIL image as loaded, or a story's last frame: what Qwen and DINOv2 see
    frames: tuple  # what the clip begins with, as PIL images: the image, or the story's last frames
    condition: tuple  # `frames` as LTX's condition, fitted to the preset (`condition_frames`)
    question: str
    preset: str
    mode: str  # the mode that runs: fused or text
    seed: int
    mp4_path: Path  # the run's files are named after it: <name>.mp4, <name>-<preset>-step<N>.jpg, <name>-frame<N>.jpg
    reasoning: str | None = None  # a video-only retry: the text exists already
    video: bool = True
    frame_events: bool = False
    story: story_stage.Story | None = None  # the story this run continues (in its folder's before/)
    context: str = ""  # said to Qwen before the question: what the story's last segment foresaw

    @property
    def segment(self) -> int:
        return len(self.story.segments) + 1 if self.story else 1


@dataclass
class VideoJob:
    """One rendering: LTX's condition fitted to `preset`, and what conditions the video."""

    preset: Preset
    condition: tuple  # PIL images fitted to the preset: the clip's first frame(s)
    prepared: Future | None  # the condition as LTX's authors prepare it, begun early (None: prepare it)
    image: object  # PIL image as loaded: what DINOv2 and Qwen see
    question: str = ""
    context: str = ""
    prompt: str | None = None  # text mode: the prediction line
    states: vlm_stage.PrefillCapture | None = None  # fused mode: the prefill's states (None: compute them)
    patch_tokens: Future | None = None  # fused mode: DINOv2's tokens of `image`, begun early (None: read them)


class Run:
    """One run's shared state: its clock and trace, the message queue, Stop and the pacer; its
    request; and what the conductor knows so far (the text, the video's job, the moments)."""

    def __init__(self, stop: threading.Event, cuda: bool):
        self.trace = Trace(cuda=cuda)
        self.workers: Workers | None = None  # the threads this run was given; set when it begins
        self.attached: list[Callable[[], None]] = []  # undoes what the run put on the shared models (hooks)
        self.stop = stop
        self.pacer = Pacer()
        self.messages: queue.Queue[Message] = queue.Queue()
        self.token_times: list[float] = []
        self.seconds = {"jpeg": 0.0, "mp4": 0.0}  # the pipeline's own encoding work
        self._held: list[Message] = []
        self.request: RunRequest | None = None  # set once the input is accepted
        self.jobs: list[Future] = []  # the workers' turns; each ends with a "done" message
        self.finished = 0
        self.early: dict[str, Future] = {}  # work begun before it is needed: "prepared", "patch_tokens"
        self.text, self.prediction, self.video_url = "", None, None
        self.frames = {"story": 0, "new": 0}  # the mp4's frames, and this segment's share of them
        self.moments: dict[str, float | None] = {"ttft": None, "first_frame": None, "video_ready": None}
        self.rendering: VideoJob | None = None
        self.video_start: float | None = None
        self.timed_out: float | None = None  # the deadline (seconds) the run passed, if it did
        self.stop_seen: float | None = None  # when the conductor saw Stop (its workers then have a grace to end)

    def now(self) -> float:
        return self.trace.now()

    def post(self, what: str, **data) -> None:
        self.messages.put(Message(what, data))

    def next_message(self, timeout: float) -> Message:
        """The next message; text waiting behind text comes merged, so a consumer that falls behind
        (a busy web server: ~2 ms a Gradio update) gets fewer, longer chunks instead of a backlog.
        Raises queue.Empty when none comes within `timeout` seconds."""
        message = self._held.pop() if self._held else self.messages.get(timeout=max(0.0, timeout))
        while message.kind == "text":
            try:
                following = self.messages.get_nowait()
            except queue.Empty:
                break
            if following.kind != "text":
                self._held.append(following)
                break
            message = Message("text", {"chunk": message.data["chunk"] + following.data["chunk"],
                                       "t": following.data["t"]})
        return message

    def attach(self, undo: Callable[[], None]) -> None:
        """Something this run put on the shared models, and how to take it off again (also from
        another thread, if the run's worker is abandoned mid-call)."""
        self.attached.append(undo)

    def detach(self) -> None:
        for undo in self.attached:
            undo()

    def jpeg(self, rgb, suffix: str) -> str:
        """`rgb` as a JPEG beside the mp4, written once -> its path."""
        start = time.perf_counter()
        path = write_jpeg(rgb, self.request.mp4_path.with_name(f"{self.request.mp4_path.stem}-{suffix}.jpg"))
        self.seconds["jpeg"] += time.perf_counter() - start
        return str(path)


class Workers:
    """The pipeline's threads in one process, each on its own stream for its lifetime: the thinker
    (Qwen; CUDA graphs of a compiled decode step are recorded per thread), the renderer (LTX) and
    the copier (host work: JPEGs, the mp4, copies off the GPU), and the thinker's static cache."""

    def __init__(self, settings):
        text_stream, video_stream = worker_streams(settings.schedule, settings.device)
        self.thinker = ThreadPoolExecutor(1, "foresight-think", initializer=use_stream, initargs=(text_stream,))
        self.renderer = ThreadPoolExecutor(1, "foresight-render", initializer=use_stream, initargs=(video_stream,))
        self.copier = ThreadPoolExecutor(1, "foresight-copy")
        self.host = HostCopier(settings.device)
        self.static_cache = vlm_stage.ReusedStaticCache(settings.static_cache_len)
        self.pid = os.getpid()

    def abandon(self) -> None:
        """Never use these threads again: a stage is stuck in one of them. Queued work is dropped;
        the stuck thread is left where it is (Python cannot end a thread)."""
        for executor in (self.thinker, self.renderer, self.copier):
            executor.shutdown(wait=False, cancel_futures=True)


def prediction_from(text: str) -> str:
    """What `text` mode conditions the video on: the first line ('Next: …'), else the text so far."""
    return (vlm_stage.prediction_line(text + "\n") or text.strip())[:PREDICTION_MAX_CHARS] or FALLBACK_PREDICTION


def fitted(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames [F, H, W, 3] at `size` (width, height): a story keeps its first segment's size, and a
    segment rendered smaller (out of memory) is fitted to it before it is encoded, as LTX's
    condition is fitted (centre-cropped to the aspect ratio, bicubic)."""
    if (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames
    return np.stack([np.asarray(crop_and_resize(Image.fromarray(frame), *size)) for frame in frames])


def condition_frames(frames: tuple, preset: Preset, notes: list[str] | None = None) -> tuple:
    """What LTX's clip begins with, fitted to `preset`: the last 8k+1 of `frames`, at most the
    preset's `condition_frames` (one frame: the image)."""
    count = (min(preset.condition_frames, len(frames)) - 1) // 8 * 8 + 1
    return tuple(video_view(frame, preset, notes) for frame in frames[-count:])


class ForesightPipeline:
    def __init__(self, models, on_broken: Callable[[str], None] = lambda why: None):
        """`on_broken(why)`: the device stopped answering; no run is taken any more (`health.py`)."""
        self.models = models
        self.health = DeviceHealth(models.settings.device, on_broken=on_broken)
        self.abandoned = 0  # runs whose stuck threads were left behind at their deadline
        self._workers_lock = threading.Lock()
        self._process_workers: Workers | None = None
        if models.settings.compile_video:
            video_stage.compile_video(models.video_pipeline)
        self._video_graphs = video_stage.VideoGraphs(models.video_pipeline, models.settings.device.startswith("cuda")) \
            if models.settings.video_graphs else None

    def _workers(self) -> Workers:
        """This process's workers, made on first use: a forked child (ZeroGPU runs each GPU call in
        one) inherits the executors but not their threads, and would wait for them forever."""
        with self._workers_lock:
            if self._process_workers is None or self._process_workers.pid != os.getpid():
                self._process_workers = Workers(self.models.settings)
            return self._process_workers

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

    def _capture_graphs(self, log: Callable[[str], None]) -> None:
        """The video graphs of every preset at the common aspect ratios, for both conditionings,
        captured on the renderer thread that replays them."""
        sizes = sorted({(*fit_size(width, height, preset), preset.num_frames) for preset in PRESETS.values()
                        for width, height in GRAPH_ASPECTS})
        started = time.perf_counter()
        self._workers().renderer.submit(lambda: video_stage.capture_graphs(  # the conditionings too, on its stream
            self.models, self._video_graphs, sizes, video_stage.warm_conditionings(self.models))).result()
        log(f"[foresight] captured {self._video_graphs.captured} video graphs ({len(sizes)} sizes) in "
            f"{time.perf_counter() - started:.1f}s")

    def __call__(self, image=None, prompt: str = "", preset: str | None = None, mode: str | None = None,
                 seed: int | None = None, out_dir: str | Path = "outputs", stop: threading.Event | None = None,
                 reasoning: str | None = None, video: bool = True, frame_events: bool = False,
                 video_name: str | None = None, story: str | Path | None = None,
                 clip: str | Path | None = None) -> Iterator[dict]:
        """Yield the run's events.

        `preset`: default the story's (continuing one), else "default".
        `story`: continue this story ("And then?"): the mp4 a run made, with its record beside it
        (`story.py`), or a folder holding one; `image` is not used. `clip`: continue a bare mp4
        instead, a stranger's file, decoded under the clip budget (`inputs.read_clip`).
        `reasoning`: render the video again for this existing text, without the VLM stream.
        `video=False`: the reasoning alone (the benchmark's "text alone").
        `frame_events`: also a `video_frame` event (kind `frame`, a JPEG) for every final frame;
        off by default, as the page shows the mp4 and the CLI writes it.
        `video_name`: the mp4's file name in `out_dir` (without .mp4); default the run id.
        """
        if self.health.broken:
            yield event("error", 0.0, stage="run", recoverable=False, message=BROKEN_MESSAGE)
            return
        run = Run(stop or threading.Event(), cuda=self.models.settings.device.startswith("cuda"))
        notes: list[str] = []
        try:
            prompt = check_question(prompt)
            if preset is not None and preset not in PRESETS:
                raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
            loaded, frames, preset, so_far = self._begins_from(run, image, story, clip, Path(out_dir), preset, notes)
            mode, note = self._choose_mode(mode)
        except InputError as exc:
            yield event("error", run.now(), stage="input", message=str(exc), recoverable=True)
            return
        run_id = uuid.uuid4().hex[:12]
        run.request = request = RunRequest(
            image=loaded, frames=frames, condition=condition_frames(frames, PRESETS[preset], notes), question=prompt,
            preset=preset, mode=mode, seed=random.randrange(2**31) if seed is None else int(seed),
            mp4_path=Path(out_dir) / f"{video_name or run_id}.mp4", reasoning=reasoning, video=video,
            frame_events=frame_events, story=so_far, context=vlm_stage.context_line(so_far.prediction) if so_far else "")
        request.mp4_path.parent.mkdir(parents=True, exist_ok=True)
        yield event("thinking_start", run.now(), run_id=run_id, preset=preset, mode=mode,
                    width=request.condition[0].width, height=request.condition[0].height,
                    num_frames=PRESETS[preset].num_frames, fps=PRESETS[preset].fps, seed=request.seed,
                    num_steps=self.models.settings.sampling.num_steps, note=note, input_notes=notes,
                    segment=request.segment, max_segments=MAX_SEGMENTS, condition_frames=len(request.condition),
                    story_frames=so_far.num_frames if so_far else 0)
        for happened in self._conduct(run):
            yield {**happened, "segment": request.segment}

    def _begins_from(self, run: Run, image, story, clip, out_dir: Path, preset: str | None, notes: list[str]):
        """The image, loaded, or the story's last frames -> (what Qwen and DINOv2 see, what the clip
        begins with, the preset that runs, the story so far or None); InputError in words."""
        if story is None and clip is None:
            with run.trace.span("text", "load image", gpu=False):
                loaded = load_image(image, notes)
            return loaded, (loaded,), preset or "default", None
        what = "story" if clip is None else "clip"
        with run.trace.span("text", "load story", gpu=False), story_stage.said_in_words(what):
            so_far = self._story_so_far(story, clip, out_dir, preset)
            frames = tuple(Image.fromarray(frame) for frame in so_far.tail())
        return frames[-1], frames, preset or so_far.segments[-1]["preset"], so_far

    @staticmethod
    def _story_so_far(story, clip, out_dir: Path, preset: str | None) -> story_stage.Story:
        """The story a continuation goes on from, linked into its own folder (`story.carry`), or a
        bare clip imported there; refused in words when it has all its segments."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if story is None:
            return story_stage.import_clip(clip, out_dir, PRESETS[preset or "default"])
        so_far = story_stage.load(story)
        so_far.check_room()
        return story_stage.carry(so_far, out_dir)

    # --- the timeline: the only place that decides what happens next ----------------------------

    def _conduct(self, run: Run) -> Iterator[dict]:
        """The timeline of one run, as the workers' messages tell it, within its deadline."""
        timeout = run_timeout(self.models.settings, PRESETS[run.request.preset])
        try:
            self._begin(run)
            while run.finished < len(run.jobs):
                limit = self._time_left_to(run, timeout)
                try:
                    if run.now() > limit:  # also while messages keep coming
                        raise queue.Empty
                    message = run.next_message(min(limit - run.now(), STOP_LOOK_S))
                except queue.Empty:
                    if run.now() <= limit:  # a look at Stop, in whichever process it was pressed
                        continue
                    if run.stop_seen is None or limit >= timeout:
                        yield self._on_deadline(run, timeout)
                    break
                match message.kind:
                    case "first_token":
                        happened = self._on_first_token(run, message.data)
                    case "text":
                        happened = self._on_text(run, message.data)
                    case "preview" | "frame":
                        happened = self._on_frame(run, message.data)
                    case "video_done":
                        happened = self._on_video_done(run, message.data)
                    case "out_of_memory":
                        happened = self._on_out_of_memory(run)
                    case "text_failed" | "video_failed":
                        happened = self._on_failure(run, message)
                    case "done":
                        happened = self._on_done(run, message.data)
                    case _:
                        raise ValueError(f"a worker reported {message.kind!r}, which no part of the timeline reads")
                if happened is not None:
                    yield happened
            yield self._completed(run)
        finally:  # also on Stop / a closed client: end both workers at their next step
            self._end(run)

    def _time_left_to(self, run: Run, timeout: float) -> float:
        """The moment the conductor stops waiting for the workers: the run's deadline; once Stop is
        seen, `stop_grace_s` after it (a worker that has not stopped by then is stuck: `_end`)."""
        if run.stop_seen is None and run.stop.is_set():
            run.stop_seen = run.now()
        return timeout if run.stop_seen is None else min(timeout, run.stop_seen + self.models.settings.stop_grace_s)

    def _begin(self, run: Run) -> None:
        """1. The prefill, then 2. the text; or, for a video-only retry, the video at once."""
        request = run.request
        workers = run.workers = self._workers()
        if request.video:  # the condition image's preparation needs nothing but the image: beside the prefill
            run.early["prepared"] = workers.copier.submit(self._prepare, run, request.condition)
        if request.reasoning is None:
            fused_video = request.mode == "fused" and request.video
            run.jobs.append(workers.thinker.submit(self._think, run, fused_video))
            if fused_video and self.models.settings.vision_early:  # DINOv2 beside the prefill
                run.early["patch_tokens"] = workers.renderer.submit(self._see, run, request.image)
        else:
            run.text = request.reasoning
            if request.video:
                self._start_video(run, prompt=prediction_from(run.text) if request.mode == "text" else None)

    def _start_video(self, run: Run, job: VideoJob | None = None, **conditioning) -> None:
        """3. The video gets the GPU, and the text reads at a human pace meanwhile."""
        request = run.request
        if job is None:
            run.prediction = conditioning.get("prompt")
            job = VideoJob(PRESETS[request.preset], request.condition, run.early.get("prepared"), request.image,
                           request.question, request.context, patch_tokens=run.early.get("patch_tokens"),
                           **conditioning)
        run.rendering, run.video_start = job, run.video_start or round(run.now(), 4)
        run.pacer.hold(self.models.settings.text_pace)
        run.jobs.append(run.workers.renderer.submit(self._render, run, job))

    def _waits_for_its_line(self, run: Run) -> bool:
        """Text mode's video, not started yet: it waits for the prediction line."""
        return run.request.mode == "text" and run.request.video and run.rendering is None

    def _on_first_token(self, run: Run, data: dict) -> None:
        if data["capture"] is not None:  # fused: the prefill's states exist, the video can start
            self._start_video(run, states=data["capture"])

    def _on_text(self, run: Run, data: dict) -> dict:
        run.text += data["chunk"]
        run.moments["ttft"] = run.moments["ttft"] or round(data["t"], 4)
        if self._waits_for_its_line(run) and (vlm_stage.prediction_line(run.text) is not None or
                                              len(run.token_times) >= self.models.settings.prediction_max_tokens):
            self._start_video(run, prompt=prediction_from(run.text))
        return event("text_chunk", data["t"], content=data["chunk"])

    def _on_frame(self, run: Run, data: dict) -> dict:
        run.moments["first_frame"] = run.moments["first_frame"] or round(data["t"], 4)
        return event("video_frame", data["t"], **{k: v for k, v in data.items() if k != "t"})

    def _on_video_done(self, run: Run, data: dict) -> dict:
        """5. The rest of the text runs at full speed."""
        run.pacer.release()
        run.moments["video_ready"], run.video_url = round(data["t"], 4), str(run.request.mp4_path)
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
        run.finished += 1
        if data["worker"] == "text" and self._waits_for_its_line(run) and not run.stop.is_set():
            self._start_video(run, prompt=prediction_from(run.text))  # the text ended before a line did

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
                     spans=run.trace.spans())

    @staticmethod
    def _keep_story(run: Run) -> None:
        """The record beside the mp4 that lets the story go on: what came before, and this segment."""
        request, job = run.request, run.rendering
        segment = dict(source="run", question=request.question, text=run.text,
                       prediction=run.prediction or prediction_from(run.text), mode=request.mode,
                       preset=job.preset.name, seed=request.seed, frames=run.frames["new"])
        story = request.story
        size = (story.width, story.height) if story else job.condition[0].size
        story_stage.write(request.mp4_path, [*(story.segments if story else ()), segment], size, job.preset.fps,
                          run.frames["story"])

    def _on_deadline(self, run: Run, timeout: float) -> dict:
        """Past the deadline: the run ends in words; `_end` leaves behind whatever does not stop."""
        run.timed_out = timeout
        run.pacer.release()
        return event("error", run.now(), stage="run", recoverable=True,
                     message=f"This run took longer than its {timeout:.0f} s limit and was ended. "
                             "Press Generate to try again.")

    def _end(self, run: Run) -> None:
        """Stop both workers at their next token or step and wait for them, up to `stop_grace_s`; no
        early work left behind. A worker that does not stop by then is stuck: it is abandoned with
        its threads, and what the run put on the shared models is taken off, so the next run starts
        clean on fresh threads."""
        run.stop.set()
        run.pacer.release()
        pending = [*run.jobs, *(early for early in run.early.values() if not early.cancel())]
        grace = self.models.settings.stop_grace_s
        left = grace if run.stop_seen is None else max(0.0, run.stop_seen + grace - run.now())
        _, stuck = futures_wait(pending, timeout=left)
        if stuck:  # a stage hung, or the device: the health check tells which
            self._abandon(run)
            self.health.after_stuck(f"passed its {run.timed_out:.0f} s deadline" if run.timed_out is not None
                                    else f"did not stop within {grace:g} s of Stop")

    def _abandon(self, run: Run) -> None:
        run.detach()
        with self._workers_lock:
            if self._process_workers is run.workers:
                self._process_workers = None
        run.workers.abandon()
        if self._video_graphs is not None:  # the stuck thread may still replay on the old buffers
            self._video_graphs = video_stage.VideoGraphs(self.models.video_pipeline,
                                                         self.models.settings.device.startswith("cuda"))
        self.abandoned += 1
        log.warning("a run's worker did not stop: its threads were abandoned (%d so far); the next run "
                    "gets fresh ones", self.abandoned)

    # --- the workers: they do the work and report it as messages -----------------------------------

    def _think(self, run: Run, capture_states: bool) -> None:
        """The thinker's work: Qwen's prefill and streamed decode, reported as messages."""
        trace, capture, request = run.trace, None, run.request
        try:
            if run.stop.is_set():  # stopped while queued behind another run
                return
            if capture_states:  # hooked on the thinker's turn, so it sees this run's prefill only
                capture = vlm_stage.PrefillCapture(self.models.vlm, self.models.settings.hidden_layer)
                run.attach(capture.remove)
            with trace.span("text", "VLM processor", gpu=False):
                inputs = vlm_stage.build_inputs(self.models, request.image, request.question, request.context)
            with trace.span("text", "Qwen vision tower"):
                inputs = vlm_stage.encode_image(self.models, inputs)
            prefill = trace.mark(gpu=False)

            def on_token() -> None:
                run.token_times.append(run.now())
                if len(run.token_times) == 1:
                    trace.add("text", "prefill", prefill, trace.mark(gpu=False))
                    run.post("first_token", capture=capture)

            def on_text(chunk: str) -> None:
                run.post("text", chunk=chunk, t=run.now())

            vlm_stage.stream_reasoning(self.models, inputs, on_text, run.stop, capture=capture, on_token=on_token,
                                       static_cache=run.workers.static_cache, before_next=run.pacer.wait)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message; the video may still run
            run.post("text_failed", message=str(exc))
        finally:
            if capture is not None:
                capture.remove()
            run.post("done", worker="text")

    def _render(self, run: Run, job: VideoJob) -> None:
        """The renderer's work: conditioning, denoising with previews, frames and the mp4."""
        models, preset, copier = self.models, job.preset, run.workers.copier
        previews: list[Future] = []
        mp4: Future | None = None
        try:
            if run.stop.is_set():  # stopped while queued behind another run
                return
            story = run.request.story  # a continuation writes its new frames apart, then joins them on
            mp4 = copier.submit(Mp4Writer, self._part_path(run) if story else run.request.mp4_path,
                                *((story.width, story.height) if story else job.condition[0].size), preset.fps)
            embeds, mask = self._conditioning(run, job)

            def on_preview(step: int, rgb: torch.Tensor) -> None:
                ready = run.workers.host.ready_marker()  # the decode is queued; the copy waits for it elsewhere
                previews.append(copier.submit(self._post_preview, run, rgb, ready, step, preset))

            condition = job.prepared.result() if job.prepared is not None else self._prepare(run, job.condition)
            frames = video_stage.render(models, condition, preset.num_frames, preset.fps, run.request.seed, embeds,
                                        mask, run.stop, on_preview=on_preview, trace=run.trace,
                                        graphs=self._video_graphs, attach=run.attach)
            for preview in previews:
                preview.result()
            added = self._write_mp4(run, job, frames, mp4.result())
            mp4 = None
            run.post("video_done", t=run.now(), num_frames=added + (story.num_frames if story else 0),
                     segment_frames=added, fps=preset.fps)
            self._keep_tail(run, job, frames)
        except video_stage.Stopped:
            pass
        except torch.OutOfMemoryError:
            run.post("out_of_memory")
        except Exception as exc:  # noqa: BLE001 - the text stays; the page offers a video-only retry
            run.post("video_failed", message=str(exc))
        finally:
            for preview in previews:
                preview.exception()
            if mp4 is not None and mp4.exception() is None:  # no video after all: no file either
                mp4.result().abort()
            run.post("done", worker="video")

    def _conditioning(self, run: Run, job: VideoJob) -> tuple[torch.Tensor, torch.Tensor]:
        """What the video is conditioned on: T5 of the prediction line, or the bridge of DINOv2's
        tokens and the prefill's states (of one forward pass, for a video-only retry)."""
        models, trace = self.models, run.trace
        if job.prompt is not None:
            with trace.span("video", "T5"):
                return video_stage.text_conditioning(models, job.prompt)
        if job.states is not None and job.states.states is not None:
            states = job.states.states_here()
        else:
            with trace.span("video", "VLM states"):
                states = vlm_stage.prefill_states(models, vlm_stage.build_inputs(models, job.image, job.question,
                                                                                 job.context))
        early = job.patch_tokens
        patch_tokens = early.result() if early is not None and early.exception() is None \
            else self._see(run, job.image)  # read now: not begun early, or it failed (read again)
        with trace.span("video", "bridge"):
            return video_stage.fused_conditioning(models, patch_tokens, states)

    def _write_mp4(self, run: Run, job: VideoJob, frames: torch.Tensor, writer: Mp4Writer) -> int:
        """The mp4 (its ffmpeg started while the video denoised); the frames' JPEGs beside it if asked
        -> the frames this segment added.

        Continuing a story, the clip's first frames are the story's own last ones: only the frames
        after them are encoded (at the story's size), and joined to the story's mp4 without
        re-encoding it (`media.join_mp4`)."""
        request = run.request
        with run.trace.span("host", "mp4", gpu=False):
            started = time.perf_counter()
            encoding = run.workers.copier.submit(self._post_frames, run, frames) if request.frame_events else None
            rendered = frames.numpy()
            new = rendered[len(job.condition):] if request.story else rendered
            writer.write(fitted(new, writer.size))
            if request.story:
                join_mp4([request.story.video, writer.path], request.mp4_path)
                writer.path.unlink()
            run.seconds["mp4"] = time.perf_counter() - started
            if encoding is not None:
                encoding.result()
        return len(new)

    @staticmethod
    def _keep_tail(run: Run, job: VideoJob, frames: torch.Tensor) -> None:
        """The last frames, lossless, for a continuation: after the mp4 is announced, off its path
        (the run's record, written at its end, follows them). Without them the story cannot go on,
        but the run stands."""
        with run.trace.span("host", "last frames", gpu=False):
            try:
                story_stage.save_tail(run.request.mp4_path, frames.numpy(), job.preset.condition_frames)
            except (OSError, RuntimeError) as exc:
                log.warning("could not keep the last frames beside %s: %r", run.request.mp4_path, exc)

    @staticmethod
    def _part_path(run: Run) -> Path:
        return run.request.mp4_path.with_name(run.request.mp4_path.stem + "-part.mp4")

    def _prepare(self, run: Run, frames: tuple) -> tuple:
        """LTX's condition as its authors prepare an image, frame by frame (blur, one H.264 frame): host
        work. A story's 9 or 17 frames are prepared side by side (torch and libx264 let go of the
        GIL): one by one, 17 frames at `high` outlast Qwen's prefill, which they run beside."""
        crf = self.models.settings.sampling.condition_crf
        with run.trace.span("host", "condition image", gpu=False):
            if len(frames) == 1:
                return (video_stage.prepare_condition(frames[0], crf),)
            with ThreadPoolExecutor(min(len(frames), os.cpu_count() or 1), "foresight-prepare") as pool:
                return tuple(pool.map(lambda frame: video_stage.prepare_condition(frame, crf), frames))

    def _see(self, run: Run, image) -> torch.Tensor:
        """DINOv2's patch tokens of the image: it needs no prefill, so with `vision_early` it runs beside it."""
        with run.trace.span("video", "DINOv2"):
            return video_stage.vision_tokens(self.models, image)

    def _post_preview(self, run: Run, rgb: torch.Tensor, ready, step: int, preset: Preset) -> None:
        with run.trace.span("host", f"preview {step} to JPEG", gpu=False):
            path = run.jpeg(run.workers.host.to_host(rgb, ready).numpy(), f"{preset.name}-step{step}")
        run.post("preview", t=run.now(), frame_index=preset.num_frames - 1, total_frames=preset.num_frames,
                 kind="preview", step=step, num_steps=self.models.settings.sampling.num_steps, path=path)

    @staticmethod
    def _post_frames(run: Run, frames: torch.Tensor) -> None:
        for index, rgb in enumerate(frames.numpy()):
            run.post("frame", t=run.now(), frame_index=index, total_frames=len(frames), kind="frame", step=None,
                     path=run.jpeg(rgb, f"frame{index:03d}"))

    def _choose_mode(self, requested: str | None) -> tuple[str, str]:
        available = self.models.modes
        if requested in (None, "", "auto"):
            mode = available[0]
            return mode, self.models.bridge_note if mode == "text" else ""
        if requested not in ("fused", "text"):
            raise InputError(f"Unknown mode {requested!r}; choose fused or text.")
        if requested in available:
            return requested, ""
        fallback = available[0]
        why = self.models.bridge_note if requested == "fused" else "T5 is not loaded"
        return fallback, f"{requested} mode is unavailable ({why}); ran {fallback} mode instead"
