"""The files a long-running app leaves behind, kept bounded: one folder per run, and a cache sweep.

Nothing here knows the web framework: the app hands in the folders, who owns each run and whether
that owner is still there.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from PIL import Image

from foresight.inputs import InputError, load_image

THUMBNAIL_WIDTH = 160
UPLOAD_NAME = "upload"  # the visitor's bytes, in the run's private folder: no suffix of theirs
log = logging.getLogger("foresight.storage")


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


API_OWNER = "api"  # every API and MCP run: one owner, one share
OWNER_SHARE = 0.25  # of the budget, at most, for any one owner (a page session, or the API as a whole)


class OverShare(InputError):
    """An owner's runs being written already fill its share of the disk budget."""


class RunStore:
    """Run folders under one root, each belonging to whoever shows it, within one disk budget.

    A page session's runs stay while the session shows them (`hold`); an API run stays `api_keep_s`
    after it ends, long enough to download its files. What nobody shows any more is deleted: runs
    a session let go (`hold`, `let_go`, `release`), API runs past their time, runs of sessions the
    web framework no longer has (`is_live` false: dropped for capacity, which skips its callbacks)
    and folders no run claims. No owner keeps more than `owner_share` of the budget: past it, its
    own oldest runs go first (its newest stays, whatever its size), and a new run of an owner whose
    runs being written fill its share is refused in words (`OverShare`). Past `max_bytes`, the
    oldest runs still shown (or still in their download time) go too, whole; the page then says so
    in words when their owner asks for them (`kept`). A run being written is never deleted.

    Each run has a served folder (under `parent`, which the web framework serves) and a private
    one (under `private_parent`, which it must not): what a visitor sent is kept in the private
    one, under a fixed name (`keep_upload`). Both are this process's own (a folder named after
    its pid): two apps sharing Gradio's upload folder never take each other's runs; a folder left
    by a process that is gone is deleted.
    """

    def __init__(self, parent: Path, private_parent: Path, max_bytes: int, api_keep_s: float,
                 is_live: Callable[[str], bool] = lambda _: True, clock: Callable[[], float] = time.time,
                 owner_share: float = OWNER_SHARE):
        self.root = Path(parent) / str(os.getpid())
        self.private_root = Path(private_parent) / str(os.getpid())
        self.max_bytes, self.api_keep_s, self.is_live, self.clock = max_bytes, api_keep_s, is_live, clock
        self.share_bytes = max_bytes * owner_share
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        for base, mine in ((Path(parent), self.root), (Path(private_parent), self.private_root)):
            mine.mkdir(parents=True, exist_ok=True)
            for folder in base.iterdir():
                if folder.is_dir() and folder.name.isdigit() and not process_exists(int(folder.name)):
                    shutil.rmtree(folder, ignore_errors=True)

    def new(self, owner: str) -> Path:
        """A new run's folder, belonging to `owner` (a session id, or API_OWNER); OverShare, in
        words, when that owner's runs still being written already fill its share."""
        with self._lock:
            writing = sum(self._bytes(name) for name, run in self._runs.items() if run.owner == owner and run.writing)
            if writing > self.share_bytes:
                raise OverShare(f"Your runs still being made hold {writing / 2**20:.0f} MB, this server's share for "
                                f"one visitor ({self.share_bytes / 2**20:.0f} MB). Wait for them to finish, then "
                                "try again.")
            name = uuid.uuid4().hex[:12]
            self._runs[name] = _Run(owner, self.clock())
        (self.root / name).mkdir(parents=True)
        self.private(name).mkdir(parents=True)
        return self.root / name

    @contextlib.contextmanager
    def writing(self, owner: str, keep: Callable[[], bool]) -> Iterator[Path]:
        """A new run's folder (`new`) while the run is written; then kept (`finish`) if `keep()`
        says so, else deleted (`release`): one run's lifecycle in one place."""
        folder = self.new(owner)
        try:
            yield folder
        finally:
            if keep():
                self.finish(folder)
            else:
                self.release([folder])

    @contextlib.contextmanager
    def rewriting(self, folder: str | Path | None) -> Iterator[bool]:
        """A run's folder written again (a video-only retry): never deleted meanwhile (`reopen`),
        then finished -> False, and nothing held, if it is gone."""
        if not self.reopen(folder):
            yield False
            return
        try:
            yield True
        finally:
            self.finish(folder)

    def private(self, folder: str | Path) -> Path:
        """The run's private folder, never served: what the visitor sent."""
        return self.private_root / Path(folder).name

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
        """Nobody shows these runs any more (a session that ended): deleted at the next `enforce`
        once they are not being written. Cheap, for Gradio's state callbacks, which run on its
        event loop; a run being written (a retry) stays until it finishes."""
        with self._lock:
            for folder in folders:
                run = self._runs.get(Path(folder).name) if folder else None
                if run is not None:
                    run.shown, run.until = False, None

    def release(self, folders: Iterable[str | Path | None]) -> list[Path]:
        """The writer's own end of runs with nothing to keep (stopped, refused): deleted now -> what was deleted."""
        with self._lock:
            for folder in folders:
                run = self._runs.get(Path(folder).name) if folder else None
                if run is not None:
                    run.shown, run.writing, run.until = False, False, None
        return self.enforce()

    def kept(self, folder: str | Path | None) -> bool:
        """Whether this run's files are still here."""
        return bool(folder) and Path(folder).name in self._runs and Path(folder).is_dir()

    def enforce(self) -> list[Path]:
        """Delete what nobody shows, then each owner's oldest past its share, then the oldest runs
        until the budget holds -> the (served) folders deleted."""
        with self._lock:
            now = self.clock()
            names = {folder.name for base in (self.root, self.private_root) for folder in base.iterdir()
                     if folder.is_dir()}
            doomed = [name for name in names if name not in self._runs or self._unwanted(self._runs[name], now)]
            sizes = {name: self._bytes(name) for name in names if name not in doomed}
            oldest_first = sorted(sizes, key=lambda name: self._runs[name].created)
            owned, newest = collections.Counter(), {}
            for name in oldest_first:
                owned[self._runs[name].owner] += sizes[name]
                newest[self._runs[name].owner] = name
            for name in oldest_first:  # each owner within its share: its own oldest go (its newest stays)
                run = self._runs[name]
                if owned[run.owner] > self.share_bytes and not run.writing and newest[run.owner] != name:
                    doomed.append(name)
                    owned[run.owner] -= sizes.pop(name)
            total = sum(sizes.values())
            for name in oldest_first:  # the budget: the oldest go, whoever shows them
                if total <= self.max_bytes:
                    break
                if name in sizes and not self._runs[name].writing:
                    doomed.append(name)
                    total -= sizes.pop(name)
            for name in doomed:
                self._runs.pop(name, None)
                shutil.rmtree(self.root / name, ignore_errors=True)
                shutil.rmtree(self.private_root / name, ignore_errors=True)
            return [self.root / name for name in doomed]

    def _bytes(self, name: str) -> int:
        return folder_bytes(self.root / name) + folder_bytes(self.private_root / name)

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


def keep_upload(source: str | Path | None, private: Path) -> Path | str | None:
    """The run's own copy of what the visitor sent, as sent (a copy is quick; decoding is the
    pipeline's, once), in the run's private folder under a fixed name: never served, whatever the
    visitor named it (a valid PNG named `x.html`, served under that name, would be a page on this
    app's origin). The upload itself lives in the web framework's cache, which is swept. No file,
    no copy: the pipeline refuses that with its own message."""
    if source is None or not Path(source).is_file():
        return source
    copy = Path(private) / UPLOAD_NAME
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
    `max_bytes`; never those in `keep`, nor anything under `skip` (the runs, which a RunStore keeps:
    not even walked). Files and folders that vanish meanwhile (Gradio's own deletions, a run let
    go) are passed over. Returns how many were deleted."""
    now, removed, total = time.time(), 0, 0
    files = []
    for parent, folders, names in os.walk(folder):  # os.walk passes over folders that vanish; rglob raises
        if skip is not None:
            folders[:] = [name for name in folders if Path(parent, name) != Path(skip)]
        for name in names:
            path = Path(parent, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            total += stat.st_size
            if str(path) not in keep:
                files.append((stat.st_mtime, stat.st_size, path))
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
            try:
                sweep(folder, max_age_s, max_bytes, keep(), skip)
            except OSError as exc:  # the next sweep tries again; one line, never a dead thread's traceback
                log.warning("the cache sweep could not finish: %r", exc)

    thread = threading.Thread(target=loop, daemon=True, name="foresight-cache-sweeper")
    thread.start()
    return thread
