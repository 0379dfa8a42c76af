"""How the text and the video share one GPU: streams, pacing, and copies off the critical path.

Streams (`Settings.schedule`):
* `shared`: both workers queue their kernels on the default CUDA stream, one queue in order, so a
  decode step waits behind whatever denoising work the renderer queued before it.
* `streams`: each worker thread gets its own stream for its lifetime, the thinker's at the highest
  priority the device offers, so the GPU dispatches the decode's kernels ahead of the renderer's
  pending ones. Tensors that cross from one worker to the other (the prefill's hidden states) are
  handed over with an event (`vlm.PrefillCapture.states_here`).
On a CPU there are no streams and both schedules are the same.

Pacing (`Settings.text_pace`): the text streams far faster than anyone reads; while the video
renders, `Pacer` holds it to a reading-friendly rate so the denoising steps get the GPU.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch

from foresight.config import SCHEDULES


def worker_streams(schedule: str, device: str) -> tuple[torch.cuda.Stream | None, torch.cuda.Stream | None]:
    """(thinker's stream, renderer's stream); None where a worker stays on the default stream."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if schedule == "shared" or not device.startswith("cuda"):
        return None, None
    priorities = torch.cuda.Stream.priority_range()  # lower numbers are more urgent (CUDA's convention)
    text, video = torch.cuda.Stream(priority=min(priorities)), torch.cuda.Stream(priority=max(priorities))
    # Weights were copied or initialised on the default stream; other streams must not read them early.
    torch.cuda.synchronize()
    return text, video


def use_stream(stream: torch.cuda.Stream | None) -> None:
    """A worker thread's initializer: its current stream from now on (torch keeps one per thread)."""
    if stream is not None:
        torch.cuda.set_stream(stream)


class Pacer:
    """Holds the text to at most `rate` tokens a second while held; `wait()` runs between tokens.

    Sleeping between tokens leaves no decode step queued on the GPU, so the renderer's steps run
    without waiting behind them. `release()` (the video is done, or Stop) wakes a waiting thinker.
    `clock` and `sleep(seconds)` (which returns early on release) are the wall clock's unless a test
    gives its own.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], object] | None = None):
        self._interval = 0.0
        self._next = 0.0
        self._wake = threading.Event()
        self._clock, self._sleep = clock, sleep or self._wake.wait

    @property
    def held(self) -> bool:
        return self._interval > 0

    def hold(self, rate: float) -> None:
        if rate > 0:
            self._wake.clear()
            self._interval, self._next = 1.0 / rate, self._clock()

    def release(self) -> None:
        self._interval = 0.0
        self._wake.set()

    def wait(self) -> None:
        interval = self._interval
        if interval <= 0:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(self._next, now) + interval


class HostCopier:
    """Copies tensors that the GPU is still computing to the CPU on their own stream, off the
    thread that queued them: the renderer queues a preview's decode and goes on to the next step
    while this waits for the decode and copies it (a copy on the renderer's stream would wait for
    the next step too)."""

    def __init__(self, device: str):
        self.stream = torch.cuda.Stream() if device.startswith("cuda") else None

    def ready_marker(self):
        """Call on the producing thread right after queuing the work: marks its end on that stream."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def to_host(self, tensor: torch.Tensor, ready) -> torch.Tensor:
        """On any thread: `tensor` on the CPU once the work before `ready` is done."""
        if self.stream is None:
            return tensor.cpu()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            tensor.record_stream(self.stream)  # not reused by the producer's stream before the copy
            host = tensor.to("cpu", non_blocking=False)
        return host
