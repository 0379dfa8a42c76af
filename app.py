"""Foresight's web page: drop an image, watch the model think and the future render.

    python app.py [--profile tiny|full|random-full] [--host H] [--port P] [--share] [--preset NAME] [--mcp]

Every flag has an environment variable (FORESIGHT_PROFILE, FORESIGHT_HOST, FORESIGHT_PORT,
FORESIGHT_SHARE, FORESIGHT_PRESET, ...) so a Hugging Face Space can set them. This file is the
page and its handlers only: the models start in foresight/serving.py, files are kept bounded by
foresight/storage.py, and each run is the pipeline's stream of events (foresight/pipeline.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry unless asked
import gradio as gr  # noqa: E402
from gradio import processing_utils  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402

from foresight import storage  # noqa: E402
from foresight import story as story_files  # noqa: E402
from foresight.config import MAX_SEGMENTS, PRESETS, ZERO_GPU_DURATION_S, on_zero_gpu  # noqa: E402
from foresight.events import event  # noqa: E402
from foresight.inputs import MAX_QUESTION_CHARS, MAX_UPLOAD_MB, InputError, check_upload  # noqa: E402
from foresight.runtime import StopFlag  # noqa: E402
from foresight.serving import PROFILES, MissingHubFiles, start  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Run folders live inside Gradio's upload folder (GRADIO_TEMP_DIR) and are served from there as they
# are, never copied or hashed: a page that still shows a run whose files were deleted then reaches the
# handlers, which say so in words (Gradio refuses an event naming a file outside that folder
# before any handler runs). storage.RunStore decides what stays.
RUNS_DIR = Path(gr.utils.get_upload_folder()) / "foresight-runs"
# What a visitor sent (their bytes, under a name of theirs) is kept outside anything Gradio serves.
PRIVATE_DIR = Path(tempfile.gettempdir()) / "foresight-private"
RUNS_MAX_MB = int(os.environ.get("FORESIGHT_RUNS_MAX_MB", 2048))  # all sessions' runs together
API_KEEP_S = int(os.environ.get("FORESIGHT_API_KEEP_S", 900))  # an API or MCP run's files, to download them
SESSION_TTL_S = int(os.environ.get("FORESIGHT_SESSION_TTL", 24 * 3600))  # a page's runs, after its last run
CACHE_TTL_S = int(os.environ.get("FORESIGHT_CACHE_TTL", 3600))  # uploads in Gradio's cache are kept for this long...
CACHE_MAX_MB = int(os.environ.get("FORESIGHT_CACHE_MAX_MB", 1024))  # ...and to this size
HISTORY_SIZE = 12  # runs a session's history keeps
# The GPU's queue is shared fairly: no visitor (a page session, an API client) holds more than this
# many places, waiting or running; API and MCP calls together no more than this share of its places.
PLACES_PER_VISITOR = 2
API_SHARE = 0.5
GONE = "That run is no longer kept on the server: it made room for newer runs, or this page was idle too long."
AND_THEN = "\n\n— And then —\n"  # between a story's segments in the thinking box
MODE_CHOICES = [("Auto", "auto"), ("Fused (bridge)", "fused"), ("Text (T5)", "text")]
# Gradio sizes gallery columns by item count (one run = one full-width tile): keep thumbnails small.
CSS = """
#history .grid-container { --grid-cols: 8 !important; }
#output:has(#video video[src]) #preview { display: none; }  /* the preview becomes the video where it stands */
#video:not(:has(video[src])) { display: none; }
"""
# On a narrow screen the output stacks below the inputs, examples and About: bring it into view.
SHOW_OUTPUT_ON_PHONES = """() => {
  if (window.innerWidth < 768) document.querySelector('#status')?.scrollIntoView({block: 'start'});
}"""
log = logging.getLogger("foresight.app")  # one line per refused input, never a traceback



def on_gpu(fn):
    """`fn` as it runs where the GPU is: on ZeroGPU, in a process `spaces.GPU` forks once and reuses,
    its arguments and what it yields pickled across (so a run's Stop is a `runtime.StopFlag`, not a
    `threading.Event`); elsewhere, here as it is."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(fn, duration=ZERO_GPU_DURATION_S)


class UploadImage(gr.Image):
    """An image input that hands the uploaded file's path on, untouched.

    Gradio's own preprocessing opens each upload with PIL and, for any mode but RGB (and for every
    inline `data:` image an API call sends), decodes and re-encodes it before the handler runs: a
    stranger's file decoded with no budget, and a corrupt one reaching the user as a bare "Error".
    The pipeline reads the header first and refuses what does not fit with a clear message
    (`inputs.open_image`). As a template of gr.Image (`is_template`), the page draws it with
    Gradio's own image widget.
    """

    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path:
            return str(payload.path)
        if payload.url and payload.url.startswith("data:"):  # an API call's inline image: its bytes, as a file
            if len(payload.url) * 3 / 4 > MAX_UPLOAD_MB * 2**20:
                raise gr.Error(f"That file is over {MAX_UPLOAD_MB} MB; files up to {MAX_UPLOAD_MB} MB can be used.",
                               print_exception=False)
            return processing_utils.save_base64_to_cache(payload.url, cache_dir=self.GRADIO_CACHE)
        return super().preprocess(payload)


class RunVideo(gr.Video):
    """The pipeline's own mp4, shown as it is.

    gr.Video probes every file it is given with ffprobe (a subprocess) on every update, to decide
    whether to convert it; a streaming handler yields the finished mp4 again with each text update
    after it. The pipeline writes H.264 in yuv420p with the index up front (`media.Mp4Writer`),
    which browsers play as it is, so nothing needs deciding: each update hands the page the file
    as it is, served from the run's folder (inside Gradio's upload folder, so never copied)."""

    is_template = True

    def postprocess(self, value):
        return None if value is None else FileData(path=str(value), orig_name=Path(value).name)


def preset_label(name: str) -> str:
    preset = PRESETS[name]
    return f"{name.capitalize()} · {preset.width}×{preset.height} · {preset.seconds:.1f} s"


def refusal(message: str) -> str:
    return f"⚠️ {message}"


def rendering_line(start: dict) -> str:
    seconds = start["num_frames"] / start["fps"]
    return f"{start['width']}×{start['height']}, {start['num_frames']} frames ({seconds:.1f} s at {start['fps']} fps)"


def caption(record: dict) -> str:
    if record.get("mode") == "text" and record.get("prediction"):
        return (f"**The video shows:** “{record['prediction']}”  \n"
                "Text mode: the video is conditioned on this line of the model's thinking.")
    if record.get("mode") == "fused":
        return "Fused mode: the video is conditioned on the image and the model's thinking through the learned bridge."
    return ""


def summary(record: dict) -> str:
    """The status line once a run has ended."""
    if record.get("stopped") and not record.get("video"):
        return "Stopped."
    parts = [f"**{record['mode']}** mode", f"seed {record['seed']}", f"rendered at {record['size']}"]
    if record.get("segment", 1) > 1:
        story = f" (the story: {record['story_s']:.1f} s)" if record.get("video") else ""
        parts.insert(0, f"segment {record['segment']} of at most {MAX_SEGMENTS}{story}")
    for label, key in (("first text", "ttft"), ("first preview", "first_frame"), ("video", "video_ready")):
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.2f} s")
    lines = [" · ".join(parts)]
    if record.get("stopped"):
        lines.append("ℹ️ Stopped after the video was made: the video is kept, the reasoning ends where it was.")
    lines += [f"ℹ️ {note}" for note in record.get("notes", [])]
    if record.get("video_error"):
        lines.append(f"⚠️ {record['video_error']} Press **Retry video** to render it again.")
    return "  \n".join(lines)


def shown_text(record: dict) -> str:
    """The thinking box: the story's earlier segments' reasoning, then this one's."""
    return record.get("earlier", "") + record.get("text", "")


def step_line(ev: dict, record: dict) -> str:
    """The status line as the video denoises: which step, and which segment of a story."""
    step = f"step {ev['step'] + 1}/{ev['num_steps']}"
    segment = record.get("segment", 1)
    return f"Segment {segment} of at most {MAX_SEGMENTS} · {step}" if segment > 1 else f"Rendering {step}"


def waiting_line(ahead: int, seconds: float | None) -> str:
    runs = "1 run" if ahead == 1 else f"{ahead} runs"
    return f"Waiting: {runs} ahead" + (f" (about {seconds:.0f} s)" if seconds else "") + "."


def queue_position(demo: gr.Blocks, session_hash: str) -> tuple[int, float | None] | None:
    """(runs ahead, Gradio's estimate of the wait) for this session's waiting run; None if it is not waiting.

    Read from Gradio's own queue (the GPU's concurrency group): the runs queued before this one,
    plus the one running, and Gradio's average run time for the function.
    """
    queue = demo._queue
    waiting = queue.event_queue_per_concurrency_id.get("gpu")
    if waiting is None:
        return None
    for rank, queued in enumerate(list(waiting.queue)):
        if queued.session_hash == session_hash:
            timing = queue.process_time_per_fn.get(queued.fn)
            ahead = rank + waiting.current_concurrency
            return ahead, (timing.avg_time * ahead if timing and timing.avg_time else None)
    return None


def gpu_runs(demo: gr.Blocks) -> list:
    """Gradio's events on the GPU's queue: those waiting, and those running."""
    queue = demo._queue
    group = queue.event_queue_per_concurrency_id.get("gpu")
    running = [ev for job in queue.active_jobs if job for ev in job if ev.concurrency_id == "gpu"]
    return [*(group.queue if group else ()), *running]


def refused_a_place(demo: gr.Blocks, session_hash: str, api: bool) -> str | None:
    """Why a new run may not join the GPU's queue, in words; None if it may. No visitor (a page,
    an API client) holds more than PLACES_PER_VISITOR places, waiting or running, and the API as a
    whole (MCP calls included) no more than API_SHARE of the queue, so that pages are still served."""
    runs = gpu_runs(demo)
    if sum(ev.session_hash == session_hash for ev in runs) >= PLACES_PER_VISITOR:
        return (f"You already have {PLACES_PER_VISITOR} runs on their way; this GPU is shared, so a new one can "
                "start once one of them has finished.")
    api_places = int(demo._queue.max_size * API_SHARE) if demo._queue.max_size else None
    if api and api_places is not None and sum(ev.fn.api_name == "predict" for ev in runs) >= api_places:
        return (f"The API's share of this GPU's queue ({api_places} places) is taken; visitors of the page keep "
                "the rest. Please try again in a minute.")
    return None


def follow(events, record: dict):
    """The pipeline's events, passed on, with `record` kept up to date: its text, its latest preview
    (as a file), its video, what was said about it."""
    for ev in events:
        if ev["type"] == "thinking_start":
            record.update(mode=ev["mode"], size=rendering_line(ev), notes=[n for n in [ev["note"], *ev["input_notes"]]
                                                                          if n], preset=ev["preset"],
                          segment=ev["segment"], seed=ev["seed"])
        elif ev["type"] == "text_chunk":
            record["text"] += ev["content"]
        elif ev["type"] == "video_frame":
            record["preview"] = ev["path"]  # the JPEG the pipeline wrote in the run's folder
        elif ev["type"] == "video_complete":
            record.update(video=ev["video_url"], video_error=None, story_s=ev["num_frames"] / ev["fps"])
        elif ev["type"] == "error" and ev["stage"] == "video" and not ev.get("retry_preset"):
            record["video_error"] = ev["message"]
        elif ev["type"] == "error" and ev["stage"] in ("input", "run"):  # refused, ended at its deadline, or no GPU
            record["error"] = ev["message"]
        elif ev["type"] == "error":
            record["notes"].append(ev["message"])
        elif ev["type"] == "thinking_complete":
            record.update({k: ev[k] for k in ("stopped", "prediction", "ttft", "first_frame", "video_ready")})
        yield ev


class Page:
    """The page's handlers, one for each thing a visitor does. They hold the pipeline and the page's
    settings and touch no model. Streaming handlers yield plain values, never gr.update()/gr.skip():
    in Gradio 6.31 a prop update yielded from a generator leaves a new component in the session for
    as long as it lives (docs/PITFALLS.md)."""

    def __init__(self, pipe, default_preset: str = "default"):
        self.pipe, self.default_preset = pipe, default_preset
        # On ZeroGPU only the pipeline's run takes the GPU, in a process of its own; the page's
        # bookkeeping (the runs, the history) stays in this one.
        self.run_pipeline = on_gpu(pipe.__call__)
        self.demo: gr.Blocks | None = None  # set by build_demo: the queue the waiting line reads
        self.runs = storage.RunStore(RUNS_DIR, PRIVATE_DIR, RUNS_MAX_MB * 2**20, API_KEEP_S, is_live=self.is_live)

    def admit(self, request: gr.Request, inputs: int, api: bool = False) -> list[dict]:
        """The GPU queue's fair share (`refused_a_place`), checked before a run takes a place (Gradio's
        `validator`, one verdict per input of the event): refused, the client is told in words on
        its first input, and nothing is queued."""
        refused = refused_a_place(self.demo, request.session_hash, api)
        if refused:
            log.info("refused a place on the GPU's queue: %s", refused)
        return [gr.validate(not refused, refused or ""), *(gr.validate(True, ""),) * (inputs - 1)]

    # Gradio calls a validator with the event's own inputs, then the request.
    def admit_generate(self, image, question, preset, mode, seed, randomize, control, request: gr.Request):
        return self.admit(request, 7)

    def admit_and_then(self, question, mode, seed, randomize, record, control, request: gr.Request):
        return self.admit(request, 6)

    def admit_retry(self, record, control, request: gr.Request):
        return self.admit(request, 2)

    def admit_predict(self, image, prompt, preset, clip, request: gr.Request):
        return self.admit(request, 4, api=True)

    def is_live(self, session: str) -> bool:
        """Whether Gradio still holds this session (it drops sessions past its capacity without a word);
        RunStore asks it of page sessions only."""
        holder = getattr(self.demo, "state_holder", None)
        return holder is None or session in holder

    def stream(self, image_path, question, preset, mode, seed, stop, record, owner, previous=None, clip=None):
        """The pipeline's events for one run, with `record` kept up to date; the run works on its own
        copy of the upload, in its private folder (`owner`'s run), which its history and a retry use
        too. `stop`: a `runtime.StopFlag` (it crosses into ZeroGPU's process). `previous`: the record
        of the story this run continues ("And then?"); `clip`: a bare mp4 to continue (the API's).
        A run that made its mp4 is kept, stopped or not; one that made only text, for Retry video."""
        record.update(folder=None, upload=None, name=storage.video_name(image_path, seed), question=question or "",
                      preset=preset, seed=seed, text="", notes=[], preview=None, video=None)
        folder, events = None, None
        try:
            folder = self.runs.new(owner)
            upload = storage.keep_upload(image_path, self.runs.private(folder))
            record.update(folder=str(folder), upload=upload and str(upload))
            story = self._story_to_continue(previous, clip, preset, folder, record)
            events = self.run_pipeline(upload, prompt=question or "", preset=preset, seed=seed, stop=stop,
                                       mode=None if mode == "auto" else mode, out_dir=folder, video_name=record["name"],
                                       story=story)
            yield from follow(events, record)
        except InputError as exc:  # refused before the run: over its owner's share, or no story to go on from
            yield from follow([event("error", 0.0, stage="input", recoverable=True, message=str(exc))], record)
        finally:
            end_stream(events, stop, record)
            if folder is not None:
                if record.get("video") or (record.get("stopped") is False and not record.get("error")):
                    self.runs.finish(folder)
                else:
                    self.runs.release([folder])

    def _story_to_continue(self, previous, clip, preset, folder: Path, record: dict) -> Path | None:
        """What this run continues, in its own folder: the story the page shows (`_carry_story`), or
        a bare clip imported under the clip budget, here in the app's process (on ZeroGPU, not on
        the GPU's time) -> its mp4, None for a first run; InputError, in words, when it cannot."""
        if previous is not None:
            story = self._carry_story(previous, folder, record)
            if story is None:
                raise InputError(GONE)
            return story
        if clip is None:
            return None
        with story_files.said_in_words("clip"):
            return story_files.import_clip(clip, folder, PRESETS.get(preset, PRESETS["default"])).video

    def _carry_story(self, previous: dict, folder: Path, record: dict) -> Path | None:
        """The story `previous` shows, linked into the new run's folder (its input and thumbnail
        too, for the history), so that it stays whatever the budget does to the older folder; its
        mp4 (in `before/`) -> the story to continue. None if it is no longer kept."""
        try:
            if not self.runs.kept(previous.get("folder")):
                return None
            story = story_files.carry(story_files.load(previous["video"]), folder)
            kept = {key: str(story_files.link_or_copy(Path(previous[key]), folder / Path(previous[key]).name))
                    for key in ("input", "thumbnail")}
        except (OSError, InputError, KeyError) as exc:
            log.info("could not continue a story: %s", exc)
            return None
        story_name = previous.get("story_name", previous["name"])
        record.update(kept, earlier=shown_text(previous) + AND_THEN, continues=previous["folder"], upload=None,
                      story_name=story_name, name=f"{story_name}-then{len(story.segments) + 1}")
        return story.video

    def on_generate(self):
        """Clear the last run, lock Generate until this one has really ended, and say it is waiting."""
        control = {"stop": StopFlag()}
        return ("", None, None, "", "Waiting for the GPU…", control, {}, gr.update(interactive=False),
                gr.update(interactive=True), gr.update(visible=False), gr.update(visible=False), gr.Timer(active=True))

    def generate(self, image, question, preset, mode, seed, randomize, control, request: gr.Request):
        """One run for the page: text, preview then video in one place, status in words."""
        stop = (control or {}).get("stop") or StopFlag()
        seed = random.randrange(2**31) if randomize else int(seed or 0)
        record = {}
        yield from page_updates(self.stream(image, question, preset, mode, seed, stop, record, request.session_hash),
                                record, stop)

    def on_and_then(self):
        """Like `on_generate`, but the story's text stays: the new segment's follows it."""
        control = {"stop": StopFlag()}
        return (None, None, "Waiting for the GPU…", control, gr.update(interactive=False), gr.update(interactive=True),
                gr.update(visible=False), gr.update(visible=False), gr.Timer(active=True))

    def and_then(self, question, mode, seed, randomize, record, control, request: gr.Request):
        """The story the page shows goes on: Qwen looks at its last frame, LTX renders the next
        segment from its last frames, and the video becomes the whole story. Stopped or refused,
        the page shows the story as it was, which is still kept; a segment whose video failed keeps
        its text, and Retry video renders it, as a first run's does."""
        stop = (control or {}).get("stop") or StopFlag()
        seed = random.randrange(2**31) if randomize else int(seed or 0)
        previous, new = record or {}, {}
        status = ""
        for update in page_updates(self.stream(None, question, None, mode, seed, stop, new, request.session_hash,
                                               previous=previous), new, stop):
            status = update[4]
            yield update
        if not new.get("video") and (new.get("stopped") or new.get("error")) and previous.get("video"):
            if not self.runs.kept(previous.get("folder")):  # the budget took it meanwhile
                status = refusal(GONE)
            elif new.get("stopped"):
                status = "Stopped: the story so far is kept."
            yield shown_text(previous), previous.get("preview"), previous["video"], caption(previous), status, previous

    def on_stop(self, control):
        """Stop is a state: the run ends at its next token or denoising step, then `on_run_end` unlocks."""
        if control and control.get("stop"):
            control["stop"].set()
        return "Stopping…", gr.update(interactive=False)

    def on_run_end(self, record, history, request: gr.Request):
        """The run has ended on the server: unlock Generate, keep it in the history; the session now
        shows its history and this run, and lets go of the rest. No run is on its way any more
        (`control` cleared)."""
        try:
            if record.get("video") and self.runs.kept(record.get("folder")):
                if "input" not in record:
                    source, thumbnail = storage.save_input(record["upload"], Path(record["folder"]))
                    record = {**record, "input": str(source), "thumbnail": str(thumbnail)}
                # A retried run replaces itself; a story's new segment replaces the segment it continued:
                # the history keeps a story as one entry, which restores all of it.
                replaced = {record["folder"], record.get("continues")}
                history = [record, *(h for h in history if h["folder"] not in replaced)][:HISTORY_SIZE]
        except (OSError, InputError) as exc:  # the page must unlock whatever happened to the files
            log.info("could not keep the run in the history: %s", exc)
        self.runs.hold(request.session_hash, [*(h["folder"] for h in history), record.get("folder")])
        history = [h for h in history if self.runs.kept(h["folder"])]  # the budget may have taken some
        return (history, gallery_of(history), gr.update(visible=bool(record.get("video_error"))),
                gr.update(visible=self.can_go_on(record)), gr.update(interactive=True), gr.update(interactive=False),
                gr.Timer(active=False), "", record, {})

    def on_retry(self):
        """Like `on_generate`, but the run's text stays: only its video is rendered again."""
        control = {"stop": StopFlag()}
        return ("Rendering the video again…", control, gr.update(interactive=False), gr.update(interactive=True),
                gr.update(visible=False), gr.update(visible=False))

    def retry_video(self, record, control):
        """Render the video again for the run on screen, whose video failed, from its own image and
        text, without a new reasoning stream; a story's segment from the same last frames of the
        story before it (kept in its folder). Each retry writes a file of its own
        (`<name>-retry<N>.mp4`), so a stopped or failed one deletes nothing another run shows."""
        if record.get("video") or not record.get("video_error"):  # a stale button: only a failed video is retried
            refused = refusal("Only a run whose video failed can render it again.")
            yield record.get("preview"), record.get("video"), refused, record
            return
        if not self.runs.reopen(record.get("folder")):  # written again: the budget leaves it alone meanwhile
            yield None, None, refusal(GONE), record
            return
        stop = (control or {}).get("stop") or StopFlag()
        attempt = record.get("retries", 0) + 1
        again = {**{key: value for key, value in record.items() if key != "stopped"},  # this run's, once it ends
                 "video": None, "preview": None, "video_error": None, "retries": attempt}
        events = None
        try:
            before = Path(record["folder"]) / story_files.BEFORE if record.get("segment", 1) > 1 else None
            events = self.run_pipeline(record["upload"], prompt=record["question"], preset=record["preset"],
                                       mode=record["mode"], seed=record["seed"], out_dir=record["folder"], stop=stop,
                                       reasoning=record["text"], video_name=f"{record['name']}-retry{attempt}",
                                       story=before)
            status = "Rendering the video again…"
            for ev in follow(events, again):
                if again.get("error"):
                    status = refusal(again["error"])
                elif ev["type"] == "video_frame":
                    status = step_line(ev, again)
                elif ev["type"] == "error":
                    status = refusal(ev["message"])
                elif ev["type"] == "thinking_complete":
                    status = summary(again)
                if again.get("stopped") and not again["video"]:  # stopped: the video can be retried again
                    again["video_error"] = record["video_error"]
                yield again["preview"], again["video"], status, again
        finally:
            end_stream(events, stop, again)
            self.runs.finish(record["folder"])

    def can_go_on(self, record: dict) -> bool:
        """A finished video, still kept with its story's record, whose story has room for another
        segment: "And then?" is offered."""
        return (bool(record.get("video")) and not record.get("video_error") and record.get("segment", 1) < MAX_SEGMENTS
                and self.runs.kept(record.get("folder")) and story_files.record_path(record["video"]).is_file())

    def on_history_select(self, history, control, evt: gr.SelectData):
        """Restore a whole run (a whole story): its input, question, preset, seed, text, video and what
        was said. A run whose files are gone (the server's budget, or a session idle past its time)
        leaves the history, in words. While a run is on its way (`control` holds its Stop), "And
        then?" stays hidden: it would start a second run beside it."""
        item = history[evt.index] if evt.index < len(history) else None
        if item is None or not self.runs.kept(item["folder"]):
            history = [h for h in history if h is not item and self.runs.kept(h["folder"])]
            return (*(gr.skip(),) * 9, refusal(GONE), gr.skip(), history, gallery_of(history), gr.skip(), gr.skip())
        return (item["input"], item["question"], item["preset"], item["seed"], False, shown_text(item),
                item.get("preview"), item["video"], caption(item), summary(item), item, history, gr.skip(),
                gr.update(visible=self.can_go_on(item) and not (control or {}).get("stop")), gr.update(visible=False))

    def on_tick(self, request: gr.Request):
        """The timer's tick while a run is on the way: its place in Gradio's queue, in words."""
        position = queue_position(self.demo, request.session_hash)
        return "" if position is None or position[0] == 0 else waiting_line(*position)

    def on_upload(self, image):
        """Refuse a file that is not an image, or too big, when it is uploaded, not only at Generate:
        from its header, so that the run decodes it once."""
        if image is None:
            return None, "Ready."
        try:
            notes = check_upload(image)
        except InputError as exc:
            log.info("refused an upload: %s", exc)
            return None, refusal(str(exc))
        return image, "  \n".join(["Ready."] + [f"ℹ️ {note}" for note in notes])

    def predict(self, image=None, prompt: str = "", preset: str | None = None, clip=None):
        """Look at one image, reason about it out loud, and render a short video of what happens next; or continue a clip.

        Args:
            image: the picture to look at: an http(s) URL or a data: URL of a JPEG, PNG, WebP, GIF, BMP or TIFF (not used when a clip is given)
            prompt: an optional question about the picture, e.g. "What will the dog do next?"
            preset: the video's size and length: "fast" (256x256, 25 frames, 1.0 s), "default" (512x512, 49 frames, 2.0 s) or "high" (768x768, 65 frames, 2.7 s), all at 24 fps
            clip: optional, to ask "and then?": an mp4 to continue, such as the clip this tool returned. The model looks at its last frame, the new segment begins with its last frames (9, or 17 at "high"), and the clip returned is the one sent (at 24 fps and the preset's size) followed by the new frames. Clips up to 20 s and Full HD
        Returns:
            the model's reasoning, whose first line is its prediction of what happens next
            the clip's last preview frame (a JPEG)
            the clip (an mp4)
        """
        record = {}
        for _ in self.stream(image, prompt, preset or self.default_preset, "auto", random.randrange(2**31),
                             StopFlag(), record, storage.API_OWNER, clip=clip or None):
            if record.get("error"):
                log.info("refused an API input: %s", record["error"])
                raise gr.Error(record["error"], print_exception=False)
            yield record["text"], record["preview"], record["video"]


def page_updates(events, record: dict, stop: StopFlag):
    """A run's events as the page's outputs: (thinking, preview, video, caption, status, record)."""
    status = "Thinking…"
    for ev in events:
        if record.get("error"):
            log.info("a run ended without running: %s", record["error"])
            status = refusal(record["error"])
        elif ev["type"] == "thinking_complete":
            status = summary(record)
        elif stop.is_set():  # whatever still streams in, Stop was pressed
            status = "Stopping…"
        elif ev["type"] == "thinking_start":
            status = f"Thinking… · {record['size']}"
            if record["segment"] > 1:
                status = f"Segment {record['segment']} of at most {MAX_SEGMENTS} · thinking… · {record['size']}"
        elif ev["type"] == "video_frame":
            status = step_line(ev, record)
        yield shown_text(record), record["preview"], record["video"], caption(record), status, record


def end_stream(events, stop: StopFlag, record: dict) -> None:
    """The page is done with a run's stream. Left before the run's end (a closed page, a cancelled
    client), the run is told to stop, in whichever process it runs (on ZeroGPU, `spaces` tells its
    forked call only at its next event; the flag is read at every token and step), and the stream
    is closed, which ends the GPU work."""
    if events is not None and "stopped" not in record:
        stop.set()
    if events is not None:
        events.close()
    stop.discard()


def gallery_of(history: list[dict]) -> list[tuple[str, str]]:
    return [(h["thumbnail"], h["text"][:60]) for h in history]


def build_demo(pipe, default_preset: str = "default", about: str = "") -> gr.Blocks:
    """The page's layout and wiring; `Page` holds what each event does. The preview and the video
    share one place through CSS (the video hides the preview once it has a source)."""
    page = Page(pipe, default_preset)
    gr.set_static_paths([RUNS_DIR])  # untracked by Gradio's delete_cache: RunStore alone decides what goes
    with gr.Blocks(title="Foresight", delete_cache=(CACHE_TTL_S, CACHE_TTL_S)) as demo:
        gr.Markdown("# Foresight\nDrop an image. The model thinks out loud and shows what happens next.")
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadImage(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                    elem_id="input-image", height=320)
                question = gr.Textbox(label="Question (optional)", placeholder="What happens next?",
                                      elem_id="prompt", lines=1, max_length=MAX_QUESTION_CHARS)
                preset = gr.Radio([(preset_label(name), name) for name in PRESETS], value=default_preset,
                                  label="Video", elem_id="preset")
                with gr.Accordion("Options", open=False):
                    mode = gr.Radio([c for c in MODE_CHOICES if c[1] in ["auto", *pipe.models.modes]], value="auto",
                                    label="Conditioning", elem_id="mode")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed", interactive=False)
                        randomize = gr.Checkbox(value=True, label="Randomize seed", elem_id="randomize")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                gr.Examples([[str(p)] for p in sorted(EXAMPLES_DIR.glob("*.jpg"))], inputs=[image],
                            label="Examples (CC0 / public domain, see examples/LICENSE.md)")
                with gr.Accordion("About", open=False, elem_id="about"):
                    gr.Markdown(about)
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="status")
                queue_note = gr.Markdown("", elem_id="queue")
                reasoning = gr.Textbox(label="Thinking", lines=8, max_lines=16, elem_id="reasoning",
                                       autoscroll=True)
                with gr.Group(elem_id="output"):
                    preview = gr.Image(label="What happens next", elem_id="preview", format="jpeg", type="filepath",
                                       interactive=False, height=360)
                    video = RunVideo(label="What happens next", elem_id="video", autoplay=True, loop=True,
                                     interactive=False, height=360)
                    shown = gr.Markdown("", elem_id="caption")
                with gr.Row():
                    retry = gr.Button("Retry video", visible=False, elem_id="retry")
                    and_then = gr.Button("And then?", visible=False, variant="primary", elem_id="and-then")
                gallery = gr.Gallery(label="This session's runs", columns=8, height=150, object_fit="cover",
                                     elem_id="history", allow_preview=False)
        # What a session shows is its own until it ends (its tab closed for an hour, or idle past
        # SESSION_TTL_S): then its runs are let go. Sessions Gradio drops for capacity skip these
        # callbacks; RunStore finds their runs by `Page.is_live`.
        control = gr.State({})
        record = gr.State({}, time_to_live=SESSION_TTL_S, delete_callback=lambda r: page.runs.let_go([r.get("folder")]))
        history = gr.State([], time_to_live=SESSION_TTL_S,
                           delete_callback=lambda h: page.runs.let_go([item.get("folder") for item in h]))
        timer = gr.Timer(1.0, active=False)
        api_trigger = gr.Button(visible=False)
        api_clip = gr.File(visible=False, file_types=[".mp4"], type="filepath", label="Clip to continue")

        gpu_queue = dict(concurrency_limit=1, concurrency_id="gpu")
        private = dict(api_visibility="private", show_progress="hidden")  # the status line says it in words
        ended = dict(fn=page.on_run_end, inputs=[record, history],
                     outputs=[history, gallery, retry, and_then, generate, stop, timer, queue_note, record, control],
                     **private)
        started = generate.click(page.on_generate, outputs=[reasoning, preview, video, shown, status, control, record,
                                                            generate, stop, retry, and_then, timer],
                                 queue=False, **private)
        generate.click(None, js=SHOW_OUTPUT_ON_PHONES, **private)
        started.then(page.generate, inputs=[image, question, preset, mode, seed, randomize, control],
                     outputs=[reasoning, preview, video, shown, status, record], validator=page.admit_generate,
                     **gpu_queue, **private).then(**ended)
        going_on = and_then.click(page.on_and_then, outputs=[preview, video, status, control, generate, stop, retry,
                                                             and_then, timer], queue=False, **private)
        and_then.click(None, js=SHOW_OUTPUT_ON_PHONES, **private)
        going_on.then(page.and_then, inputs=[question, mode, seed, randomize, record, control],
                      outputs=[reasoning, preview, video, shown, status, record], validator=page.admit_and_then,
                      **gpu_queue, **private).then(**ended)
        stop.click(page.on_stop, inputs=[control], outputs=[status, stop], queue=False, **private)
        again = retry.click(page.on_retry, outputs=[status, control, generate, stop, retry, and_then], queue=False,
                            **private)
        again.then(page.retry_video, inputs=[record, control], outputs=[preview, video, status, record],
                   validator=page.admit_retry, **gpu_queue, **private).then(**ended)
        timer.tick(page.on_tick, outputs=[queue_note], queue=False, **private)
        image.upload(page.on_upload, inputs=[image], outputs=[image, status], queue=False, **private)
        randomize.change(lambda on: gr.update(interactive=not on), inputs=[randomize], outputs=[seed], **private)
        gallery.select(page.on_history_select, inputs=[history, control],
                       outputs=[image, question, preset, seed, randomize, reasoning, preview, video, shown, status,
                                record, history, gallery, and_then, retry], **private)
        gallery.select(None, js=SHOW_OUTPUT_ON_PHONES, **private)
        api_trigger.click(page.predict, inputs=[image, question, preset, api_clip], outputs=[reasoning, preview, video],
                          api_name="predict", validator=page.admit_predict, **gpu_queue)
    page.demo = demo
    return demo


def kept_files(demo: gr.Blocks) -> set[str]:
    """Files in Gradio's cache that the page itself needs (the examples)."""
    return set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Foresight web app")
    parser.add_argument("--profile", choices=PROFILES, default=env("FORESIGHT_PROFILE"),
                        help="default: full on a CUDA GPU, tiny elsewhere")
    parser.add_argument("--host", default=env("FORESIGHT_HOST", env("GRADIO_SERVER_NAME", "127.0.0.1")))
    parser.add_argument("--port", type=int, default=int(env("FORESIGHT_PORT", env("GRADIO_SERVER_PORT", 7860))))
    parser.add_argument("--share", action="store_true", default=env("FORESIGHT_SHARE", "") in ("1", "true"))
    parser.add_argument("--preset", choices=list(PRESETS), default=env("FORESIGHT_PRESET", "default"))
    parser.add_argument("--queue-size", type=int, default=int(env("FORESIGHT_QUEUE_SIZE", 16)))
    parser.add_argument("--weights", default=env("FORESIGHT_WEIGHTS"), metavar="DIR",
                        help="a bridge checkpoint folder for fused mode (default: the first fitting one in weights/)")
    parser.add_argument("--no-text-mode", action="store_true",
                        help="skip T5-XXL (9.5 GB) when a bridge runs fused mode (also FORESIGHT_TEXT_MODE=0)")
    parser.add_argument("--mcp", action="store_true", default=env("FORESIGHT_MCP", "") in ("1", "true"),
                        help="also serve /predict as a tool for agents (Model Context Protocol), at /gradio_api/mcp/")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[foresight] %(message)s"))
    logging.getLogger("foresight").addHandler(handler)  # the page's and the pipeline's lines
    logging.getLogger("foresight").setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        pipe, about = start(args.profile, text_mode=not args.no_text_mode, weights=args.weights,
                            log=lambda message: print(message, flush=True))
    except MissingHubFiles as exc:  # said in words, not as a traceback
        raise SystemExit(f"[foresight] cannot start: {exc}") from None
    demo = build_demo(pipe, default_preset=args.preset, about=about)
    storage.keep_swept(Path(gr.utils.get_upload_folder()), CACHE_TTL_S, CACHE_MAX_MB * 2**20,
                       keep=lambda: kept_files(demo), skip=RUNS_DIR)
    with contextlib.redirect_stdout(io.StringIO()):  # Gradio's own lines; `ready_line` says what they would
        demo.queue(max_size=args.queue_size).launch(
            server_name=args.host, server_port=args.port, share=args.share,
            max_file_size=f"{MAX_UPLOAD_MB}mb", mcp_server=args.mcp, quiet=True, prevent_thread_lock=True,
            show_error=True, css=CSS, footer_links=["api", "gradio", "settings"], run_history=False)
    print(ready_line(demo, time.perf_counter() - started, args.mcp), flush=True)
    demo.block_thread()


def ready_line(demo: gr.Blocks, seconds: float, mcp: bool) -> str:
    """The console's last start-up line, in place of Gradio's: where the page is, and how to share it."""
    public = f"public link {demo.share_url}" if demo.share_url else "`python app.py --share` for a public link"
    tool = f" · MCP tool `predict` at {demo.local_url}gradio_api/mcp/" if mcp else ""
    return f"[foresight] ready in {seconds:.1f}s at {demo.local_url} · {public}{tool}"


if __name__ == "__main__":
    main()
