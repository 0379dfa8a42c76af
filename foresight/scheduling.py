"""How the thinker and the renderer share one GPU (`Settings.schedule`).

`shared`: both workers queue their kernels on the default CUDA stream, one queue in order, so a
decode step waits behind whatever denoising work the renderer has queued before it (one LTX step
at 512x512x33 is ~43 ms on an H100, one decode step ~11 ms: DESIGN.md, "Performance").

`streams`: each worker thread gets its own stream for its lifetime, the thinker's at the
highest priority the device offers. The GPU dispatches the decode's kernels ahead of the
renderer's pending ones and runs the two side by side. Tensors that cross from one worker to the
other (the prefill's hidden states) are handed over with an event (`PrefillCapture.states_here`).

On a CPU there are no streams and both schedules are the same.
"""

from __future__ import annotations

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
