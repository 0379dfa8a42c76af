"""What the pipeline's workers do in a run, and the run they do it for.

Each job only works and reports what happened as messages (`Run.post`); what happens next is
decided by the pipeline, which reads them. The thinker streams Qwen's reasoning (`think`); the
renderer conditions and denoises LTX's clip, with previews, and has it written (`render`); the
copier does the host's work beside them: the condition image prepared as LTX's authors prepare it
(`prepare`), previews and the mp4 written through the run's `story.RunFiles`.

Messages: first_token, text, text_failed, preview, frame, video_done, out_of_memory, video_failed,
and `done` (posted by the runtime when a job ends, with its role).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import Preset
from foresight.runtime import Shift
from foresight.scheduling import Pacer
from foresight.story import RunFiles
from foresight.trace import Trace

log = logging.getLogger("foresight")


@dataclass(frozen=True)
class RunRequest:
    """What a run was asked, made once in the pipeline's `__call__` and handed down."""

    image: object  # PIL image as loaded, or a story's last frame: what Qwen and DINOv2 see
    frames: tuple  # what the clip begins with, as PIL images: the image, or the story's last frames
    condition: tuple  # `frames` as LTX's condition, fitted to the preset (`pipeline.condition_frames`)
    question: str
    preset: str
    mode: str  # the mode that runs: fused or text
    seed: int
    reasoning: str | None = None  # a video-only retry: the text exists already
    video: bool = True
    frame_events: bool = False
    context: str = ""  # said to Qwen before the question: what the story's last segment foresaw
    notes: tuple[str, ...] = ()  # what was done to the input, in words
    mode_note: str = ""  # why the mode asked for did not run, in words
    passes: int = 1  # LTX's passes: 1, or the authors' 2 (`passes.py`)


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
    """One run's state: its request and files, its clock and trace, its shift on the workers (Stop,
    the deadline, the messages), the pacer, and what the pipeline knows so far."""

    def __init__(self, request: RunRequest, files: RunFiles, stop, trace: Trace):
        self.request, self.files, self.stop, self.trace = request, files, stop, trace
        self.shift: Shift | None = None  # set once the run is on the workers
        self.pacer = Pacer()
        self.token_times: list[float] = []
        self.seconds = {"jpeg": 0.0, "mp4": 0.0}  # the pipeline's own encoding work
        self.early: dict[str, Future] = {}  # work begun before it is needed: "prepared", "patch_tokens"
        self.text, self.prediction, self.video_url = "", None, None
        self.frames = {"story": 0, "new": 0}  # the mp4's frames, and this segment's share of them
        self.moments: dict[str, float | None] = {"ttft": None, "first_frame": None, "video_ready": None}
        self.conditioning: dict | None = None  # what the video waits for: {"states": …}, {"prompt": …}, {}
        self.rendering: VideoJob | None = None  # the video's job, once it has started
        self.renderers = 0  # renderer jobs not yet ended (out of memory starts another)
        self.video_start: float | None = None

    def now(self) -> float:
        return self.trace.now()

    def post(self, what: str, **data) -> None:
        self.shift.post(what, **data)

    @property
    def kept(self) -> dict:
        """What the workers keep for their threads' lifetime: the thinker's static cache, the host copier."""
        return self.shift.workers.kept

    def jpeg(self, rgb, suffix: str) -> str:
        """`rgb` as a JPEG beside the mp4, written once -> its path."""
        started = time.perf_counter()
        path = self.files.jpeg(rgb, suffix)
        self.seconds["jpeg"] += time.perf_counter() - started
        return path


def think(models, run: Run, capture_states: bool) -> None:
    """The thinker's job: Qwen's prefill and streamed decode, reported as messages."""
    trace, capture, request = run.trace, None, run.request
    try:
        if run.stop.is_set():  # stopped while queued behind another run
            return
        if capture_states:  # hooked on the thinker's turn, so it sees this run's prefill only
            capture = vlm_stage.PrefillCapture(models.vlm, models.settings.hidden_layer)
            run.shift.attach(capture.remove)
        with trace.span("text", "VLM processor", gpu=False):
            inputs = vlm_stage.build_inputs(models, request.image, request.question, request.context)
        with trace.span("text", "Qwen vision tower"):
            inputs = vlm_stage.encode_image(models, inputs)
        prefill = trace.mark(gpu=False)

        def on_token() -> None:
            run.token_times.append(run.now())
            if len(run.token_times) == 1:
                trace.add("text", "prefill", prefill, trace.mark(gpu=False))
                run.post("first_token", capture=capture)

        def on_text(chunk: str) -> None:
            run.post("text", chunk=chunk, t=run.now())

        vlm_stage.stream_reasoning(models, inputs, on_text, run.stop, capture=capture, on_token=on_token,
                                   static_cache=run.kept["static_cache"], before_next=run.pacer.wait)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a message; the video may still run
        run.post("text_failed", message=str(exc))
    finally:
        if capture is not None:
            capture.remove()


def render(models, run: Run, job: VideoJob, graphs) -> None:
    """The renderer's job: conditioning, denoising with previews, frames and the mp4, its last frames."""
    preset, copier, files = job.preset, run.shift.workers["copier"], run.files
    previews: list[Future] = []
    mp4: Future | None = None
    try:
        if run.stop.is_set():  # stopped while queued behind another run
            return
        mp4 = copier.submit(files.start_video, job.condition[0].size, preset.fps)  # ffmpeg starts meanwhile
        embeds, mask = conditioning(models, run, job)

        def on_preview(number: int, step: int, rgb: torch.Tensor) -> None:
            ready = run.kept["host"].ready_marker()  # the decode is queued; the copy waits for it elsewhere
            previews.append(copier.submit(post_preview, models, run, rgb, ready, (number, step), preset))

        condition = job.prepared.result() if job.prepared is not None else prepare(models, run, job.condition)
        frames = video_stage.render(models, condition, preset.num_frames, preset.fps, run.request.seed, embeds, mask,
                                    run.stop, on_preview=on_preview, trace=run.trace, graphs=graphs,
                                    attach=run.shift.attach, passes=run.request.passes)
        for preview in previews:
            preview.result()
        writer, mp4 = mp4.result(), None
        num_frames, added = write_video(run, job, frames, writer)
        run.post("video_done", t=run.now(), num_frames=num_frames, segment_frames=added, fps=preset.fps)
        keep_tail(run, job, frames)
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


def conditioning(models, run: Run, job: VideoJob) -> tuple[torch.Tensor, torch.Tensor]:
    """What the video is conditioned on: T5 of the prediction line, or the bridge of DINOv2's
    tokens and the prefill's states (of one forward pass, for a video-only retry)."""
    trace = run.trace
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
        else see(models, run, job.image)  # read now: not begun early, or it failed (read again)
    with trace.span("video", "bridge"):
        return video_stage.fused_conditioning(models, patch_tokens, states)


def write_video(run: Run, job: VideoJob, frames: torch.Tensor, writer) -> tuple[int, int]:
    """The mp4 (its ffmpeg started while the video denoised), through the run's files; the frames'
    JPEGs beside it if asked -> (the mp4's frames, the frames this segment added)."""
    with run.trace.span("host", "mp4", gpu=False):
        started = time.perf_counter()
        encoding = run.shift.workers["copier"].submit(post_frames, run, frames) \
            if run.request.frame_events else None
        counts = run.files.finish_video(writer, frames.numpy(), overlap=len(job.condition))
        run.seconds["mp4"] = time.perf_counter() - started
        if encoding is not None:
            encoding.result()
    return counts


def keep_tail(run: Run, job: VideoJob, frames: torch.Tensor) -> None:
    """The last frames, lossless, for a continuation: after the mp4 is announced, off its path (the
    run's record, written at its end, follows them). Without them the story cannot go on, but the
    run stands."""
    with run.trace.span("host", "last frames", gpu=False):
        try:
            run.files.keep_tail(frames.numpy(), job.preset.condition_frames)
        except (OSError, RuntimeError) as exc:
            log.warning("could not keep the last frames beside %s: %r", run.files.video, exc)


def prepare(models, run: Run, frames: tuple) -> tuple:
    """LTX's condition as its authors prepare an image, frame by frame (blur, one H.264 frame): host
    work. A story's 9 or 17 frames are prepared side by side (torch and libx264 let go of the
    GIL): one by one, 17 frames at `high` outlast Qwen's prefill, which they run beside."""
    crf = models.settings.sampling.condition_crf
    with run.trace.span("host", "condition image", gpu=False):
        if len(frames) == 1:
            return (video_stage.prepare_condition(frames[0], crf),)
        with ThreadPoolExecutor(min(len(frames), os.cpu_count() or 1), "foresight-prepare") as pool:
            return tuple(pool.map(lambda frame: video_stage.prepare_condition(frame, crf), frames))


def see(models, run: Run, image) -> torch.Tensor:
    """DINOv2's patch tokens of the image: it needs no prefill, so with `vision_early` it runs beside it."""
    with run.trace.span("video", "DINOv2"):
        return video_stage.vision_tokens(models, image)


def post_preview(models, run: Run, rgb: torch.Tensor, ready, at: tuple[int, int], preset: Preset) -> None:
    """A preview `at` (pass, step), as a JPEG beside the mp4 (`<name>-<preset>-step<N>.jpg`, a second
    pass's `<name>-<preset>-pass2-step<N>.jpg`), posted."""
    number, step = at
    which = "" if number == 1 else f"pass{number}-"
    with run.trace.span("host", f"{'' if number == 1 else f'pass {number} '}preview {step} to JPEG", gpu=False):
        path = run.jpeg(run.kept["host"].to_host(rgb, ready).numpy(), f"{preset.name}-{which}step{step}")
    run.post("preview", t=run.now(), frame_index=preset.num_frames - 1, total_frames=preset.num_frames,
             kind="preview", step=step, num_steps=models.settings.sampling.pass_steps(run.request.passes)[number - 1],
             path=path, **{"pass": number})


def post_frames(run: Run, frames: torch.Tensor) -> None:
    for index, rgb in enumerate(frames.numpy()):
        run.post("frame", t=run.now(), frame_index=index, total_frames=len(frames), kind="frame", step=None,
                 path=run.jpeg(rgb, f"frame{index:03d}"), **{"pass": None})
