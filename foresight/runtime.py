"""What keeps a run bounded, whatever it runs: worker threads, a deadline, Stop, and what happens to
a worker that does not stop. It knows no model: the pipeline hands it plain jobs.

    runtime = Runtime(lambda: Workers({"thinker": None, "renderer": None}), grace_s=10, health=health)
    shift = runtime.shift(stop, deadline_s=90, clock=trace.now)
    shift.submit("thinker", think)                 # a job; it posts "done" when it ends, whatever happens
    for message in shift.messages():              # until every job has ended, the deadline, or Stop + grace
        ...
    shift.end()                                     # Stop, then up to the grace; whatever is stuck is abandoned

The workers are long-lived threads, one per role, made once per process (a process forked from
this one, as ZeroGPU's worker is, gets its own: it inherits the executors but not their threads).
A job that does not stop within `grace_s` of Stop (or of the deadline) is stuck: its threads are
abandoned (Python cannot end a thread), the next run gets fresh ones, what the run put on shared
models is taken off (`Shift.attach`), and the device's health is judged (`health.DeviceHealth`).

`StopFlag` is a run's Stop. On ZeroGPU the run itself happens in a forked process (`spaces.GPU`
puts the call's arguments through a pickling queue into a worker it forks once and reuses, and
streams the events back the same way), so Stop must cross a process boundary: a
`threading.Event` cannot be pickled at all, and the one thing `spaces` carries back is a closed
generator, which its worker notices only at the run's next event. A StopFlag is a path: setting it
creates the file, and every token and denoising step asks whether the file exists (a `stat`, a few
microseconds), in whichever process it runs.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from foresight.health import DeviceHealth

log = logging.getLogger("foresight")
STOP_DIR = Path(tempfile.gettempdir()) / "foresight-stops"
STOP_LOOK_S = 0.25  # with no message, a run looks at its Stop this often


class StopFlag:
    """A run's Stop, as a file: `set()` in one process is seen by `is_set()` in another. Pickles
    as its path. Used wherever a `threading.Event` would be (`set`, `is_set`)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else STOP_DIR / f"{os.getpid()}-{uuid.uuid4().hex}"
        self._seen = False

    def set(self) -> None:
        self._seen = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def is_set(self) -> bool:
        if not self._seen:
            self._seen = self.path.exists()
        return self._seen

    def discard(self) -> None:
        """The run has ended: its file goes (a flag set later makes it again)."""
        self.path.unlink(missing_ok=True)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path, self._seen = state["path"], False

    def __repr__(self) -> str:
        return f"StopFlag({str(self.path)!r}, set={self.is_set()})"


@dataclass
class Message:
    """What a job reports to the run it works for."""

    kind: str
    data: dict = field(default_factory=dict)


class Workers:
    """One long-lived thread per role (`roles`: role -> its thread's initializer, or None), and what
    a role keeps for its thread's lifetime (`kept`: the thinker's static cache, say)."""

    def __init__(self, roles: dict[str, Callable[[], None] | None], **kept):
        self.executors = {role: ThreadPoolExecutor(1, f"foresight-{role}", initializer=initializer)
                          for role, initializer in roles.items()}
        self.kept = kept
        self.pid = os.getpid()

    def __getitem__(self, role: str) -> ThreadPoolExecutor:
        return self.executors[role]

    def abandon(self) -> None:
        """Never use these threads again: a job is stuck in one of them. Queued work is dropped."""
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)


class Runtime:
    """This process's workers, and the shifts (runs) they work, each kept within its deadline and Stop.

    `make_workers()` makes a process's workers (a plain function: a method of the runtime's owner
    would make a cycle that keeps a dropped owner's threads alive until the garbage collector runs);
    `abandoned` counts the shifts whose workers were left behind."""

    def __init__(self, make_workers: Callable[[], Workers], grace_s: float, health: DeviceHealth):
        self.make_workers, self.grace_s, self.health = make_workers, grace_s, health
        self.abandoned = 0
        self._lock = threading.Lock()
        self._workers: Workers | None = None

    def workers(self) -> Workers:
        """This process's workers, made on first use (a forked child inherits the executors but not
        their threads, and would wait for them forever)."""
        with self._lock:
            if self._workers is None or self._workers.pid != os.getpid():
                self._workers = self.make_workers()
            return self._workers

    def shift(self, stop, deadline_s: float, clock: Callable[[], float] | None = None) -> Shift:
        """A run on this process's workers: `stop` (a StopFlag, or a threading.Event), its deadline
        in seconds since the run began, as `clock` tells them (by default, from now)."""
        if clock is None:
            began = time.monotonic()
            clock = lambda: time.monotonic() - began  # noqa: E731 - a clock from the run's start
        return Shift(self, self.workers(), stop, deadline_s, clock)

    def abandon(self, shift: Shift, why: str) -> None:
        """A shift's job did not stop: take off what it put on shared models, never use its threads
        again, and judge the device (`why`: how it came to be stuck)."""
        shift.detach()
        with self._lock:
            if self._workers is shift.workers:
                self._workers = None
        shift.workers.abandon()
        self.abandoned += 1
        log.warning("a run's worker did not stop: its threads were abandoned (%d so far); the next run gets "
                    "fresh ones", self.abandoned)
        self.health.after_stuck(why)


class Shift:
    """One run on the workers: the jobs it gave them, its deadline and Stop, the messages its jobs
    post, what it put on the shared models, and whom to wake when it ends."""

    def __init__(self, runtime: Runtime, workers: Workers, stop, deadline_s: float, clock: Callable[[], float]):
        self.runtime, self.workers, self.stop, self.deadline_s, self.now = runtime, workers, stop, deadline_s, clock
        self.jobs: list[Future] = []  # each posts a "done" message when it ends
        self.early: list[Future] = []  # begun ahead of need: cancelled or waited for at the end
        self.finished = 0
        self.passed_deadline = False
        self.stop_seen: float | None = None  # when Stop was seen: the jobs then have the grace to end
        self._messages: queue.Queue[Message] = queue.Queue()
        self._held: list[Message] = []
        self._attached: list[Callable[[], None]] = []
        self._wake: list[Callable[[], None]] = []

    def submit(self, role: str, fn: Callable, *args) -> Future:
        """A job on `role`'s thread: it posts `done` (with its role) when it ends, whatever happens."""
        def job():
            try:
                fn(*args)
            finally:
                self.post("done", role=role)

        self.jobs.append(self.workers[role].submit(job))
        return self.jobs[-1]

    def begin_early(self, role: str, fn: Callable, *args) -> Future:
        """Work begun before it is needed (it posts nothing): cancelled, or waited for, at the end."""
        self.early.append(self.workers[role].submit(fn, *args))
        return self.early[-1]

    def post(self, what: str, **data) -> None:
        """A message of kind `what` (its data may have a `kind` of its own: a preview's)."""
        self._messages.put(Message(what, data))

    def attach(self, undo: Callable[[], None]) -> None:
        """Something this run put on the shared models, and how to take it off again (also from
        another thread, if its job is abandoned mid-call)."""
        self._attached.append(undo)

    def detach(self) -> None:
        for undo in self._attached:
            undo()

    def wake(self, waker: Callable[[], None]) -> None:
        """Called when the run ends, before its jobs are waited for (a thinker held by its pacer)."""
        self._wake.append(waker)

    @property
    def over(self) -> bool:
        """Every job so far has ended, or the run was given up."""
        return self.finished >= len(self.jobs) or self.given_up

    @property
    def given_up(self) -> bool:
        """Past its deadline, or its jobs still going a grace after Stop: nothing more is started."""
        return self.passed_deadline or self._stuck_after_stop()

    def messages(self, merge: Callable[[Message, Message], Message | None] = lambda first, then: None
                 ) -> Iterator[Message]:
        """The jobs' messages as they come (`done` ones counted), until the run is `over`. Messages
        waiting behind one another are merged where `merge(first, then)` gives one message."""
        while not self.over:
            limit = self._limit()
            try:
                if self.now() > limit:  # also while messages keep coming
                    raise queue.Empty
                message = self._next(min(limit - self.now(), STOP_LOOK_S), merge)
            except queue.Empty:
                if self.now() > self.deadline_s:
                    self.passed_deadline = True
                continue  # a look at Stop (and at the deadline)
            if message.kind == "done":
                self.finished += 1
            yield message

    def end(self) -> bool:
        """Stop every job at its next token or step and wait for them, up to the grace left; no early
        work left behind. Whatever does not stop by then is abandoned -> whether anything was (what
        the stuck threads may still touch is then the caller's to replace)."""
        self.stop.set()
        for waker in self._wake:
            waker()
        grace = self.runtime.grace_s
        left = grace if self.stop_seen is None else max(0.0, self.stop_seen + grace - self.now())
        pending = [*self.jobs, *(early for early in self.early if not early.cancel())]
        _, stuck = futures_wait(pending, timeout=left)
        if stuck:  # a stage hung, or the device: the health check tells which
            self.runtime.abandon(self, f"passed its {self.deadline_s:.0f} s deadline" if self.passed_deadline
                                 else f"did not stop within {grace:g} s of Stop")
        return bool(stuck)

    def _limit(self) -> float:
        """When to stop waiting: the deadline; once Stop is seen, the grace after it."""
        if self.stop_seen is None and self.stop.is_set():
            self.stop_seen = self.now()
        return self.deadline_s if self.stop_seen is None else min(self.deadline_s,
                                                                    self.stop_seen + self.runtime.grace_s)

    def _stuck_after_stop(self) -> bool:
        return self.stop_seen is not None and self.now() > self.stop_seen + self.runtime.grace_s

    def _next(self, timeout: float, merge) -> Message:
        """The next message, merged with those waiting behind it (a consumer that falls behind gets
        fewer, longer text chunks instead of a backlog). queue.Empty when none comes in time."""
        message = self._held.pop() if self._held else self._messages.get(timeout=max(0.0, timeout))
        while True:
            try:
                following = self._messages.get_nowait()
            except queue.Empty:
                return message
            merged = merge(message, following)
            if merged is None:
                self._held.append(following)
                return message
            message = merged
