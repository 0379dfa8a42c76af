"""Run folders belong to whoever shows them, within one disk budget (storage.RunStore)."""

from foresight.storage import API_OWNER, RunStore


def make_run(store, owner, size=1000):
    folder = store.new(owner)
    (folder / "clip.mp4").write_bytes(b"x" * size)
    return folder


def test_runs_nobody_shows_go_and_shown_ones_stay_within_the_budget(tmp_path):
    live = {"a", "b"}
    now = [0.0]
    (tmp_path / "999999999").mkdir()  # the runs of an app that is gone
    store = RunStore(tmp_path, max_bytes=10_000, api_keep_s=60, is_live=lambda s: s in live, clock=lambda: now[0])
    assert [p.name for p in tmp_path.iterdir()] == [store.root.name], "each process has its own runs"
    (store.root / "left-by-an-earlier-process").mkdir()
    a1, a2, b1 = make_run(store, "a"), make_run(store, "a"), make_run(store, "b")
    api = make_run(store, API_OWNER)
    for folder in (a1, a2, b1, api):
        store.finish(folder)
    assert not (store.root / "left-by-an-earlier-process").exists(), "folders no run claims go"
    assert store.hold("a", [a2]) == [a1], "a run its session no longer shows goes"
    now[0] += 59
    assert store.enforce() == [], "an API run stays its download time after it ended"
    now[0] += 2
    assert store.enforce() == [api], "and then goes"
    live.discard("b")  # Gradio dropped the session for capacity, skipping its callbacks
    assert store.enforce() == [b1]
    assert store.kept(a2) and not store.kept(a1) and not store.kept(None)
    store.let_go([a2, None])  # a Gradio state callback: marks only, and a record with no run is fine
    assert store.kept(a2) and store.hold("a", [None]) == [a2], "a session that ended lets go of what it showed"


def test_a_retry_reopens_its_run_so_the_budget_does_not_take_it_midway(tmp_path):
    clock = iter(range(100))
    store = RunStore(tmp_path, max_bytes=1500, api_keep_s=60, clock=lambda: next(clock))
    old = make_run(store, "a")
    store.finish(old)
    assert store.reopen(old) and not store.reopen(None) and not store.reopen(tmp_path / "gone")
    other = make_run(store, "b")
    assert store.finish(other) == [other] and store.kept(old), "being written again: the budget takes another"
    assert store.finish(old) == []


def test_past_the_budget_the_oldest_shown_runs_go_but_never_one_being_written(tmp_path):
    clock = iter(range(100))
    store = RunStore(tmp_path, max_bytes=2500, api_keep_s=60, clock=lambda: next(clock))
    first = make_run(store, "a")
    assert store.finish(first) == []
    second, writing = make_run(store, "b"), make_run(store, "c")
    assert store.finish(second) == [first], "over the budget: the oldest run goes, though its session still shows it"
    newest = make_run(store, "d", size=1200)
    assert store.finish(newest) == [second]
    assert store.kept(writing) and store.kept(newest), "a run still being written stays; the budget holds again"
