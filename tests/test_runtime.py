"""The runtime on its own, with plain jobs and no model: a run ends when its jobs do, at its
deadline, or a grace after Stop; a job that does not stop is abandoned with its threads, the next
run gets fresh ones, and what the run put on shared things is taken off."""

import itertools
import threading

from foresight.runtime import Message, Runtime, StopFlag, Workers

SAFETY_S = 10  # a stuck job gives up after this, so a broken runtime fails the test instead of hanging it


class Health:
    """Records what the runtime tells the health check."""

    def __init__(self):
        self.told = []

    def after_stuck(self, why):
        self.told.append(why)


def runtime(grace_s=0.2):
    return Runtime(lambda: Workers({"thinker": None, "renderer": None}), grace_s=grace_s, health=Health())


def kinds_until_over(shift) -> list[str]:
    """The kinds of a shift's messages until it is over, read on another thread: a runtime that
    never ends a run fails here, after SAFETY_S, instead of hanging the suite."""
    seen, reader = [], threading.Thread(target=lambda: seen.extend(m.kind for m in shift.messages()), daemon=True)
    reader.start()
    reader.join(SAFETY_S + 5)
    assert not reader.is_alive(), "the run never ended"
    return seen


def ticking(step=0.1):
    """A clock that moves `step` seconds each time it is read: deadlines pass without waiting for them."""
    counter = itertools.count()
    return lambda: next(counter) * step


def test_a_run_ends_when_its_jobs_do_and_merges_what_waits():
    rt = runtime()
    shift = rt.shift(threading.Event(), deadline_s=60)

    def think():
        for chunk in ("a", "b", "c"):
            shift.post("text", chunk=chunk)

    shift.submit("thinker", think).result(SAFETY_S)
    merge = lambda first, then: Message("text", {"chunk": first.data["chunk"] + then.data["chunk"]}) \
        if first.kind == then.kind == "text" else None
    seen = [(m.kind, m.data) for m in shift.messages(merge)]
    assert seen == [("text", {"chunk": "abc"}), ("done", {"role": "thinker"})], "waiting text comes merged"
    assert shift.over and not shift.passed_deadline and shift.end() is False and rt.abandoned == 0


def test_a_job_that_never_returns_ends_the_run_at_its_deadline_and_is_abandoned():
    rt = runtime()
    shared_hooks = ["the run's hook"]
    release = threading.Event()
    first = rt.shift(threading.Event(), deadline_s=1.0, clock=ticking())
    first.attach(lambda: shared_hooks.remove("the run's hook"))
    stuck = first.submit("renderer", release.wait, SAFETY_S)
    assert kinds_until_over(first) == [] and first.passed_deadline, "given up at the deadline"
    try:
        assert first.end() is True and not stuck.done()
        assert rt.abandoned == 1, "counted"
        assert rt.health.told == ["passed its 1 s deadline"]
        assert shared_hooks == [], "what the stuck run put on shared things is taken off"
        second = rt.shift(threading.Event(), deadline_s=60)
        assert second.workers is not first.workers, "the next run gets fresh threads"
        assert second.submit("renderer", lambda: None).result(SAFETY_S) is None, "and they are free"
        assert [m.kind for m in second.messages()] == ["done"] and second.end() is False
    finally:
        release.set()


def test_stop_gives_the_jobs_a_grace_then_abandons_one_that_does_not_stop():
    rt = runtime()
    stop, release = StopFlag(), threading.Event()
    shift = rt.shift(stop, deadline_s=3600, clock=ticking())

    def ignores_stop():
        stop.set()  # Stop, pressed while this job hangs
        release.wait(SAFETY_S)

    shift.submit("thinker", ignores_stop)
    try:
        assert kinds_until_over(shift) == [] and not shift.passed_deadline
        assert shift.end() is True and rt.health.told == ["did not stop within 0.2 s of Stop"]
    finally:
        release.set()
        stop.discard()


def test_a_job_that_stops_in_its_grace_abandons_nothing_and_early_work_not_begun_is_dropped():
    rt = runtime(grace_s=5)
    stop, gate = threading.Event(), threading.Event()
    shift = rt.shift(stop, deadline_s=60)
    shift.submit("thinker", lambda: stop.wait(SAFETY_S))  # ends as soon as Stop is set
    shift.submit("renderer", gate.wait, SAFETY_S)
    never = shift.begin_early("renderer", lambda: 1 / 0)  # queued behind the renderer's job
    stop.set()
    gate.set()
    assert shift.end() is False and rt.abandoned == 0
    assert never.cancelled() or never.exception() is not None
