"""The files a long-running app leaves behind, kept bounded: one folder per run, and a cache sweep.

Nothing here knows the web framework: the app hands in the folders and what must be kept.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from foresight.inputs import load_image

THUMBNAIL_WIDTH = 160


def run_folder(outputs: Path, run_id: str) -> Path:
    folder = Path(outputs) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def video_name(source: str | Path | None, seed: int) -> str:
    """The mp4's file name, which is also what a download is called: after the input and the seed."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(source or "image")).stem).strip("-")[:40] or "image"
    return f"{stem}-seed{seed}"


def keep_newest_runs(outputs: Path, keep: int) -> None:
    """Delete all but the newest `keep` run folders."""
    folders = sorted((p for p in Path(outputs).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for folder in folders[:-keep or None]:
        shutil.rmtree(folder, ignore_errors=True)


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


def sweep(folder: Path, max_age_s: float, max_bytes: int, keep: set[str] = frozenset()) -> int:
    """Delete files older than `max_age_s`, then the oldest until the folder holds at most
    `max_bytes`; never those in `keep`. Returns how many were deleted."""
    now, removed, total = time.time(), 0, 0
    files = []
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
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


def keep_swept(folder: Path, max_age_s: float, max_bytes: int, keep: Callable[[], set[str]]) -> threading.Thread:
    """Sweep `folder` in a background thread every half `max_age_s`, and at least every 10 s (at
    GPU speed a run adds about a megabyte a second to Gradio's cache)."""
    def loop():
        while True:
            time.sleep(min(10.0, max(1.0, max_age_s / 2)))
            sweep(folder, max_age_s, max_bytes, keep())

    thread = threading.Thread(target=loop, daemon=True, name="foresight-cache-sweeper")
    thread.start()
    return thread
