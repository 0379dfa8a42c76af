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

The two workers (long-lived threads: CUDA graphs of a compiled decode step are recorded per
thread) only do work and report what happened as messages; every decision (when the video
starts, pacing, the out-of-memory fallback, Stop, failures) is taken in `_conduct`. Closing the
generator (Stop, a dropped client) stops both workers at their next token or denoising step.
"""

from __future__ import annotations

import os
import queue
import random
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import PRESETS, SMALLER_PRESET, Preset
from foresight.events import event
from foresight.inputs import InputError, check_question, fit_size, load_image, video_view
from foresight.media import Mp4Writer, jpeg_base64
from foresight.scheduling import HostCopier, Pacer, use_stream, worker_streams
from foresight.trace import Trace

FALLBACK_PREDICTION = "The scene continues naturally."
GRAPH_ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16))  # the shapes the warm-up captures, per preset
PREDICTION_MAX_CHARS = 320  # a prediction (30 words, vlm.PREDICTION_WORDS) is cut here


@dataclass
class Message:
    """What a worker reports to the conductor."""

    kind: str  # first_token, text, text_failed, preview, frame, video_done, out_of_memory, video_failed, done
    data: dict = field(default_factory=dict)


@dataclass
class VideoJob:
    """One rendering: LTX's condition image fitted to `preset`, and what conditions the video."""

    preset: Preset
    condition_image: object  # PIL image fitted to the preset: the clip's first frame
    prepared: Future | None  # the condition image as LTX's authors prepare it, begun early (None: prepare it)
    image: object  # PIL image as loaded: what DINOv2 and Qwen see
    question: str = ""
    prompt: str | None = None  # text mode: the prediction line
    states: vlm_stage.PrefillCapture | None = None  # fused mode: the prefill's states (None: compute them)
    patch_tokens: Future | None = None  # fused mode: DINOv2's tokens of `image`, begun early (None: read them)


class Run:
    """One run's shared state: its clock and trace, the message queue, Stop, and the pacer."""

    def __init__(self, stop: threading.Event, cuda: bool):
        self.trace = Trace(cuda=cuda)
        self.stop = stop
        self.pacer = Pacer()
        self.messages: queue.Queue[Message] = queue.Queue()
        self.token_times: list[float] = []
        self.seconds = {"jpeg": 0.0, "mp4": 0.0}  # the pipeline's own encoding work
        self._held: list[Message] = []

    def now(self) -> float:
        return self.trace.now()

    def post(self, what: str, **data) -> None:
        self.messages.put(Message(what, data))

    def next_message(self) -> Message:
        """The next message; text waiting behind text comes merged, so a consumer that falls behind
        (a busy web server: ~2 ms a Gradio update) gets fewer, longer chunks instead of a backlog."""
        message = self._held.pop() if self._held else self.messages.get()
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

    def jpeg(self, rgb) -> str:
        start = time.perf_counter()
        data = jpeg_base64(rgb)
        self.seconds["jpeg"] += time.perf_counter() - start
        return data


def prediction_from(text: str) -> str:
    """What `text` mode conditions the video on: the first line ('Next: …'), else the text so far."""
    return (vlm_stage.prediction_line(text + "\n") or text.strip())[:PREDICTION_MAX_CHARS] or FALLBACK_PREDICTION


class ForesightPipeline:
    def __init__(self, models):
        self.models = models
        self._workers_lock = threading.Lock()
        self._workers_pid: int | None = None
        if models.settings.compile_video:
            video_stage.compile_video(models.video_pipeline)
        self._video_graphs = video_stage.VideoGraphs(models.video_pipeline, models.settings.device.startswith("cuda")) \
            if models.settings.video_graphs else None

    def _workers(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor, ThreadPoolExecutor]:
        """(thinker, renderer, copier) of this process, made on first use.

        Per process: a forked child (ZeroGPU runs each GPU call in one) inherits the executors
        but not their threads, and would wait for them forever.
        """
        with self._workers_lock:
            if self._workers_pid != os.getpid():
                settings = self.models.settings
                text_stream, video_stream = worker_streams(settings.schedule, settings.device)
                self._thinker = ThreadPoolExecutor(1, "foresight-think", initializer=use_stream,
                                                   initargs=(text_stream,))
                self._renderer = ThreadPoolExecutor(1, "foresight-render", initializer=use_stream,
                                                    initargs=(video_stream,))
                self._copier = ThreadPoolExecutor(1, "foresight-copy")
                self._host = HostCopier(settings.device)
                self._static_cache = vlm_stage.ReusedStaticCache(settings.static_cache_len)  # the thinker's
                self._workers_pid = os.getpid()
            return self._thinker, self._renderer, self._copier

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
        _, renderer, _ = self._workers()
        renderer.submit(video_stage.capture_graphs, self.models, self._video_graphs, sizes,
                        video_stage.warm_conditionings(self.models)).result()
        log(f"[foresight] captured {self._video_graphs.captured} video graphs ({len(sizes)} sizes) in "
            f"{time.perf_counter() - started:.1f}s")

    def __call__(self, image, prompt: str = "", preset: str = "default", mode: str | None = None,
                 seed: int | None = None, out_dir: str | Path = "outputs", stop: threading.Event | None = None,
                 reasoning: str | None = None, video: bool = True, frame_events: bool = False,
                 video_name: str | None = None) -> Iterator[dict]:
        """Yield the run's events.

        `reasoning`: render the video again for this existing text, without the VLM stream.
        `video=False`: the reasoning alone (the benchmark's "text alone").
        `frame_events`: also a `video_frame` event (kind `frame`, a JPEG) for every final frame;
        off by default, as the page shows the mp4 and the CLI writes it.
        `video_name`: the mp4's file name in `out_dir` (without .mp4); default the run id.
        """
        run = Run(stop or threading.Event(), cuda=self.models.settings.device.startswith("cuda"))
        notes: list[str] = []
        try:
            with run.trace.span("text", "load image", gpu=False):
                loaded = load_image(image, notes)
            prompt = check_question(prompt)
            if preset not in PRESETS:
                raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
            mode, note = self._choose_mode(mode)
        except InputError as exc:
            yield event("error", run.now(), stage="input", message=str(exc), recoverable=True)
            return
        seed = random.randrange(2**31) if seed is None else int(seed)
        condition_image = video_view(loaded, PRESETS[preset], notes)
        run_id = uuid.uuid4().hex[:12]
        yield event("thinking_start", run.now(), run_id=run_id, preset=preset, mode=mode,
                    width=condition_image.width, height=condition_image.height,
                    num_frames=PRESETS[preset].num_frames, fps=PRESETS[preset].fps, seed=seed,
                    num_steps=self.models.settings.sampling.num_steps, note=note, input_notes=notes)
        yield from self._conduct(run, loaded, condition_image, prompt, preset, mode, seed,
                                 Path(out_dir) / f"{video_name or run_id}.mp4", reasoning, video, frame_events)

    def _conduct(self, run: Run, image, condition_image, prompt: str, preset: str, mode: str, seed: int,
                 mp4_path: Path, reasoning: str | None, video: bool, frame_events: bool) -> Iterator[dict]:
        """The timeline of one run; the only place that decides what happens next."""
        settings = self.models.settings
        thinker, renderer, _ = self._workers()
        jobs: list[Future] = []
        text, prediction, video_url = "", None, None
        first: dict[str, float | None] = {"ttft": None, "first_frame": None, "video_ready": None}
        rendering: VideoJob | None = None
        video_start = None
        patch_tokens = None
        # The condition image's preparation needs nothing but the image: it runs on the copier while Qwen prefills.
        prepared = self._copier.submit(self._prepare, run, condition_image) if video else None

        def start_video(job: VideoJob) -> None:
            nonlocal rendering, video_start
            rendering, video_start = job, video_start or round(run.now(), 4)
            run.pacer.hold(settings.text_pace)  # 3. the video gets the GPU; the text reads at a human pace
            jobs.append(renderer.submit(self._render, run, job, seed, mp4_path, frame_events))

        def video_job(**conditioning) -> VideoJob:
            return VideoJob(PRESETS[preset], condition_image, prepared, image, prompt, patch_tokens=patch_tokens,
                            **conditioning)

        def text_job(line: str) -> VideoJob:
            return video_job(prompt=line)

        try:
            if reasoning is None:  # 1. the prefill, then 2. the text streams
                jobs.append(thinker.submit(self._think, run, image, prompt, mode == "fused" and video))
                if mode == "fused" and video and settings.vision_early:  # DINOv2 beside the prefill
                    patch_tokens = renderer.submit(self._see, run, image)
            else:  # a video-only retry: the text exists already
                text = reasoning
                if video:
                    prediction = prediction_from(reasoning) if mode == "text" else None
                    start_video(text_job(prediction) if mode == "text" else video_job())
            finished = 0
            while finished < len(jobs):
                message = run.next_message()
                kind, data = message.kind, message.data
                if kind == "done":
                    finished += 1
                    if data["worker"] == "text" and mode == "text" and video and rendering is None \
                            and not run.stop.is_set():  # the text ended before a line did: use what there is
                        prediction = prediction_from(text)
                        start_video(text_job(prediction))
                elif kind == "first_token":
                    if data["capture"] is not None:  # fused: the prefill's states exist, the video can start
                        start_video(video_job(states=data["capture"]))
                elif kind == "text":
                    text += data["chunk"]
                    first["ttft"] = first["ttft"] or round(data["t"], 4)
                    yield event("text_chunk", data["t"], content=data["chunk"])
                    if mode == "text" and video and rendering is None:  # text: the video waits for the prediction
                        if vlm_stage.prediction_line(text) is not None \
                                or len(run.token_times) >= settings.prediction_max_tokens:
                            prediction = prediction_from(text)
                            start_video(text_job(prediction))
                elif kind == "text_failed":
                    yield event("error", run.now(), stage="text", recoverable=True,
                                message=f"The reasoning stopped early: {data['message']}")
                elif kind in ("preview", "frame"):
                    first["first_frame"] = first["first_frame"] or round(data["t"], 4)
                    yield event("video_frame", data["t"], **{k: v for k, v in data.items() if k != "t"})
                elif kind == "video_done":  # 5. the rest of the text runs at full speed
                    run.pacer.release()
                    first["video_ready"], video_url = round(data["t"], 4), str(mp4_path)
                    yield event("video_complete", data["t"], video_url=video_url, num_frames=data["num_frames"],
                                fps=data["fps"])
                elif kind == "out_of_memory":
                    smaller = SMALLER_PRESET.get(rendering.preset.name)
                    if smaller is None:
                        run.pacer.release()
                        yield event("error", run.now(), stage="video", recoverable=True,
                                    message="The video could not be made: out of GPU memory even at the "
                                            f"{rendering.preset.name} preset.")
                    else:
                        torch.cuda.empty_cache()
                        yield event("error", run.now(), stage="video", recoverable=True, retry_preset=smaller,
                                    message=f"Out of GPU memory at the {rendering.preset.name} preset; "
                                            f"retrying at {smaller}.")
                        start_video(replace(rendering, preset=PRESETS[smaller],
                                            condition_image=video_view(image, PRESETS[smaller]), prepared=None))
                elif kind == "video_failed":
                    run.pacer.release()
                    yield event("error", run.now(), stage="video", recoverable=True,
                                message=f"The video could not be made: {data['message']}")
            yield event("thinking_complete", run.now(), text=text, video_url=video_url, stopped=run.stop.is_set(),
                        mode=mode, seed=seed, prediction=prediction,
                        preset=rendering.preset.name if rendering else preset, **first,
                        tokens=len(run.token_times), token_times=[round(t, 4) for t in run.token_times],
                        video_start=video_start, overhead_s={k: round(v, 4) for k, v in run.seconds.items()},
                        spans=run.trace.spans())
        finally:  # also on Stop / a closed client: end both workers at their next step
            run.stop.set()
            run.pacer.release()
            for job in jobs:
                job.exception()  # waits; the workers report their own failures as messages
            for early in (patch_tokens, prepared):  # work begun early: none left after the run
                if early is not None and not early.cancel():
                    early.exception()

    def _think(self, run: Run, image, prompt: str, capture_states: bool) -> None:
        """The thinker's work: Qwen's prefill and streamed decode, reported as messages."""
        trace, capture = run.trace, None
        try:
            if run.stop.is_set():  # stopped while queued behind another run
                return
            if capture_states:  # hooked on the thinker's turn, so it sees this run's prefill only
                capture = vlm_stage.PrefillCapture(self.models.vlm, self.models.settings.hidden_layer)
            with trace.span("text", "VLM processor", gpu=False):
                inputs = vlm_stage.build_inputs(self.models, image, prompt)
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
                                       static_cache=self._static_cache, before_next=run.pacer.wait)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message; the video may still run
            run.post("text_failed", message=str(exc))
        finally:
            if capture is not None:
                capture.remove()
            run.post("done", worker="text")

    def _render(self, run: Run, job: VideoJob, seed: int, mp4_path: Path, frame_events: bool) -> None:
        """The renderer's work: conditioning, denoising with previews, frames and the mp4."""
        models, trace, preset = self.models, run.trace, job.preset
        previews: list[Future] = []
        mp4: Future | None = None
        try:
            if run.stop.is_set():  # stopped while queued behind another run
                return
            mp4 = self._copier.submit(Mp4Writer, mp4_path, job.condition_image.width, job.condition_image.height,
                                      preset.fps)
            if job.prompt is not None:
                with trace.span("video", "T5"):
                    embeds, mask = video_stage.text_conditioning(models, job.prompt)
            else:
                if job.states is not None and job.states.states is not None:
                    states = job.states.states_here()
                else:  # a video-only retry: one forward pass over the prompt
                    with trace.span("video", "VLM states"):
                        states = vlm_stage.prefill_states(models, vlm_stage.build_inputs(models, job.image,
                                                                                         job.question))
                early = job.patch_tokens
                patch_tokens = early.result() if early is not None and early.exception() is None \
                    else self._see(run, job.image)  # read now: not begun early, or it failed (read again)
                with trace.span("video", "bridge"):
                    embeds, mask = video_stage.fused_conditioning(models, patch_tokens, states)
            num_steps = models.settings.sampling.num_steps

            def on_preview(step: int, rgb: torch.Tensor) -> None:
                ready = self._host.ready_marker()  # the decode is queued; the copy waits for it elsewhere
                previews.append(self._copier.submit(self._post_preview, run, rgb, ready, step, num_steps, preset))

            condition = job.prepared.result() if job.prepared is not None else self._prepare(run, job.condition_image)
            frames = video_stage.render(models, condition, preset.num_frames, preset.fps, seed, embeds, mask,
                                        run.stop, on_preview=on_preview, trace=trace, graphs=self._video_graphs)
            for preview in previews:
                preview.result()
            with trace.span("host", "mp4", gpu=False):
                started = time.perf_counter()
                if frame_events:  # the frames' JPEGs beside the mp4
                    encoding = self._copier.submit(self._post_frames, run, frames)
                mp4.result().write(frames.numpy())
                mp4 = None
                run.seconds["mp4"] = time.perf_counter() - started
                if frame_events:
                    encoding.result()
            run.post("video_done", t=run.now(), num_frames=len(frames), fps=preset.fps)
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

    def _prepare(self, run: Run, image):
        """LTX's condition image as its authors prepare it (blur, one H.264 frame): host work."""
        with run.trace.span("host", "condition image", gpu=False):
            return video_stage.prepare_condition(image, self.models.settings.sampling.condition_crf)

    def _see(self, run: Run, image) -> torch.Tensor:
        """DINOv2's patch tokens of the image: it needs no prefill, so with `vision_early` it runs beside it."""
        with run.trace.span("video", "DINOv2"):
            return video_stage.vision_tokens(self.models, image)

    def _post_preview(self, run: Run, rgb: torch.Tensor, ready, step: int, num_steps: int, preset: Preset) -> None:
        with run.trace.span("host", f"preview {step} to JPEG", gpu=False):
            data = run.jpeg(self._host.to_host(rgb, ready).numpy())
        run.post("preview", t=run.now(), frame_index=preset.num_frames - 1, total_frames=preset.num_frames,
                 kind="preview", step=step, num_steps=num_steps, data=data)

    @staticmethod
    def _post_frames(run: Run, frames: torch.Tensor) -> None:
        for index, rgb in enumerate(frames.numpy()):
            run.post("frame", t=run.now(), frame_index=index, total_frames=len(frames), kind="frame", step=None,
                     data=run.jpeg(rgb))

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
