"""ForesightPipeline: one image in, a stream of protocol events out (text and video, in parallel).

    pipe = ForesightPipeline(load_models(make_settings("tiny")))
    for ev in pipe("cat.jpg", prompt="What will the cat do?", preset="fast"):
        ...

Two long-lived worker threads feed one queue per run: the thinker (Qwen prefill, then streamed
decode) and the renderer (bridge or T5 conditioning, LTX steps with previews, frames, mp4). The
renderer starts once the prefill has produced the first token, so the first token never waits for
the video. The workers live as long as the pipeline, not one run: CUDA graphs of a compiled decode
step are recorded per thread (torch's cudagraph trees keep thread-local state), so a fresh thread
per run would record them again every time. The generator yields the queue's events as they come;
closing it (Stop, a dropped client) stops both workers at their next token or denoising step.
"""

from __future__ import annotations

import os
import queue
import random
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import PRESETS, SMALLER_PRESET
from foresight.events import event, jpeg_base64
from foresight.inputs import InputError, check_question, fit_to_preset, load_image
from foresight.scheduling import use_stream, worker_streams

FALLBACK_PREDICTION_CHARS = 200  # text mode: use this much of the text if no line break comes


@dataclass
class _Run:
    """What the two workers share during one run."""

    clock_start: float
    stop: threading.Event
    events: queue.Queue = field(default_factory=queue.Queue)
    first_token: threading.Event = field(default_factory=threading.Event)
    prediction_ready: threading.Event = field(default_factory=threading.Event)
    text_done: threading.Event = field(default_factory=threading.Event)
    text: list[str] = field(default_factory=list)
    prediction: str | None = None
    capture: vlm_stage.PrefillCapture | None = None
    token_times: list[float] = field(default_factory=list)  # when each generated token existed
    video_start: float | None = None  # when the renderer had its conditioning and began denoising
    seconds: dict[str, float] = field(default_factory=lambda: {"jpeg": 0.0, "mp4": 0.0})  # pipeline overhead
    _held: list = field(default_factory=list)  # taken from the queue while merging text: the next one out

    def now(self) -> float:
        return time.perf_counter() - self.clock_start

    def put(self, type_: str, **fields) -> None:
        self.events.put(event(type_, self.now(), **fields))

    def next_event(self) -> dict | None:
        """The next event, or None when a worker has finished (each puts one None as it ends).

        Text chunks already waiting behind a text chunk come merged into it, so a consumer that
        falls behind (a busy web server: ~2 ms a Gradio update) gets fewer, longer chunks instead
        of a backlog.
        """
        ev = self._held.pop() if self._held else self.events.get()
        while ev is not None and ev["type"] == "text_chunk":
            try:
                following = self.events.get_nowait()
            except queue.Empty:
                break
            if following is None or following["type"] != "text_chunk":
                self._held.append(following)
                break
            ev = {**ev, "content": ev["content"] + following["content"], "t": following["t"]}
        return ev

    def jpeg(self, rgb) -> str:
        start = time.perf_counter()
        data = jpeg_base64(rgb)
        self.seconds["jpeg"] += time.perf_counter() - start
        return data

    def wait(self, flag: threading.Event) -> bool:
        """Wait for `flag` unless the text stage ends first or Stop is pressed."""
        while not flag.wait(0.01):
            if self.stop.is_set() or self.text_done.is_set():
                return flag.is_set()
        return True


class ForesightPipeline:
    def __init__(self, models):
        self.models = models
        self._workers_lock = threading.Lock()
        self._workers_pid: int | None = None

    def _workers(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(thinker, renderer) of this process, made on first use.

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
                self._static_cache = vlm_stage.ReusedStaticCache(settings.static_cache_len)  # the thinker's
                self._workers_pid = os.getpid()
            return self._thinker, self._renderer

    def default_mode(self) -> str:
        return self.models.modes[0]

    def warm_up(self, image, log: Callable[[str], None] = print) -> None:
        """One fast run before the first user: kernels, allocators, and the static decode's compile.

        If the static decode fails here (a compiler problem on this machine), the pipeline falls
        back to the dynamic decode rather than fail every user's run.
        """
        with tempfile.TemporaryDirectory() as scratch:
            events = list(self(image, preset="fast", seed=0, out_dir=scratch))
            failed = [ev["message"] for ev in events if ev["type"] == "error" and ev["stage"] == "text"]
            if failed and self.models.settings.decode == "static":
                log(f"[foresight] the static-cache decode failed ({failed[0]}); using the dynamic decode")
                self.models = replace(self.models, settings=replace(self.models.settings, decode="dynamic"))
                list(self(image, preset="fast", seed=0, out_dir=scratch))

    def __call__(self, image, prompt: str = "", preset: str = "default", mode: str | None = None,
                 seed: int | None = None, out_dir: str | Path = "outputs", stop: threading.Event | None = None,
                 reasoning: str | None = None, video: bool = True) -> Iterator[dict]:
        """Yield the run's events.

        `reasoning`: re-render the video for this existing text, without the VLM stream.
        `video=False`: the reasoning alone, no video (the benchmark's "text alone").
        """
        run = _Run(time.perf_counter(), stop or threading.Event())
        try:
            picture = load_image(image)
            prompt = check_question(prompt)
            if preset not in PRESETS:
                raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
            mode, note = self._choose_mode(mode)
        except InputError as exc:
            yield event("error", run.now(), stage="input", message=str(exc), recoverable=True)
            return
        seed = random.randrange(2**31) if seed is None else int(seed)
        frame = fit_to_preset(picture, PRESETS[preset])
        run_id = uuid.uuid4().hex[:12]
        spec = PRESETS[preset]
        yield event("thinking_start", run.now(), run_id=run_id, preset=preset, mode=mode,
                    width=frame.width, height=frame.height, num_frames=spec.num_frames, fps=spec.fps, seed=seed,
                    note=note)

        thinker, renderer = self._workers()
        if reasoning is None:
            work = [thinker.submit(self._think, run, frame, prompt, mode == "fused" and video)]
        else:
            run.text.append(reasoning)
            run.prediction = vlm_stage.prediction_line(reasoning + "\n")
            work = []
            for flag in (run.first_token, run.prediction_ready, run.text_done):
                flag.set()
        if video:
            work.append(renderer.submit(self._render, run, frame, prompt, preset, mode, seed,
                                        Path(out_dir) / f"{run_id}.mp4"))
        timings: dict[str, float | None] = {"ttft": None, "first_frame": None, "video_ready": None}
        video_url = None
        try:
            for job in work:  # runs in the worker as it ends (or at once, if it has)
                job.add_done_callback(lambda job: run.events.put(None))
            running = len(work)
            while running:
                ev = run.next_event()
                if ev is None:
                    running -= 1
                    continue
                if ev["type"] == "text_chunk" and timings["ttft"] is None:
                    timings["ttft"] = ev["t"]
                elif ev["type"] == "video_frame" and timings["first_frame"] is None:
                    timings["first_frame"] = ev["t"]
                elif ev["type"] == "video_complete":
                    timings["video_ready"], video_url = ev["t"], ev["video_url"]
                yield ev
            yield event("thinking_complete", run.now(), text="".join(run.text), video_url=video_url,
                        stopped=run.stop.is_set(), mode=mode, seed=seed, **timings, tokens=len(run.token_times),
                        token_times=[round(t, 4) for t in run.token_times], video_start=run.video_start,
                        overhead_s={k: round(v, 4) for k, v in run.seconds.items()})
        finally:  # also on Stop / a closed client: end both workers at their next step
            run.stop.set()
            wait(work)
            if run.capture is not None:
                run.capture.remove()

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

    def _think(self, run: _Run, frame, prompt: str, capture_states: bool) -> None:
        def on_token() -> None:
            run.token_times.append(run.now())
            run.first_token.set()

        def on_text(chunk: str) -> None:
            run.text.append(chunk)
            run.put("text_chunk", content=chunk)
            if not run.prediction_ready.is_set():
                line = vlm_stage.prediction_line("".join(run.text))
                if line is not None or sum(map(len, run.text)) >= FALLBACK_PREDICTION_CHARS:
                    self._set_prediction(run, line)

        try:
            if run.stop.is_set():  # stopped while queued behind another run
                return
            if capture_states:  # hooked here, on the thinker's turn, so it sees this run's prefill only
                run.capture = vlm_stage.PrefillCapture(self.models.vlm, self.models.settings.hidden_layer)
            inputs = vlm_stage.build_inputs(self.models, frame, prompt)
            vlm_stage.stream_reasoning(self.models, inputs, on_text, run.stop, capture=run.capture, on_token=on_token,
                                       static_cache=self._static_cache)
        except Exception as exc:  # noqa: BLE001 - any failure becomes an event; the video may still run
            run.put("error", stage="text", message=f"The reasoning stopped early: {exc}", recoverable=True)
        finally:
            if not run.prediction_ready.is_set():
                self._set_prediction(run, None)
            run.text_done.set()

    @staticmethod
    def _set_prediction(run: _Run, line: str | None) -> None:
        text = "".join(run.text).strip()
        run.prediction = line or text[:FALLBACK_PREDICTION_CHARS] or "The scene continues naturally."
        run.prediction_ready.set()

    def _render(self, run: _Run, frame, prompt: str, preset: str, mode: str, seed: int, mp4_path: Path) -> None:
        models = self.models
        try:
            if run.stop.is_set():  # stopped while queued behind another run
                return
            if mode == "fused":
                if not run.wait(run.first_token):  # the prefill has run: its states are captured
                    if run.stop.is_set():
                        return
                states = run.capture.states_here() if run.capture and run.capture.states is not None \
                    else vlm_stage.prefill_states(models, vlm_stage.build_inputs(models, frame, prompt))
                embeds, mask = video_stage.fused_conditioning(models, frame, states)
                conditioning = dict(prompt_embeds=embeds, prompt_attention_mask=mask)
            else:
                run.wait(run.prediction_ready)
                if run.stop.is_set():
                    return
                conditioning = dict(prompt=run.prediction)
            rendered = self._render_with_retry(run, frame, preset, seed, conditioning)
            if rendered is None:
                return
            frames, fps = rendered
            total = len(frames)
            with ThreadPoolExecutor(1, thread_name_prefix="foresight-mp4") as encoder:
                writing = encoder.submit(self._write_mp4, run, frames, fps, mp4_path)  # beside the frame events
                for index, rgb in enumerate(frames):
                    run.put("video_frame", frame_index=index, total_frames=total, kind="frame", step=None,
                            data=run.jpeg(rgb))
                writing.result()
            run.put("video_complete", video_url=str(mp4_path), num_frames=total, fps=fps)
        except Exception as exc:  # noqa: BLE001 - the text stays; the page offers a video-only retry
            run.put("error", stage="video", message=f"The video could not be made: {exc}", recoverable=True)

    @staticmethod
    def _write_mp4(run: _Run, frames, fps: int, path: Path) -> None:
        start = time.perf_counter()
        video_stage.write_mp4(frames, fps, path)
        run.seconds["mp4"] = time.perf_counter() - start

    def _render_with_retry(self, run: _Run, frame, preset: str, seed: int, conditioning: dict):
        """Render -> (frames, fps), None if stopped; on CUDA out-of-memory, once more at the next smaller preset."""
        steps = self.models.settings.sampling.num_inference_steps
        while True:
            spec = PRESETS[preset]
            if (frame.width * frame.height) > spec.width * spec.height:
                frame = fit_to_preset(frame, spec)

            def on_preview(step: int, rgb, total=spec.num_frames):
                run.put("video_frame", frame_index=total - 1, total_frames=total, kind="preview", step=step,
                        num_steps=steps, data=run.jpeg(rgb))

            run.video_start = round(run.now(), 4)
            try:
                frames = video_stage.render(self.models, frame, frame.width, frame.height, spec.num_frames,
                                            spec.fps, seed, on_preview, run.stop, **conditioning)
                return frames, spec.fps
            except video_stage.Stopped:
                return None
            except torch.OutOfMemoryError:
                smaller = SMALLER_PRESET.get(preset)
                if smaller is None:
                    raise
                torch.cuda.empty_cache()
                run.put("error", stage="video", recoverable=True, retry_preset=smaller,
                        message=f"Out of GPU memory at the {preset} preset; retrying at {smaller}.")
                preset = smaller
