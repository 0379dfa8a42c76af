"""A run's files, and the story they make: where "And then?" finds what it goes on from.

`RunFiles` is the one writer of a run's files (the page, the API, the CLI and the tools all hand
one to the pipeline): in its folder, named after the mp4, it writes

    <name>.mp4         the whole story so far: a first run's frames, or a continuation's new ones
                       joined to the story's mp4 without re-encoding it (`media.join_mp4`)
    <name>-<preset>-step<N>.jpg, <name>-frame<NNN>.jpg
                       previews and frames, each written once, served as they are
    <name>.story.json  the story so far: its segments (question, text, prediction, mode, preset,
                       seed, the frames each added), its size, rate and frame count; written last
    <name>.tail.mkv    the last segment's last frames, lossless (`media.write_lossless`): what a
                       continuation is conditioned on, never frames decoded back from the lossy mp4
    before/            (a continuation) the story it continued, as it was: hard links to that
                       story's three files, made once when the run begins (`RunFiles.going_on`),
                       so that the earlier run's folder can go, and a retry renders the segment
                       again from the same frames

A bare mp4 (the CLI, a clip sent to the API) is a stranger's file: `import_clip` decodes it under
the clip budget (`inputs.read_clip`) into a one-segment story in `before/`, and it goes on from there
with its last frames and no earlier text.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from PIL import Image

from foresight.config import MAX_SEGMENTS, Preset
from foresight.inputs import InputError, fit_size, crop_and_resize, read_clip
from foresight.media import Mp4Writer, join_mp4, read_lossless, write_jpeg, write_lossless

log = logging.getLogger("foresight.story")
RECORD = ".story.json"
TAIL = ".tail.mkv"
BEFORE = "before"


def record_path(video: Path) -> Path:
    return Path(video).with_suffix(RECORD)


def tail_path(video: Path) -> Path:
    return Path(video).with_suffix(TAIL)


@dataclass(frozen=True)
class Story:
    """A story so far, as its folder holds it."""

    video: Path  # the mp4 of the whole story so far; its record and tail lie beside it
    segments: tuple[dict, ...]
    width: int
    height: int
    fps: int
    num_frames: int

    @property
    def prediction(self) -> str:
        """What the last segment foresaw: the context of the next one's reasoning."""
        return self.segments[-1].get("prediction") or ""

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    def tail(self) -> np.ndarray:
        """The last segment's last frames, as rendered (uint8 [K, H, W, 3])."""
        return read_lossless(tail_path(self.video))

    def check_room(self) -> None:
        """InputError, in words, when the story has all its segments."""
        if len(self.segments) >= MAX_SEGMENTS:
            raise InputError(f"This story has reached its {MAX_SEGMENTS} segments ({self.seconds:.1f} s). Start a new "
                             "one from an image.")


class StoryGone(InputError):
    """No story there to go on from: not a finished video of this app, or its files are gone."""


def load(path: str | Path) -> Story:
    """The story an mp4 ends (or the one story a folder holds: a run's, its `before/`), or
    InputError (StoryGone when there is none)."""
    video = Path(path)
    if video.is_dir():
        records = sorted(video.glob("*" + RECORD))
        if len(records) != 1:
            raise InputError(f"{video} holds {len(records)} stories; name the mp4 to continue.") if records \
                else StoryGone(f"No story to continue in {video}: it has no finished video.")
        video = records[0].with_name(records[0].name[:-len(RECORD)] + ".mp4")
    try:
        record = json.loads(record_path(video).read_text())
    except (OSError, ValueError) as exc:
        raise StoryGone(f"No story to continue at {video}: it is not a finished video of this app.") from exc
    if not video.is_file() or not tail_path(video).is_file():
        raise StoryGone(f"The story at {video} is incomplete; its video or its last frames are gone.")
    return Story(video, tuple(record["segments"]), record["width"], record["height"], record["fps"],
                 record["num_frames"])


def write(video: Path, segments: list[dict], size: tuple[int, int], fps: int, num_frames: int) -> None:
    """The record of the story `video` ends, once it exists (written last: its presence means done)."""
    record = dict(segments=segments, width=size[0], height=size[1], fps=fps, num_frames=num_frames)
    record_path(video).write_text(json.dumps(record, indent=1))


def save_tail(video: Path, frames: np.ndarray, count: int) -> None:
    """The last `count` frames of the story `video` ends, lossless, for the next segment's conditioning."""
    write_lossless(frames[-count:], tail_path(video))


def carry(story: Story, out_dir: Path) -> Story:
    """The story, linked into `out_dir/before/` (hard links: no bytes copied; a copy where links
    cannot be made), so the new segment holds what it continues whatever happens to the old folder."""
    before = Path(out_dir) / BEFORE
    if story.video.parent.resolve() == before.resolve():
        return story
    before.mkdir(parents=True, exist_ok=True)
    for source in (record_path(story.video), tail_path(story.video), story.video):
        link_or_copy(source, before / source.name)
    return load(before / story.video.name)


def link_or_copy(source: Path, target: Path) -> Path:
    """`target` as a hard link to `source` (no bytes copied; either name may then be deleted), or a
    copy where links cannot be made (another file system)."""
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:
        shutil.copyfile(source, target)
    return target


def import_clip(clip: str | Path, out_dir: Path, preset: Preset) -> Story:
    """A bare mp4 as a one-segment story in `out_dir/before/`: its frames at the preset's rate and
    size, encoded once in this app's own format (so that later segments join it without re-encoding),
    and its last frames kept as the tail. InputError if the clip is refused."""
    before = Path(out_dir) / BEFORE
    before.mkdir(parents=True, exist_ok=True)
    video, writer, tail, count = before / "clip.mp4", None, collections.deque(maxlen=preset.condition_frames), 0
    try:
        for frame in read_clip(clip, preset.fps):
            if writer is None:
                size = fit_size(frame.width, frame.height, preset)
                writer = Mp4Writer(video, *size, preset.fps)
            rgb = np.asarray(crop_and_resize(frame, *size))
            writer.send(rgb)
            tail.append(rgb)
            count += 1
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(before, ignore_errors=True)
        raise
    save_tail(video, np.stack(tail), len(tail))
    segment = dict(source="clip", question="", text="", prediction="", mode=None, preset=preset.name, seed=None,
                   frames=count)
    write(video, [segment], size, preset.fps, count)
    return load(video)


def locate(path: str | Path) -> tuple[Path | None, Path | None]:
    """What `--continue PATH` names: (a story: a folder, or an mp4 with its record beside it, None),
    or (None, a bare clip)."""
    path = Path(path)
    return (path, None) if path.is_dir() or record_path(path).is_file() else (None, path)


@contextlib.contextmanager
def said_in_words(what: str = "story"):
    """Reading a story (or importing a clip) to go on from: whatever fails in it (a file gone or
    broken midway, ffmpeg, the record) becomes an InputError in words; InputErrors pass as they are."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a stranger's file can break any reader: said in words, logged in one line
        log.warning("could not read the %s to continue: %r", what, exc)
        raise InputError(f"That {what} could not be read, so it cannot go on. "
                         + ("Start a new one from an image." if what == "story" else
                            "Send an H.264 mp4, such as one this app made.")) from exc


def fitted(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames [F, H, W, 3] at `size` (width, height): a story keeps its first segment's size, and a
    segment rendered smaller (out of memory) is fitted to it before it is encoded, as LTX's
    condition is fitted (centre-cropped to the aspect ratio, bicubic)."""
    if (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames
    return np.stack([np.asarray(crop_and_resize(Image.fromarray(frame), *size)) for frame in frames])


@dataclass(frozen=True)
class RunFiles:
    """Where one run's files go, and the one writer of them (the module's docstring lists them).
    Made by the caller, in the caller's process: a first run's (`first`), or a continuation's, its
    story carried (or a clip imported) into the folder once (`going_on`). Pickles (paths, and the
    story's record), so it crosses into ZeroGPU's worker with the run."""

    folder: Path
    name: str
    story: Story | None = None  # the story this run continues, in folder/before/

    @classmethod
    def first(cls, folder: str | Path, name: str) -> RunFiles:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return cls(Path(folder), name)

    @classmethod
    def going_on(cls, folder: str | Path, name: str, story: str | Path | None = None, clip: str | Path | None = None,
                 preset: Preset | None = None) -> RunFiles:
        """A continuation's files: `story` (an mp4 this app made, or a folder holding one) linked into
        the folder's `before/`, or a bare `clip` imported there at `preset`; InputError, in words,
        when it cannot go on (all its segments, or a file gone or broken)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with said_in_words("story" if clip is None else "clip"):
            if story is None:
                return cls(folder, name, import_clip(clip, folder, preset))
            so_far = load(story)
            so_far.check_room()
            return cls(folder, name, carry(so_far, folder))

    @property
    def video(self) -> Path:
        return self.folder / f"{self.name}.mp4"

    @property
    def segment(self) -> int:
        """Which segment of its story this run makes: 1 for a first run."""
        return len(self.story.segments) + 1 if self.story else 1

    def last_frames(self) -> tuple[Image.Image, ...]:
        """The story's last frames, as rendered: what a continuation's clip begins with."""
        with said_in_words():
            return tuple(Image.fromarray(frame) for frame in self.story.tail())

    def jpeg(self, rgb: np.ndarray, suffix: str) -> str:
        """A frame as `<name>-<suffix>.jpg`, written once -> its path."""
        return str(write_jpeg(rgb, self.folder / f"{self.name}-{suffix}.jpg"))

    def start_video(self, size: tuple[int, int], fps: int) -> Mp4Writer:
        """The mp4's writer, its ffmpeg started now (while the video still renders): the whole clip,
        or a continuation's new part, at the story's size."""
        size = (self.story.width, self.story.height) if self.story else size
        return Mp4Writer(self.folder / f"{self.name}-part.mp4" if self.story else self.video, *size, fps)

    def finish_video(self, writer: Mp4Writer, frames: np.ndarray, overlap: int) -> tuple[int, int]:
        """The rendered frames [F, H, W, 3] in the mp4: a continuation's after its first `overlap`
        (the story's own last frames), fitted to the story's size and joined to its mp4 without
        re-encoding it -> (the mp4's frames, the frames this run added)."""
        new = frames[overlap:] if self.story else frames
        writer.write(fitted(new, writer.size))
        if self.story:
            join_mp4([self.story.video, writer.path], self.video)
            writer.path.unlink()
        return len(new) + (self.story.num_frames if self.story else 0), len(new)

    def keep_tail(self, frames: np.ndarray, count: int) -> None:
        """The last `count` rendered frames, lossless, for the next segment's conditioning."""
        save_tail(self.video, frames, count)

    def keep_record(self, segment: dict, size: tuple[int, int], fps: int, num_frames: int) -> None:
        """The story's record, this run's segment after those before it (written last: it means done)."""
        story = self.story
        write(self.video, [*(story.segments if story else ()), segment],
              (story.width, story.height) if story else size, fps, num_frames)
