"""The page's handlers: one for each thing a visitor does, each answering with the components it
changes (`{component: value}`); and the GPU queue as the page sees it (whose turn, a fair share).

The handlers touch no model: a run is the pipeline's stream of events (`foresight/pipeline.py`,
through `on_gpu` on ZeroGPU), a session's runs and history are `session.PageSession`'s, a run's
record `session.RunRecord`'s. `app.py` makes the components, lays them out and wires them to these.
With app.py, the only module that imports Gradio.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr

from foresight import storage
from foresight import story as story_files
from foresight.config import PRESETS, ZERO_GPU_DURATION_S, on_zero_gpu
from foresight.events import event
from foresight.gpu_queue import API_PLACES, Places, queue_position, refused_a_place, waiting_line
from foresight.inputs import InputError, check_upload
from foresight.runtime import StopFlag
from foresight.session import GONE, PageSession, RunRecord, refusal, status_line, summary
from foresight.storage import RunStore
from foresight.story import RunFiles

log = logging.getLogger("foresight.app")  # one line per refused input, never a traceback


def on_gpu(fn):
    """`fn` as it runs where the GPU is: on ZeroGPU, in a process `spaces.GPU` forks once and reuses,
    its arguments and what it yields pickled across (so a run's Stop is a `runtime.StopFlag`, not a
    `threading.Event`); elsewhere, here as it is."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(fn, duration=ZERO_GPU_DURATION_S)


def chosen_seed(seed, randomize: bool) -> int:
    """The seed a page's run uses: a new one, or the one in the Options."""
    return random.randrange(2**31) if randomize else int(seed or 0)


def end_stream(events, stop: StopFlag, record: RunRecord) -> None:
    """The page is done with a run's stream. Left before the run's end (a closed page, a cancelled
    client), the run is told to stop, in whichever process it runs (on ZeroGPU, `spaces` tells its
    forked call only at its next event; the flag is read at every token and step), and the stream
    is closed, which ends the GPU work."""
    if events is not None and record.stopped is None:
        stop.set()
    if events is not None:
        events.close()
    stop.discard()


def gallery_of(history: list[RunRecord]) -> list[tuple[str, str]]:
    return [(h.thumbnail, h.text[:60]) for h in history]


@dataclass
class Components:
    """The page's components a handler updates, set by `build_demo`."""

    image: gr.Image
    question: gr.Textbox
    preset: gr.Radio
    seed: gr.Number
    randomize: gr.Checkbox
    generate: gr.Button
    stop: gr.Button
    status: gr.Markdown
    queue_note: gr.Markdown
    reasoning: gr.Textbox
    preview: gr.Image
    video: gr.Video
    caption: gr.Markdown
    retry: gr.Button
    and_then: gr.Button
    gallery: gr.Gallery
    control: gr.State
    record: gr.State
    history: gr.State
    timer: gr.Timer


class Page:
    """The page's handlers, one for each thing a visitor does; each answers with the components it
    changes (`{component: value}`). They hold the pipeline, the run store and the page's settings,
    and touch no model: a session's runs and history are `session.PageSession`'s, a run's record
    `session.RunRecord`'s. Streaming handlers yield plain values for every output, never
    gr.update()/gr.skip(): in Gradio 6.31 a prop update yielded from a generator leaves a new
    component in the session for as long as it lives (docs/PITFALLS.md)."""

    def __init__(self, pipe, default_preset: str, store: Callable[..., RunStore]):
        """`store(is_live=...)`: the run store, told how to ask whether a page session is still held."""
        self.pipe, self.default_preset = pipe, default_preset
        # On ZeroGPU only the pipeline's run takes the GPU, in a process of its own; the page's
        # bookkeeping (the runs, the history) stays in this one.
        self.run_pipeline = on_gpu(pipe.__call__)
        self.demo: gr.Blocks | None = None  # set by build_demo: the queue the waiting line reads
        self.ui: Components | None = None  # set by build_demo
        self.runs = store(is_live=self.is_live)
        self.places = Places()  # the GPU queue's fair share, promised by `admit`

    def is_live(self, session: str) -> bool:
        """Whether Gradio still holds this session (it drops sessions past its capacity without a word);
        RunStore asks it of page sessions only."""
        demo = self.demo  # a page laid out but not served (its handlers called directly) drops no one
        return demo is None or not demo.is_running or session in demo.state_holder

    def session(self, owner: str, history: list[RunRecord] | None = None) -> PageSession:
        return PageSession(self.runs, owner, history or [])

    # --- one run, as the page (and the API) make it ---------------------------------------------

    def stream(self, session: PageSession, record: RunRecord, stop: StopFlag, image=None, mode: str = "auto",
               previous: RunRecord | None = None, clip=None):
        """The pipeline's events for one run, `record` kept up to date: in a new folder of the
        session's (kept if it made its mp4, or its text for Retry video; else let go), on its own
        copy of the upload, or going on from the story `previous` shows, or from a bare `clip`
        (the API's), carried or imported once, here in the app's process (on ZeroGPU, not on the
        GPU's time). A refusal before the run (the owner's share, a story gone) is one error event."""
        try:
            with session.run(record) as folder:
                events = None
                try:
                    record.upload = storage.keep_upload(image, self.runs.private(folder))
                    files = self.files_for(session, record, folder, previous, clip)
                    events = self.run_pipeline(record.upload, prompt=record.question, preset=record.preset,
                                               mode=None if mode == "auto" else mode, seed=record.seed, stop=stop,
                                               files=files, passes=record.passes)
                    for ev in events:
                        record.follow(ev)
                        yield ev
                finally:
                    end_stream(events, stop, record)
        except InputError as exc:
            refused = event("error", 0.0, stage="input", recoverable=True, message=str(exc))
            record.follow(refused)
            yield refused

    def files_for(self, session: PageSession, record: RunRecord, folder: Path, previous, clip) -> RunFiles:
        """Where the run's files go: a first run's, a story's next segment's, or a bare clip's."""
        if previous is not None:
            return session.going_on(previous, record)
        if clip is not None:
            return RunFiles.going_on(folder, record.name, clip=clip, preset=PRESETS.get(record.preset))
        return RunFiles.first(folder, record.name)

    def shown(self, record: RunRecord, events, stop: StopFlag, waiting: str, outputs: tuple):
        """A run's events as the page's `outputs`, every one of them each time, in plain values."""
        ui, status = self.ui, waiting
        for ev in events:
            status = status_line(record, ev, stop.is_set()) or status
            values = {ui.reasoning: record.shown_text, ui.preview: record.preview, ui.video: record.video,
                      ui.caption: record.caption, ui.status: status, ui.record: record}
            yield {component: values[component] for component in outputs}

    # --- the handlers ------------------------------------------------------------------------------

    def on_generate(self):
        """Clear the last run, lock Generate until this one has really ended, and say it is waiting."""
        ui = self.ui
        return {ui.reasoning: "", ui.preview: None, ui.video: None, ui.caption: "", ui.status: "Waiting for the GPU…",
                ui.control: StopFlag(), ui.record: RunRecord(), **self.locked()}

    def generate(self, image, question, preset, sharper, mode, seed, randomize, control, request: gr.Request):
        """One run for the page: text, preview then video in one place, status in words; `sharper`:
        LTX's second pass."""
        self.places.began(request.session_hash)
        stop, seed = control or StopFlag(), chosen_seed(seed, randomize)
        record = RunRecord(name=storage.video_name(image, seed), question=question or "", preset=preset, seed=seed,
                           passes=2 if sharper else 1)
        events = self.stream(self.session(request.session_hash), record, stop, image=image, mode=mode)
        yield from self.shown(record, events, stop, "Thinking…", self.run_outputs)

    def on_and_then(self):
        """Like `on_generate`, but the story's text stays: the new segment's follows it."""
        ui = self.ui
        return {ui.preview: None, ui.video: None, ui.status: "Waiting for the GPU…", ui.control: StopFlag(),
                **self.locked()}

    def and_then(self, question, sharper, mode, seed, randomize, record, control, request: gr.Request):
        """The story the page shows goes on: Qwen looks at its last frame, LTX renders the next
        segment from its last frames, and the video becomes the whole story. Stopped or refused,
        the page shows the story as it was, which is still kept; a segment whose video failed keeps
        its text, and Retry video renders it, as a first run's does."""
        self.places.began(request.session_hash)
        stop, previous, seed = control or StopFlag(), record, chosen_seed(seed, randomize)
        new = RunRecord(question=question or "", preset=None, seed=seed, passes=2 if sharper else 1)
        session, shown = self.session(request.session_hash), None
        events = self.stream(session, new, stop, mode=mode, previous=previous)
        for shown in self.shown(new, events, stop, "Thinking…", self.run_outputs):
            yield shown
        if not new.video and (new.stopped or new.error) and previous.video:  # the story as it was
            said = refusal(GONE) if not self.runs.kept(previous.folder) else \
                "Stopped: the story so far is kept." if new.stopped else shown[self.ui.status]
            ui = self.ui
            yield {ui.reasoning: previous.shown_text, ui.preview: previous.preview, ui.video: previous.video,
                   ui.caption: previous.caption, ui.status: said, ui.record: previous}

    def on_stop(self, control):
        """Stop is a state: the run ends at its next token or denoising step, then `on_run_end` unlocks."""
        if control is not None:
            control.set()
        return {self.ui.status: "Stopping…", self.ui.stop: gr.update(interactive=False)}

    def on_run_end(self, record, history, request: gr.Request):
        """The run has ended on the server: unlock Generate, keep it in the history (the session
        lets go of the rest), and offer Retry video or And then? as the run allows."""
        session = self.session(request.session_hash, history)
        history = session.ended(record)
        ui = self.ui
        return {ui.history: history, ui.gallery: gallery_of(history), ui.retry: gr.update(visible=record.can_retry),
                ui.and_then: gr.update(visible=session.can_go_on(record)), ui.generate: gr.update(interactive=True),
                ui.stop: gr.update(interactive=False), ui.timer: gr.Timer(active=False), ui.queue_note: "",
                ui.record: record, ui.control: None}

    def on_retry(self):
        """Like `on_generate`, but the run's text stays: only its video is rendered again."""
        return {self.ui.status: "Rendering the video again…", self.ui.control: StopFlag(), **self.locked()}

    def retry_video(self, record, control, request: gr.Request):
        """Render the video again for the run on screen, whose video failed, from its own image and
        text, without a new reasoning stream; a story's segment from the same last frames of the
        story before it (kept in its folder). Each retry writes a file of its own
        (`<name>-retry<N>.mp4`), so a stopped or failed one deletes nothing another run shows."""
        self.places.began(request.session_hash)
        ui, stop, again = self.ui, control or StopFlag(), record.again()
        if not record.can_retry:  # a stale button: only a failed video is retried
            yield {ui.preview: record.preview, ui.video: record.video, ui.record: record,
                   ui.status: refusal("Only a run whose video failed can render it again.")}
            return
        with self.session(request.session_hash).retry(record) as kept:
            if not kept:
                yield {ui.preview: None, ui.video: None, ui.status: refusal(GONE), ui.record: record}
                return
            shown = None
            for shown in self.shown(again, self.rerender(again, stop), stop, "Rendering the video again…",
                                    self.retry_outputs):
                yield shown
        if again.stopped and not again.video:  # stopped: the video can be retried again
            again.video_error = record.video_error
            yield {**shown, ui.record: again}

    def rerender(self, again: RunRecord, stop: StopFlag):
        """A video-only retry's events, `again` kept up to date: into `<name>-retry<N>.mp4` of its folder."""
        folder, name, events = Path(again.folder), f"{again.name}-retry{again.retries}", None
        try:
            files = RunFiles.going_on(folder, name, story=folder / story_files.BEFORE) if again.segment > 1 else \
                RunFiles.first(folder, name)
            events = self.run_pipeline(again.upload, prompt=again.question, preset=again.preset, mode=again.mode,
                                       seed=again.seed, stop=stop, reasoning=again.text, files=files)
            for ev in events:
                again.follow(ev)
                yield ev
        finally:
            end_stream(events, stop, again)

    def on_history_select(self, history, control, evt: gr.SelectData, request: gr.Request):
        """Restore a whole run (a whole story): its input, question, preset, seed, text, video and what
        was said. A run whose files are gone (the server's budget, or a session idle past its time)
        leaves the history, in words. While a run is on its way (`control` holds its Stop), "And
        then?" stays hidden: it would start a second run beside it; Retry video is for the run on
        screen only, so it goes."""
        ui, session = self.ui, self.session(request.session_hash, history)
        item = session.select(evt.index)
        if item is None:
            return {ui.status: refusal(GONE), ui.history: session.history, ui.gallery: gallery_of(session.history)}
        return {ui.image: item.input, ui.question: item.question, ui.preset: item.preset, ui.seed: item.seed,
                ui.randomize: False, ui.reasoning: item.shown_text, ui.preview: item.preview, ui.video: item.video,
                ui.caption: item.caption, ui.status: summary(item), ui.record: item, ui.history: session.history,
                ui.and_then: gr.update(visible=session.can_go_on(item) and control is None),
                ui.retry: gr.update(visible=False)}

    def on_tick(self, request: gr.Request):
        """The timer's tick while a run is on the way: its place in Gradio's queue, in words."""
        position = queue_position(self.demo, request.session_hash)
        return {self.ui.queue_note: "" if position is None or position[0] == 0 else waiting_line(*position)}

    def on_upload(self, image):
        """Refuse a file that is not an image, or too big, when it is uploaded, not only at Generate:
        from its header, so that the run decodes it once."""
        ui = self.ui
        if image is None:
            return {ui.image: None, ui.status: "Ready."}
        try:
            notes = check_upload(image)
        except InputError as exc:
            log.info("refused an upload: %s", exc)
            return {ui.image: None, ui.status: refusal(str(exc))}
        return {ui.image: image, ui.status: "  \n".join(["Ready."] + [f"ℹ️ {note}" for note in notes])}

    def predict(self, image=None, prompt: str = "", preset: str | None = None, clip=None, sharper: bool = False,
                request: gr.Request = None):
        """Look at one image, reason about it out loud, and render a short video of what happens next; or continue a clip.

        Args:
            image: the picture to look at: an http(s) URL or a data: URL of a JPEG, PNG, WebP, GIF, BMP or TIFF (not used when a clip is given)
            prompt: an optional question about the picture, e.g. "What will the dog do next?"
            preset: the video's size and length: "fast" (256x256, 25 frames, 1.0 s), "default" (512x512, 49 frames, 2.0 s) or "high" (768x768, 65 frames, 2.7 s), all at 24 fps
            clip: optional, to ask "and then?": an mp4 to continue, such as the clip this tool returned. The model looks at its last frame, the new segment begins with its last frames (9, or 17 at "high"), and the clip returned is the one sent (at 24 fps and the preset's size) followed by the new frames. Clips up to 20 s and Full HD
            sharper: optional, true for LTX's authors' second pass: the clip rendered at two thirds of the size, its latents upscaled, three more steps at twice that; sharper, and slower
        Returns:
            the model's reasoning, whose first line is its prediction of what happens next
            the clip's last preview frame (a JPEG)
            the clip (an mp4)
        """
        if request is not None:  # called through the queue, after `admit_predict`
            self.places.began(request.session_hash, API_PLACES)
        seed = random.randrange(2**31)
        record = RunRecord(name=storage.video_name(image, seed), question=prompt or "",
                           preset=preset or self.default_preset, seed=seed, passes=2 if sharper else 1)
        for _ in self.stream(self.session(storage.API_OWNER), record, StopFlag(), image=image, clip=clip or None):
            if record.error:
                log.info("refused an API input: %s", record.error)
                raise gr.Error(record.error, print_exception=False)
            yield {self.ui.reasoning: record.text, self.ui.preview: record.preview, self.ui.video: record.video}

    # --- what the handlers share -------------------------------------------------------------------

    def locked(self) -> dict:
        """While a run is on its way: Generate locked, Stop open, Retry and And then? hidden, the timer on."""
        ui = self.ui
        return {ui.generate: gr.update(interactive=False), ui.stop: gr.update(interactive=True),
                ui.retry: gr.update(visible=False), ui.and_then: gr.update(visible=False),
                ui.timer: gr.Timer(active=True)}

    @property
    def run_outputs(self) -> tuple:
        ui = self.ui
        return ui.reasoning, ui.preview, ui.video, ui.caption, ui.status, ui.record

    @property
    def retry_outputs(self) -> tuple:
        ui = self.ui
        return ui.preview, ui.video, ui.status, ui.record

    # Gradio calls a validator with the event's own inputs, then the request.
    def admit(self, request: gr.Request, inputs: int, api: bool = False) -> list[dict]:
        """The GPU queue's fair share (`refused_a_place`), checked before a run takes a place (Gradio's
        `validator`, one verdict per input of the event): refused, the client is told in words on
        its first input, and nothing is queued."""
        refused = refused_a_place(self.demo, request.session_hash, api, self.places)
        if refused:
            log.info("refused a place on the GPU's queue: %s", refused)
        return [gr.validate(not refused, refused or ""), *(gr.validate(True, ""),) * (inputs - 1)]

    def admit_generate(self, image, question, preset, sharper, mode, seed, randomize, control, request: gr.Request):
        return self.admit(request, 8)

    def admit_and_then(self, question, sharper, mode, seed, randomize, record, control, request: gr.Request):
        return self.admit(request, 7)

    def admit_retry(self, record, control, request: gr.Request):
        return self.admit(request, 2)

    def admit_predict(self, image, prompt, preset, clip, sharper, request: gr.Request):
        return self.admit(request, 5, api=True)
