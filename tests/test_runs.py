"""Run folders belong to whoever shows them, within one disk budget and a share of it per owner
(storage.RunStore); the cache's sweep keeps going whatever vanishes under it."""

import os

import pytest

from foresight.storage import API_OWNER, UPLOAD_NAME, OverShare, RunStore, keep_upload, sweep


def store_in(tmp_path, **kwargs):
    (tmp_path / "runs").mkdir(exist_ok=True)
    return RunStore(tmp_path / "runs", tmp_path / "private", **kwargs)


def make_run(store, owner, size=1000):
    folder = store.new(owner)
    (folder / "clip.mp4").write_bytes(b"x" * size)
    return folder


def test_runs_nobody_shows_go_and_shown_ones_stay_within_the_budget(tmp_path):
    live = {"a", "b"}
    now = [0.0]
    (tmp_path / "runs" / "999999999").mkdir(parents=True)  # the runs of an app that is gone
    store = store_in(tmp_path, max_bytes=10_000, api_keep_s=60, is_live=lambda s: s in live, clock=lambda: now[0])
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [store.root.name], "each process has its own runs"
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
    store = store_in(tmp_path, max_bytes=1500, api_keep_s=60, clock=lambda: next(clock), owner_share=1)
    old = make_run(store, "a")
    store.finish(old)
    assert store.reopen(old) and not store.reopen(None) and not store.reopen(tmp_path / "gone")
    other = make_run(store, "b")
    assert store.finish(other) == [other] and store.kept(old), "being written again: the budget takes another"
    store.let_go([old])  # the page's session ended meanwhile (a Gradio state callback)
    other = make_run(store, "c")
    assert store.finish(other) == [other] and store.kept(old), "still being written: letting go waits for its end"
    assert store.finish(old) == [old], "then it goes, as nobody shows it"


def test_past_the_budget_the_oldest_shown_runs_go_but_never_one_being_written(tmp_path):
    clock = iter(range(100))
    store = store_in(tmp_path, max_bytes=2500, api_keep_s=60, clock=lambda: next(clock), owner_share=1)
    first = make_run(store, "a")
    assert store.finish(first) == []
    second, writing = make_run(store, "b"), make_run(store, "c")
    assert store.finish(second) == [first], "over the budget: the oldest run goes, though its session still shows it"
    newest = make_run(store, "d", size=1200)
    assert store.finish(newest) == [second]
    assert store.kept(writing) and store.kept(newest), "a run still being written stays; the budget holds again"


def test_what_a_visitor_sent_is_kept_apart_under_a_fixed_name_and_goes_with_its_run(tmp_path):
    store = store_in(tmp_path, max_bytes=10_000, api_keep_s=60)
    sent = tmp_path / "x.html"
    sent.write_bytes(b"<script>alert(1)</script>")
    folder = store.new("a")
    kept = keep_upload(sent, store.private(folder))
    assert kept == store.private(folder) / UPLOAD_NAME and kept.read_bytes() == sent.read_bytes()
    assert not kept.is_relative_to(tmp_path / "runs") and not list(folder.iterdir()), "nothing of it where runs are served"
    kept.write_bytes(bytes(12_000))  # the budget counts it: over 10 kB
    assert store.finish(folder) == [folder] and not kept.parent.exists(), "both folders go together"


def test_no_owner_keeps_more_than_its_share_and_others_runs_stay(tmp_path):
    clock = iter(range(100))
    store = store_in(tmp_path, max_bytes=10_000, api_keep_s=600, clock=lambda: next(clock), owner_share=0.25)
    page = make_run(store, "a", size=2000)
    store.finish(page)
    flood = []
    for _ in range(6):  # an API client continuing clips, 1 kB each
        flood.append(make_run(store, API_OWNER, size=1000))
        store.finish(flood[-1])
    assert store.kept(page), "the page's run stays, though the total is within the budget"
    assert [store.kept(folder) for folder in flood] == [False] * 4 + [True] * 2, \
        "past its share (2.5 kB) the API's own oldest runs go"
    writing = [make_run(store, "b", size=1500), make_run(store, "b", size=1500)]
    with pytest.raises(OverShare, match="Wait for them to finish"):
        store.new("b")  # its runs still being made fill its share
    for folder in writing:
        store.finish(folder)
    assert store.new("b"), "once they are made, its oldest go to make room and a new run is taken"


def test_the_sweep_passes_over_what_vanishes_under_it_and_never_walks_the_runs(tmp_path, monkeypatch):
    cache, runs = tmp_path / "cache", tmp_path / "cache" / "runs"
    for folder in ("a", "b", "runs/1"):
        (cache / folder).mkdir(parents=True)
        (cache / folder / "f.bin").write_bytes(b"x" * 10)
    walked, scandir = [], os.scandir

    def racing_scandir(path="."):  # Gradio deletes folder b just as the sweep reaches it
        if isinstance(path, int):  # rmtree's own, by file descriptor
            return scandir(path)
        walked.append(os.fspath(path))
        if os.fspath(path) == str(cache / "b"):
            import shutil

            shutil.rmtree(cache / "b")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", racing_scandir)
    assert sweep(cache, max_age_s=0, max_bytes=0, skip=runs) == 1, "folder a's file; b is gone, the runs skipped"
    assert str(cache / "b") in walked and not any(path.startswith(str(runs)) for path in walked)
    assert (runs / "1" / "f.bin").exists()
