"""A page's session: the record of each run it shows, its history, and what it holds in the run
store. It knows no web framework: app.py hands in what Gradio gives (the session's id, its states)
and turns what this says into the page's components.

A run's record (`RunRecord`) is kept up to date from the pipeline's events (`RunRecord.follow`), is
what the page's state holds, and is what the history keeps. The status line is made in one place
(`status_line`), from a record and the event that just came.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from foresight import storage
from foresight import story as story_files
from foresight.config import MAX_SEGMENTS
from foresight.inputs import InputError
from foresight.storage import RunStore

log = logging.getLogger("foresight.app")
HISTORY_SIZE = 12  # runs a session's history keeps
GONE = "That run is no longer kept on the server: it made room for newer runs, or this page was idle too long."
AND_THEN = "\n\n— And then —\n"  # between a story's segments in the thinking box


@dataclass
class RunRecord:
    """What the page knows of one run (one segment of a story): what was asked, what came back."""

    folder: str | None = None  # the run's served folder (storage.RunStore)
    name: str = ""  # its mp4's name, without .mp4: also what a download is called
    upload: str | None = None  # what the visitor sent, in the run's private folder
    question: str = ""
    preset: str = "default"
    seed: int = 0
    passes: int = 1  # LTX's passes: 1, or the authors' 2 (sharper, slower)
    mode: str | None = None
    size: str = ""  # "288×192, 25 frames (1.0 s at 24 fps)"
    segment: int = 1
    earlier: str = ""  # the story's earlier segments' reasoning, each ending with AND_THEN
    text: str = ""
    notes: list[str] = field(default_factory=list)
    preview: str | None = None  # the latest preview's JPEG
    video: str | None = None  # the mp4: the whole story so far
    story_s: float | None = None  # its length in seconds
    video_error: str | None = None  # the video failed: the text stays, Retry video is offered
    error: str | None = None  # refused, or ended at its deadline, or no GPU: nothing to keep
    stopped: bool | None = None  # None until the run has ended
    prediction: str | None = None  # text mode's conditioning line
    ttft: float | None = None
    first_frame: float | None = None
    video_ready: float | None = None
    input: str | None = None  # the input as loaded, and its thumbnail: for the history
    thumbnail: str | None = None
    continues: str | None = None  # the folder of the story's segment it continued
    story_name: str | None = None  # what the story's mp4s are named after
    retries: int = 0

    def follow(self, ev: dict) -> None:
        """The pipeline's event `ev`, taken in."""
        kind = ev["type"]
        if kind == "thinking_start":
            self.mode, self.size, self.segment, self.seed = ev["mode"], rendering_line(ev), ev["segment"], ev["seed"]
            self.passes = ev["passes"]
            self.preset, self.notes = ev["preset"], [note for note in (ev["note"], *ev["input_notes"]) if note]
        elif kind == "text_chunk":
            self.text += ev["content"]
        elif kind == "video_frame":
            self.preview = ev["path"]  # the JPEG the pipeline wrote in the run's folder
        elif kind == "video_complete":
            self.video, self.video_error, self.story_s = ev["video_url"], None, ev["num_frames"] / ev["fps"]
        elif kind == "error" and ev["stage"] == "video" and not ev.get("retry_preset"):
            self.video_error = ev["message"]
        elif kind == "error" and ev["stage"] in ("input", "run"):  # refused, ended at its deadline, or no GPU
            self.error = ev["message"]
        elif kind == "error":
            self.notes.append(ev["message"])
        elif kind == "thinking_complete":
            self.stopped, self.prediction = ev["stopped"], ev["prediction"]
            self.ttft, self.first_frame, self.video_ready = ev["ttft"], ev["first_frame"], ev["video_ready"]

    @property
    def shown_text(self) -> str:
        """The thinking box: the story's earlier segments' reasoning, then this one's."""
        return self.earlier + self.text

    @property
    def caption(self) -> str:
        if self.mode == "text" and self.prediction:
            return (f"**The video shows:** “{self.prediction}”  \n"
                    "Text mode: the video is conditioned on this line of the model's thinking.")
        if self.mode == "fused":
            return ("Fused mode: the video is conditioned on the image and the model's thinking through the learned "
                    "bridge.")
        return ""

    @property
    def keeps_files(self) -> bool:
        """Whether the run's folder stays when it ends: its mp4 (stopped after it or not), or its text
        to render the video again for."""
        return bool(self.video) or (self.stopped is False and not self.error)

    @property
    def can_retry(self) -> bool:
        return bool(self.video_error) and not self.video

    def again(self) -> RunRecord:
        """The record of a video-only retry of this run: its text, a video to come, a file of its own."""
        return replace(self, video=None, preview=None, video_error=None, stopped=None, retries=self.retries + 1)


def rendering_line(start: dict) -> str:
    seconds = start["num_frames"] / start["fps"]
    return f"{start['width']}×{start['height']}, {start['num_frames']} frames ({seconds:.1f} s at {start['fps']} fps)"


def refusal(message: str) -> str:
    return f"⚠️ {message}"


def status_line(record: RunRecord, ev: dict, stopping: bool = False) -> str | None:
    """The status line, the one place it is made: for a record as the event `ev` came, with Stop
    pressed or not -> the line, or None where the event leaves it as it was."""
    if record.error:
        return refusal(record.error)
    if record.stopped is not None:
        return summary(record)
    if stopping:  # whatever still streams in, Stop was pressed
        return "Stopping…"
    story = f"Segment {record.segment} of at most {MAX_SEGMENTS} · " if record.segment > 1 else ""
    if ev["type"] == "video_frame":
        step = f"step {ev['step'] + 1}/{ev['num_steps']}"
        if record.passes > 1:  # which of LTX's passes
            step = f"pass {ev['pass']} of {record.passes} · {step}"
        return story + step if story else f"Rendering {step}"
    if ev["type"] == "error" and ev["stage"] == "video":
        return refusal(ev["message"])
    if ev["type"] == "thinking_start" and not record.text:  # a retry has its text: it only renders
        return f"{story}thinking… · {record.size}" if story else f"Thinking… · {record.size}"
    return None


def summary(record: RunRecord) -> str:
    """The status line once a run has ended."""
    if record.stopped and not record.video:
        return "Stopped."
    parts = [f"**{record.mode}** mode", f"seed {record.seed}",
             f"rendered at {record.size}" + (" in two passes" if record.passes == 2 else "")]
    if record.segment > 1:
        story = f" (the story: {record.story_s:.1f} s)" if record.video else ""
        parts.insert(0, f"segment {record.segment} of at most {MAX_SEGMENTS}{story}")
    for label, value in (("first text", record.ttft), ("first preview", record.first_frame),
                         ("video", record.video_ready)):
        if value is not None:
            parts.append(f"{label} {value:.2f} s")
    lines = [" · ".join(parts)]
    if record.stopped:
        lines.append("ℹ️ Stopped after the video was made: the video is kept, the reasoning ends where it was.")
    lines += [f"ℹ️ {note}" for note in record.notes]
    if record.video_error:
        lines.append(f"⚠️ {record.video_error} Press **Retry video** to render it again.")
    return "  \n".join(lines)


class PageSession:
    """One page's runs: its history (newest first, a story as one entry) and what it holds in the
    run store; the store's lifecycle for each of its runs (`run`, `retry`)."""

    def __init__(self, runs: RunStore, owner: str, history: list[RunRecord]):
        self.runs, self.owner, self.history = runs, owner, list(history)

    @contextlib.contextmanager
    def run(self, record: RunRecord) -> Iterator[Path]:
        """A new run's folder, the session's, while the run is made; then kept or let go, as the
        record says (`RunRecord.keeps_files`). OverShare, in words, past the owner's share."""
        with self.runs.writing(self.owner, keep=lambda: record.keeps_files) as folder:
            record.folder = str(folder)
            yield folder

    @contextlib.contextmanager
    def retry(self, record: RunRecord) -> Iterator[bool]:
        """The run's folder written again (a video-only retry): kept meanwhile -> False if it is gone."""
        with self.runs.rewriting(record.folder) as kept:
            yield kept

    def going_on(self, previous: RunRecord, record: RunRecord) -> story_files.RunFiles:
        """The story `previous` shows, carried once into the new run's folder (its input and
        thumbnail linked too, for the history), so that it stays whatever the budget does to the
        older folder -> the new segment's files. InputError, in words, if it is no longer kept."""
        folder = Path(record.folder)
        if not self.runs.kept(previous.folder):
            raise InputError(GONE)
        try:
            files = story_files.RunFiles.going_on(folder, "pending", story=previous.video)
            record.input, record.thumbnail = (str(story_files.link_or_copy(Path(kept), folder / Path(kept).name))
                                              for kept in (previous.input, previous.thumbnail))
        except (OSError, story_files.StoryGone) as exc:  # its files went meanwhile
            log.info("could not continue a story: %s", exc)
            raise InputError(GONE) from exc
        record.story_name = previous.story_name or previous.name
        record.name = f"{record.story_name}-then{files.segment}"
        record.earlier, record.continues = previous.shown_text + AND_THEN, previous.folder
        return replace(files, name=record.name)

    def ended(self, record: RunRecord) -> list[RunRecord]:
        """The run has ended: a finished video goes first in the history (a retried run replaces
        itself; a story's new segment the segment it continued), the session holds its history and
        this run, and lets go of the rest -> the history, without runs the budget has taken."""
        try:
            if record.video and self.runs.kept(record.folder):
                if record.input is None:
                    source, thumbnail = storage.save_input(record.upload, Path(record.folder))
                    record.input, record.thumbnail = str(source), str(thumbnail)
                replaced = {record.folder, record.continues}
                self.history = [record, *(h for h in self.history if h.folder not in replaced)][:HISTORY_SIZE]
        except (OSError, InputError) as exc:  # the page must unlock whatever happened to the files
            log.info("could not keep the run in the history: %s", exc)
        self.runs.hold(self.owner, [*(h.folder for h in self.history), record.folder])
        self.history = [h for h in self.history if self.runs.kept(h.folder)]
        return self.history

    def select(self, index: int) -> RunRecord | None:
        """The history's entry at `index`, if the server still keeps it; else None, and the history
        without the entries it no longer keeps."""
        item = self.history[index] if index < len(self.history) else None
        if item is None or not self.runs.kept(item.folder):
            self.history = [h for h in self.history if h is not item and self.runs.kept(h.folder)]
            return None
        return item

    def can_go_on(self, record: RunRecord) -> bool:
        """A finished video, still kept with its story's record, whose story has room for another
        segment: "And then?" is offered."""
        return (bool(record.video) and not record.video_error and record.segment < MAX_SEGMENTS
                and self.runs.kept(record.folder) and story_files.record_path(record.video).is_file())
