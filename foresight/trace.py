"""Where a run's time goes: spans on one clock, and the picture of them.

Tracks: `text` (Qwen's work on the thinker), `video` (the renderer's GPU work) and `host` (CPU
work beside them: copying previews off the GPU, JPEG and mp4 encoding).

On CUDA each span's ends are CUDA events recorded in stream order, so a span of GPU work ends when
the GPU finished it, not when Python queued it; CPU work (preprocessing, JPEG, mp4) is timed on
the CPU clock. Times are seconds since the run started.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Mark:
    cpu: float  # seconds since the trace started
    event: torch.cuda.Event | None = None  # recorded on the current stream when the GPU is timed


class Trace:
    def __init__(self, start: float | None = None, cuda: bool = False):
        self.start = time.perf_counter() if start is None else start
        self.cuda = cuda
        self._spans: list[tuple[str, str, Mark, Mark]] = []
        self._reference: Mark | None = None
        if cuda:  # the GPU clock's zero: recorded now, while the GPU is (normally) idle between runs
            self._reference = self.mark(gpu=True)

    def now(self) -> float:
        return time.perf_counter() - self.start

    def mark(self, gpu: bool = True) -> Mark:
        event = None
        if gpu and self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return Mark(self.now(), event)

    def add(self, track: str, name: str, start: Mark, end: Mark) -> None:
        self._spans.append((track, name, start, end))

    @contextmanager
    def span(self, track: str, name: str, gpu: bool = True):
        start = self.mark(gpu)
        try:
            yield
        finally:
            self.add(track, name, start, self.mark(gpu))

    def seconds(self, mark: Mark) -> float:
        if mark.event is None or self._reference is None:
            return mark.cpu
        mark.event.synchronize()
        return self._reference.cpu + self._reference.event.elapsed_time(mark.event) / 1000

    def spans(self) -> list[dict]:
        """[{track, name, start, end}] in seconds, in the order they began."""
        rows = [{"track": track, "name": name, "start": round(self.seconds(a), 4), "end": round(self.seconds(b), 4)}
                for track, name, a, b in self._spans]
        return sorted(rows, key=lambda row: row["start"])


class _NullTrace(Trace):
    """For callers that want no timing (training, the self-check's helpers)."""

    def add(self, track, name, start, end):
        pass


null_trace = _NullTrace()


def write_timeline(path: str | Path, spans: list[dict], token_times: list[float], title: str,
                   events: dict[str, float | None] | None = None) -> Path:
    """One run's timeline as a PNG: text and video spans on one time axis, each token a tick,
    and the moments the user sees something (first text, first preview, mp4) as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"text": 2.0, "video": 1.0, "host": 0.0}
    colors = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(12, 3.6), dpi=110)
    names = sorted({span["name"].split(" ")[0] for span in spans})
    color_of = {name: colors[i % len(colors)] for i, name in enumerate(names)}
    for span in spans:
        y = rows.get(span["track"], -1.0)
        width = max(span["end"] - span["start"], 1e-4)
        kind = span["name"].split(" ")[0]
        ax.barh(y, width, left=span["start"], height=0.5, color=color_of[kind], edgecolor="black", linewidth=0.3)
        if width > 0.02 * max(1e-3, max(s["end"] for s in spans)):
            ax.text(span["start"] + width / 2, y, span["name"], ha="center", va="center", fontsize=6, clip_on=True)
    ax.vlines(token_times, rows["text"] + 0.3, rows["text"] + 0.45, color="black", linewidth=0.6)
    for number, (label, t) in enumerate((events or {}).items()):
        if t is not None:  # labels at three heights, so that close moments stay readable
            ax.axvline(t, color="crimson", linestyle="--", linewidth=0.8)
            ax.text(t, 2.62 - 0.1 * (number % 3), f" {label} {t:.2f}s", fontsize=7, color="crimson", ha="left",
                    va="bottom")
    ax.set_yticks(list(rows.values()), [f"{track}" for track in rows])
    ax.set_ylim(-0.5, 2.8)
    ax.set_xlabel("seconds since the image was submitted (ticks: text tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_trace(folder: str | Path, name: str, complete: dict, title: str) -> tuple[Path, Path]:
    """The spans of a `thinking_complete` event as JSON and its timeline as PNG: `folder/name.{json,png}`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = ("ttft", "first_frame", "video_ready", "video_start", "tokens", "token_times", "spans", "mode", "seed")
    (folder / f"{name}.json").write_text(json.dumps({k: complete.get(k) for k in keys}, indent=1))
    png = write_timeline(folder / f"{name}.png", complete["spans"], complete["token_times"], title,
                         {"first text": complete["ttft"], "first preview": complete["first_frame"],
                          "mp4": complete["video_ready"]})
    return folder / f"{name}.json", png
