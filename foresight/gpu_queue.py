"""The GPU's queue as a visitor meets it: whose turn (`queue_position`, `waiting_line`) and a fair
share of its places (`refused_a_place`, with `Places`), read from Gradio's own queue. Gradio's
objects are only read here, never imported: the page (`page.py`) is the one module that imports
Gradio.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

# The GPU's queue is shared fairly: no visitor (a page session, an API client) holds more than this
# many places, waiting or running; API and MCP calls together no more than this share of its places.
PLACES_PER_VISITOR = 2
API_SHARE = 0.5
API_PLACES = "the API"  # the owner of the API's share in `Places`


def waiting_line(ahead: int, seconds: float | None) -> str:
    runs = "1 run" if ahead == 1 else f"{ahead} runs"
    return f"Waiting: {runs} ahead" + (f" (about {seconds:.0f} s)" if seconds else "") + "."


def queue_position(demo, session_hash: str) -> tuple[int, float | None] | None:
    """(runs ahead, Gradio's estimate of the wait) for this session's waiting run; None if it is not waiting.

    Read from Gradio's own queue (the GPU's concurrency group): the runs queued before this one,
    plus the one running, and Gradio's average run time for the function.
    """
    queue = demo._queue
    waiting = queue.event_queue_per_concurrency_id.get("gpu")
    if waiting is None:
        return None
    for rank, queued in enumerate(list(waiting.queue)):
        if queued.session_hash == session_hash:
            timing = queue.process_time_per_fn.get(queued.fn)
            ahead = rank + waiting.current_concurrency
            return ahead, (timing.avg_time * ahead if timing and timing.avg_time else None)
    return None


def gpu_runs(demo) -> tuple[list, list]:
    """Gradio's events on the GPU's queue: (those waiting, those running)."""
    queue = demo._queue
    group = queue.event_queue_per_concurrency_id.get("gpu")
    running = [ev for job in queue.active_jobs if job for ev in job if ev.concurrency_id == "gpu"]
    return list(group.queue if group else ()), running


class Places:
    """Places on the GPU's queue promised by validators to runs that have not begun. Gradio puts an
    event on its queue only after its validator returns, and validators run side by side: two
    submissions at once would both see the same count, and both be let in. An owner's count is its
    runs running, and the larger of its runs waiting and the places promised to runs not yet begun
    (each counted for `hold_s` at most: an event cancelled before it began is not told here). A run
    Gradio has started whose handler has not yet begun counts twice for that moment: a refusal at
    worst, never a place too many."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, hold_s: float = 10.0):
        self.clock, self.hold_s = clock, hold_s
        self._lock, self._promised = threading.Lock(), {}  # owner -> when each place not yet begun was promised

    def take(self, claims: list[tuple[str, Callable, int]], queue: Callable[[], tuple[list, list]]) -> str | None:
        """One more place for each claim (owner, which of the queue's events are its, its limit), all
        or none: None if taken, else the owner already at its limit. The queue is read (`queue()`:
        waiting, running) under the same lock as `began`, so a run that begins meanwhile is counted
        once, as running."""
        with self._lock:
            now = self.clock()
            self._promised = {owner: fresh for owner, times in self._promised.items()
                              if (fresh := [t for t in times if now - t < self.hold_s])}
            waiting, running = queue()
            for owner, mine, limit in claims:
                count = sum(map(mine, running)) + max(sum(map(mine, waiting)), len(self._promised.get(owner, ())))
                if count >= limit:
                    return owner
            for owner, _, _ in claims:
                self._promised.setdefault(owner, []).append(now)
            return None

    def began(self, *owners: str) -> None:
        """A run of each owner has begun: its place now counts as running."""
        with self._lock:
            for owner in owners:
                if self._promised.get(owner):
                    self._promised[owner].pop(0)


def refused_a_place(demo, session_hash: str | None, api: bool, places: Places) -> str | None:
    """Why a new run may not join the GPU's queue, in words; None if it may (and its place is taken).
    No visitor (a page, an API client) holds more than PLACES_PER_VISITOR places, waiting or running,
    and the API as a whole (MCP calls included) no more than API_SHARE of the queue, so that pages
    are still served. A call without a session (a bare HTTP client) gets an id of Gradio's for its
    event only after this check: it is held by the API's share alone."""
    claims = []
    if session_hash is not None:
        claims.append((session_hash, lambda ev: ev.session_hash == session_hash, PLACES_PER_VISITOR))
    api_places = int(demo._queue.max_size * API_SHARE) if demo._queue.max_size else None
    if api and api_places is not None:
        claims.append((API_PLACES, lambda ev: ev.fn.api_name == "predict", api_places))
    full = places.take(claims, lambda: gpu_runs(demo))
    if full == API_PLACES:
        return (f"The API's share of this GPU's queue ({api_places} places) is taken; visitors of the page keep "
                "the rest. Please try again in a minute.")
    if full is not None:
        return (f"You already have {PLACES_PER_VISITOR} runs on their way; this GPU is shared, so a new one can "
                "start once one of them has finished.")
    return None
