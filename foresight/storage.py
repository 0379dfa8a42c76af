"""The files a long-running app leaves behind, kept bounded: one folder per run, and a cache sweep.

Nothing here knows the web framework: the app hands in the folders, who owns each run and whether
that owner is still there.
"""

from __future__ import annotations

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
    until: float | None = None  # an API run: kept to this moment, then deleted
    shown: bool = True  # a session still shows it (its history, its last run)
    writing: bool = True  # the run is still going: never deleted under it


API_OWNER = "api"


class RunStore:
    """Run folders under one root, each belonging to whoever shows it, within one disk budget.

    A page session's runs stay while the session shows them (`hold`); an API run stays `api_keep_s`
    after it is made, long enough to download its files. What nobody shows any more is deleted:
    runs a session let go (`hold`, `release`), API runs past their time, runs of sessions the web
    framework no longer has (`is_live` false: dropped for capacity, which skips its callbacks) and
    folders no run claims (left by an earlier process). Past `max_bytes`, the oldest runs that are
    still shown go too, whole; the page then says so in words when their owner asks for them
    (`kept`). A run being written is never deleted.
    """

    def __init__(self, root: Path, max_bytes: int, api_keep_s: float, is_live: Callable[[str], bool] = lambda _: True,
                 clock: Callable[[], float] = time.time):
        self.root, self.max_bytes, self.api_keep_s = Path(root), max_bytes, api_keep_s
        self.is_live, self.clock = is_live, clock
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    def new(self, owner: str) -> Path:
        """A new run's folder, belonging to `owner` (a session id, or API_OWNER)."""
        now = self.clock()
        name = uuid.uuid4().hex[:12]
        with self._lock:
            self._runs[name] = _Run(owner, now, now + self.api_keep_s if owner == API_OWNER else None)
        folder = self.root / name
        folder.mkdir(parents=True)
        return folder

    def finish(self, folder: str | Path) -> list[Path]:
        """The run has ended: its files are complete. Applies the budget -> what was deleted."""
        with self._lock:
            run = self._runs.get(Path(folder).name)
            if run is not None:
                run.writing = False
        return self.enforce()

    def hold(self, owner: str, folders: Iterable[str | Path]) -> list[Path]:
        """`owner` shows these runs now, and no other of its runs -> what was deleted."""
        shown = {Path(folder).name for folder in folders}
        with self._lock:
            for name, run in self._runs.items():
                if run.owner == owner and run.until is None:
                    run.shown = name in shown
        return self.enforce()

    def release(self, folders: Iterable[str | Path]) -> list[Path]:
        """Nobody shows these runs any more (a stopped run, a session that ended) -> what was deleted."""
        with self._lock:
            for folder in folders:
                run = self._runs.get(Path(folder).name)
                if run is not None:
                    run.shown, run.writing, run.until = False, False, None
        return self.enforce()

    def kept(self, folder: str | Path | None) -> bool:
        """Whether this run's files are still here."""
        return folder is not None and Path(folder).name in self._runs and Path(folder).is_dir()

    def enforce(self) -> list[Path]:
        """Delete what nobody shows, then the oldest runs until the budget holds -> the folders deleted."""
        with self._lock:
            now, doomed = self.clock(), []
            for folder in self.root.iterdir():
                run = self._runs.get(folder.name)
                if folder.is_dir() and (run is None or self._unwanted(run, now)):
                    doomed.append(folder)
            sizes = {folder.name: folder_bytes(folder) for folder in self.root.iterdir()
                     if folder.is_dir() and folder not in doomed}
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
        if run.until is not None:
            return now > run.until
        return not run.shown or not self.is_live(run.owner)


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
