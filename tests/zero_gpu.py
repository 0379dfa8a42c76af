"""ZeroGPU as a Space runs it, on this machine: the `spaces` package's own wrapper (`spaces.GPU`), with
only what needs Hugging Face's servers answered here.

What stays real is what a run crosses: `spaces.GPU` forks a worker process once and reuses it, puts
each call's arguments through a pickling queue into it, streams back what the call yields through
another, and on a closed generator sets its stop event. What is answered here: the lease (`schedule`,
`allow`, `release`: no GPU to lend) and the moving of CUDA tensors into the worker (`spaces.zero.torch`:
the tiny models run on the CPU). The lease's asked-for duration is kept, to be checked.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from datetime import timedelta
from types import SimpleNamespace

import pytest


@contextlib.contextmanager
def zero_gpu_like():
    """ZeroGPU's environment and `spaces.GPU`'s real wrapper -> the leases asked for (their durations)."""
    import spaces.config
    import spaces.zero.client as client
    import spaces.zero.torch as zero_torch

    leases: list[timedelta] = []

    def schedule(task_id, request=None, duration=None, gpu_size=None):
        leases.append(duration)
        return SimpleNamespace(allowToken="token", nvidiaIndex=0, nvidiaUUID="GPU-0", idle=True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPACES_ZERO_GPU", "true")
        patch.setattr(spaces.config.Config, "zero_gpu", True)
        patch.setattr(client, "schedule", schedule)
        patch.setattr(client, "allow", lambda allow_token: None)
        patch.setattr(client, "release", lambda allow_token, fail=False, allow_404=False: None)
        patch.setattr(client, "get_duration_seconds", lambda duration, gpu_size: duration.total_seconds())
        for name in ("enter_mode", "unpatch", "init", "move"):
            patch.setattr(zero_torch, name, lambda *args, **kwargs: None)
        patch.setattr(zero_torch, "size", lambda: 0)
        try:
            yield leases
        finally:
            for child in multiprocessing.active_children():  # the wrapper's workers, forked for these calls
                child.kill()
                child.join(10)


@pytest.fixture
def zero_gpu():
    with zero_gpu_like() as leases:
        yield leases
