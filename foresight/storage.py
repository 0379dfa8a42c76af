"""The files a long-running app leaves behind, kept bounded: one folder per run, and a cache sweep.

Nothing here knows the web framework: the app hands in the folders, who owns each run and whether
that owner is still there.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable

from PIL import Image

from foresight.inputs import load_image

THUMBNAIL_WIDTH = 160


def video_name(source: str | Path | None, seed: int) -> str:
    """The mp4's file name, which is also what a download is called: after the input and the seed."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(source or "image")).stem).strip("-")[:40] or "image"
    return f"{stem}-seed{seed}"


@dataclass
class _Run:
    owner: str  # a page session's id, or API_OWNER
    created: float
    until: float | None = None  # an API run: kept to this moment (from its end), then deleted
    shown: bool = True  # a session still shows it (its history, its last run)
    writing: bool = True  # the run is still going: never deleted under it


API_OWNER = "api"


class RunStore:
    """Run folders under one root, each belonging to whoever shows it, within one disk budget.

    A page session's runs stay while the session shows them (`hold`); an API run stays `api_keep_s`
    after it ends, long enough to download its files. What nobody shows any more is deleted: runs
    a session let go (`hold`, `release`), API runs past their time, runs of sessions the web
    framework no longer has (`is_live` false: dropped for capacity, which skips its callbacks) and
    folders no run claims. Past `max_bytes`, the oldest runs still shown (or still in their
    download time) go too, whole; the page then says so in words when their owner asks for them
    (`kept`). A run being written is never deleted.

    The root is this process's own folder under `parent`: two apps sharing Gradio's upload folder
    never take each other's runs; a folder left by a process that is gone is deleted.
    """

    def __init__(self, parent: Path, max_bytes: int, api_keep_s: float,
                 is_live: Callable[[str], bool] = lambda _: True, clock: Callable[[], float] = time.time):
        self.root = Path(parent) / str(os.getpid())
        self.max_bytes, self.api_keep_s, self.is_live, self.clock = max_bytes, api_keep_s, is_live, clock
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in Path(parent).iterdir():
            if folder.is_dir() and folder.name.isdigit() and not process_exists(int(folder.name)):
                shutil.rmtree(folder, ignore_errors=True)

    def new(self, owner: str) -> Path:
        """A new run's folder, belonging to `owner` (a session id, or API_OWNER)."""
        name = uuid.uuid4().hex[:12]
        with self._lock:
            self._runs[name] = _Run(owner, self.clock())
        folder = self.root / name
        folder.mkdir(parents=True)
        return folder

    def reopen(self, folder: str | Path | None) -> bool:
        """The run is written again (a video-only retry): not deleted until `finish`. False if it is gone."""
        with self._lock:
            run = self._runs.get(Path(folder).name) if folder else None
            if run is None or not Path(folder).is_dir():
                return False
            run.writing = True
            return True

    def finish(self, folder: str | Path) -> list[Path]:
        """The run has ended: its files are complete. Applies the budget -> what was deleted."""
        with self._lock:
            run = self._runs.get(Path(folder).name)
            if run is not None:
                run.writing = False
                if run.owner == API_OWNER:
                    run.until = self.clock() + self.api_keep_s
        return self.enforce()

    def hold(self, owner: str, folders: Iterable[str | Path | None]) -> list[Path]:
        """`owner` shows these runs now, and no other of its runs -> what was deleted."""
        shown = {Path(folder).name for folder in folders if folder}
        with self._lock:
            for name, run in self._runs.items():
                if run.owner == owner:
                    run.shown = name in shown
        return self.enforce()

    def let_go(self, folders: Iterable[str | Path | None]) -> None:
        """Nobody shows these runs any more (a stopped run, a session that ended): deleted at the
        next `enforce`. Cheap, for Gradio's state callbacks, which run on its event loop."""
        with self._lock:
            for folder in folders:
                run = self._runs.get(Path(folder).name) if folder else None
                if run is not None:
                    run.shown, run.writing, run.until = False, False, None

    def release(self, folders: Iterable[str | Path | None]) -> list[Path]:
        """`let_go`, and delete them now -> what was deleted."""
        self.let_go(folders)
        return self.enforce()

    def kept(self, folder: str | Path | None) -> bool:
        """Whether this run's files are still here."""
        return bool(folder) and Path(folder).name in self._runs and Path(folder).is_dir()

    def enforce(self) -> list[Path]:
        """Delete what nobody shows, then the oldest runs until the budget holds -> the folders deleted."""
        with self._lock:
            now = self.clock()
            folders = [folder for folder in self.root.iterdir() if folder.is_dir()]
            doomed = [folder for folder in folders
                      if folder.name not in self._runs or self._unwanted(self._runs[folder.name], now)]
            sizes = {folder.name: folder_bytes(folder) for folder in folders if folder not in doomed}
            total = sum(sizes.values())
            for name in sorted(sizes, key=lambda name: self._runs[name].created):
                if total <= self.max_bytes:
                    break
                if not self._runs[name].writing:
                    doomed.append(self.root / name)
                    total -= sizes[name]
            for folder in doomed:
                self._runs.pop(folder.name, None)
                shutil.rmtree(folder, ignore_errors=True)
            return doomed

    def _unwanted(self, run: _Run, now: float) -> bool:
        if run.writing:
            return False
        if run.owner == API_OWNER:
            return run.until is None or now > run.until
        return not run.shown or not self.is_live(run.owner)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, alive
        return True
    return True


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            continue
    return total


def keep_upload(source: str | Path | None, folder: Path) -> Path | str | None:
    """The run's own copy of the uploaded file, as uploaded (a copy is quick; decoding is the
    pipeline's, once): the upload itself lives in the web framework's cache, which is swept.
    No file, no copy: the pipeline refuses that with its own message."""
    if source is None or not Path(source).is_file():
        return source
    copy = Path(folder) / f"upload{Path(source).suffix.lower()}"
    shutil.copyfile(source, copy)
    return copy


def save_input(source, folder: Path) -> tuple[Path, Path]:
    """The input as the pipeline loads it (EXIF rotation, transparency on white, 16-bit scaled), saved
    for the run's history: (the image, a thumbnail)."""
    image = load_image(source)
    original, thumbnail = Path(folder) / "input.png", Path(folder) / "thumbnail.jpg"
    image.save(original)
    height = max(1, round(THUMBNAIL_WIDTH * image.height / image.width))
    image.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS).save(thumbnail, quality=85)
    return original, thumbnail


def sweep(folder: Path, max_age_s: float, max_bytes: int, keep: set[str] = frozenset(),
          skip: Path | None = None) -> int:
    """Delete files older than `max_age_s`, then the oldest until the folder holds at most
    `max_bytes`; never those in `keep`, nor anything under `skip` (the runs, which a RunStore keeps).
    Returns how many were deleted."""
    now, removed, total = time.time(), 0, 0
    files = []
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file() and not (skip is not None and path.is_relative_to(skip)):
                stat = path.stat()
                total += stat.st_size
                if str(path) not in keep:
                    files.append((stat.st_mtime, stat.st_size, path))
        except FileNotFoundError:
            continue
    files.sort()
    for mtime, size, path in files:
        if now - mtime <= max_age_s and total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed += 1
    return removed


def keep_swept(folder: Path, max_age_s: float, max_bytes: int, keep: Callable[[], set[str]],
               skip: Path | None = None) -> threading.Thread:
    """Sweep `folder` (uploads) in a background thread every half `max_age_s`, and at least every 10 s."""
    def loop():
        while True:
            time.sleep(min(10.0, max(1.0, max_age_s / 2)))
            sweep(folder, max_age_s, max_bytes, keep(), skip)

    thread = threading.Thread(target=loop, daemon=True, name="foresight-cache-sweeper")
    thread.start()
    return thread
