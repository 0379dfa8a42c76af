"""Whether the GPU still answers: judged after each run whose workers did not stop.

A run whose worker does not stop (past its deadline, or after Stop) is ended and its stuck threads
are abandoned (`pipeline.ForesightPipeline`); the next run gets fresh ones. That is enough when
one stage hung (a stalled ffmpeg pipe, a deadlock). When the device itself hangs, every run after
it would hang too: then the process stops taking runs, says why, and asks for a restart
(`serving.restart`). Abandoned threads are never ended (Python cannot), and each holds what its
run held: past MAX_ABANDONED in one process, it asks for a restart too.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from foresight.config import PROBE_TIMEOUT_S

REPEAT_WINDOW_S = 600.0  # a second stuck run this soon after the first: the device, not a stage
MAX_ABANDONED = 3  # runs whose threads were left behind in this process: past it, a restart


def probe_device(device: str) -> None:
    """One tiny kernel and a wait for it: returns at once on a device that answers."""
    import torch

    torch.ones(1, device=device).add_(1).sum().item()


class DeviceHealth:
    def __init__(self, device: str, probe: Callable[[], None] | None = None,
                 on_broken: Callable[[str], None] = lambda why: None, probe_timeout_s: float = PROBE_TIMEOUT_S,
                 window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 max_abandoned: int = MAX_ABANDONED):
        self.probe = probe or (lambda: probe_device(device))
        self.on_broken, self.probe_timeout_s, self.window_s, self.clock = on_broken, probe_timeout_s, window_s, clock
        self.max_abandoned = max_abandoned
        self.broken: str | None = None  # why no run is taken any more
        self.stuck: list[float] = []  # when each run's workers were abandoned

    def after_stuck(self, why: str) -> None:
        """A run's workers did not stop (`why`: "passed its 90 s deadline", "did not stop after Stop")
        and were abandoned: decide whether the device is gone, or this process has left too many behind."""
        now = self.clock()
        recent = [t for t in self.stuck if now - t < self.window_s]
        self.stuck.append(now)
        if len(self.stuck) >= self.max_abandoned:
            self._break(f"{len(self.stuck)} runs' threads are stuck in this process (the last {why})")
        elif recent:
            self._break(f"two runs' workers did not stop within {self.window_s / 60:.0f} minutes (the last {why})")
        elif not self._answers():
            self._break(f"the GPU did not answer a one-kernel probe within {self.probe_timeout_s:g} s")

    def _answers(self) -> bool:
        """The probe returned in time, without an error (a CUDA error there means the device is gone too)."""
        answered = threading.Event()

        def run():
            try:
                self.probe()
                answered.set()
            except Exception:  # noqa: BLE001 - an error is no answer
                pass

        thread = threading.Thread(target=run, daemon=True, name="foresight-probe")
        thread.start()
        thread.join(self.probe_timeout_s)
        return answered.is_set()

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            self.on_broken(why)
