"""And then? on the page: the button in a real browser, and the page's handlers through a whole
story, each on an in-process app (so a step can be held, or a failure injected, on the real models)."""

import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from foresight.config import MAX_SEGMENTS, PRESETS
from foresight.runtime import StopFlag
from foresight.session import AND_THEN

from conftest import inject_video_failure
from test_app import (EXAMPLE, FAST_FRAMES, free_port, generate, launch_chromium, needs_chromium, open_page, status,
                      upload, wait_idle, wait_status)

def frames_at(url: str, tmp_path: Path) -> int:
    """The frame count of the mp4 a page's video element plays, fetched as the browser fetches it."""
    import urllib.request

    local = tmp_path / f"{abs(hash(url))}.mp4"
    local.write_bytes(urllib.request.urlopen(url, timeout=30).read())
    return iio.imread(local, plugin="FFMPEG").shape[0]


@needs_chromium
def test_and_then_goes_on_with_the_story_stop_keeps_it_and_history_restores_it(models, pipe, tmp_path):
    """In-process, so a step can be held (a gate on the real transformer) until Stop has been pressed."""
    import app
    from playwright import sync_api as playwright

    demo = app.build_demo(app.make_page(pipe, "fast"))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    gate = {"armed": False, "open": threading.Event(), "steps": 0}

    def hold_the_second_step(module, args):
        if gate["armed"]:
            gate["steps"] += 1
            if gate["steps"] == 2:
                gate["open"].wait(30)

    handle = models.video_pipeline.transformer.register_forward_pre_hook(hold_the_second_step)
    added = PRESETS["fast"].num_frames - PRESETS["fast"].condition_frames
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            page = open_page(browser, f"http://127.0.0.1:{port}")
            upload(page, EXAMPLE)
            assert page.locator("#and-then").is_hidden()
            generate(page)
            page.wait_for_selector("#and-then", state="visible", timeout=10_000)
            first_text, first_src = page.input_value("#reasoning textarea"), page.get_attribute("#video video", "src")

            page.click("#and-then")
            wait_status(page, f"Segment 2 of at most {MAX_SEGMENTS}")
            wait_idle(page)
            page.wait_for_selector("#and-then", state="visible", timeout=10_000)
            story_text, story_src = page.input_value("#reasoning textarea"), page.get_attribute("#video video", "src")
            assert story_src != first_src and frames_at(story_src, tmp_path) == FAST_FRAMES + added
            assert story_text.startswith(first_text + AND_THEN) and len(story_text) > len(first_text + AND_THEN)
            assert f"segment 2 of at most {MAX_SEGMENTS}" in status(page)
            assert page.locator("#history img").count() == 1, "a story is one entry"

            gate["armed"] = True
            page.click("#and-then")
            wait_status(page, f"Segment 3 of at most {MAX_SEGMENTS} · step 1/")
            page.get_by_text("Options", exact=True).click()
            page.locator("#history img").first.click()  # a look back while the segment renders
            # The restore unticks "Randomize seed" (the stream's own updates may overwrite the rest).
            page.wait_for_function("!document.querySelector('#randomize input').checked", timeout=30_000)
            assert page.locator("#and-then").is_hidden(), "no second run beside the one on its way"
            page.click("#stop")
            wait_status(page, "Stopping", timeout=5_000)
            gate["open"].set()
            wait_idle(page)
            assert "the story so far is kept" in status(page)
            assert page.get_attribute("#video video", "src") == story_src
            assert frames_at(story_src, tmp_path) == FAST_FRAMES + added, "still served, whole"
            assert page.input_value("#reasoning textarea") == story_text
            gate["armed"] = False

            generate(page)
            page.wait_for_function("document.querySelectorAll('#history img').length == 2", timeout=30_000)
            page.locator("#history img").nth(1).click()
            page.wait_for_function(f"document.querySelector('#reasoning textarea').value == {story_text!r}",
                                   timeout=30_000)
            assert page.get_attribute("#video video", "src") == story_src
            page.wait_for_selector("#and-then", state="visible", timeout=10_000)
            browser.close()
    finally:
        gate["open"].set()
        handle.remove()
        demo.close()


def handlers(pipe):
    """The page's handlers as Gradio calls them: a page laid out, not served."""
    import app

    page = app.make_page(pipe, "fast")
    app.build_demo(page)
    return page


class Visitor:
    """What Gradio hands a handler as its request: the session's id."""

    def __init__(self, session_hash="visitor"):
        self.session_hash = session_hash


def last(updates):
    """A streaming handler's last update."""
    return list(updates)[-1]


def test_a_run_uses_the_seed_in_the_options_unless_randomize_is_ticked(pipe):
    page, visitor = handlers(pipe), Visitor()
    record = last(page.generate(EXAMPLE, "", "fast", False, "auto", 1234, False, StopFlag(), visitor))[page.ui.record]
    assert record.seed == 1234 and record.video
    ticked = [last(page.generate(EXAMPLE, "", "fast", False, "auto", 1234, True, StopFlag(), visitor))
              for _ in range(2)]
    seeds = {shown[page.ui.record].seed for shown in ticked}
    assert 1234 not in seeds and len(seeds) == 2, "ticked: a new seed each run"


def test_a_story_through_the_pages_handlers_retry_and_the_limit(models, pipe, tmp_path):
    """The page's handlers called as Gradio calls them: a segment whose video fails keeps its text
    and Retry video renders it from the story before it; the story goes on to its limit, where a
    stale page's And then? is refused in words and the story stays."""
    page, visitor, added = handlers(pipe), Visitor(), PRESETS["fast"].num_frames - PRESETS["fast"].condition_frames
    ui = page.ui
    record = last(page.generate(EXAMPLE, "", "fast", False, "auto", 0, True, StopFlag(), visitor))[ui.record]
    history = page.on_run_end(record, [], visitor)[ui.history]
    first = iio.imread(record.video, plugin="FFMPEG")
    handle = inject_video_failure(models)
    try:
        shown = last(page.and_then("", False, "auto", 2, False, history[0], StopFlag(), visitor))
    finally:
        handle.remove()
    failed, status = shown[ui.record], shown[ui.status]
    assert shown[ui.video] is None and "injected failure" in status and "Retry video" in status
    assert shown[ui.reasoning].endswith(failed.text)
    shown = last(page.retry_video(failed, StopFlag(), visitor))
    record, status = shown[ui.record], shown[ui.status]
    history = page.on_run_end(record, history, visitor)[ui.history]
    assert record.video.endswith("-retry1.mp4") and f"segment 2 of at most {MAX_SEGMENTS}" in status
    retried = iio.imread(record.video, plugin="FFMPEG")
    assert retried.shape[0] == FAST_FRAMES + added and np.array_equal(retried[:FAST_FRAMES], first), \
        "the segment rendered from the story before it, which opens the mp4 as it was"
    assert len(history) == 1 and history[0].video == record.video, "the story is one entry"

    for segment in range(3, MAX_SEGMENTS + 1):
        shown = last(page.and_then("", False, "auto", segment, False, history[0], StopFlag(), visitor))
        record = shown[ui.record]
        history = page.on_run_end(record, history, visitor)[ui.history]
        assert f"segment {segment} of at most {MAX_SEGMENTS}" in shown[ui.status] and len(history) == 1
    assert not page.session(visitor.session_hash).can_go_on(record)
    story = record.video
    assert iio.imread(story, plugin="FFMPEG").shape[0] == FAST_FRAMES + (MAX_SEGMENTS - 1) * added
    shown = last(page.and_then("", False, "auto", 9, False, record, StopFlag(), visitor))
    assert f"reached its {MAX_SEGMENTS} segments" in shown[ui.status] and shown[ui.video] == story
    assert shown[ui.record] is record


class Select:
    """What Gradio hands `on_history_select`: the clicked thumbnail's index."""

    def __init__(self, index):
        self.index = index


def test_the_page_keeps_what_it_shows_stop_after_the_video_and_retry_only_for_the_run_on_screen(models, pipe):
    """Stop pressed as the mp4 arrives keeps the run (its file, its history entry, And then?); Retry
    is offered for the failed run on screen only, a stale Retry renders nothing, and each retry
    writes a file of its own, so a stopped one deletes nothing another entry shows."""
    page, visitor = handlers(pipe), Visitor("keeper")
    ui, stop = page.ui, StopFlag()
    for shown in page.generate(EXAMPLE, "", "fast", False, "auto", 0, True, stop, visitor):
        if shown[ui.video] and not stop.is_set():
            page.on_stop(stop)  # the moment the mp4 appears
    kept = shown[ui.record]
    assert kept.stopped and kept.video and "the video is kept" in shown[ui.status]
    ended = page.on_run_end(kept, [], visitor)
    history = ended[ui.history]
    assert [h.video for h in history] == [kept.video] and Path(kept.video).is_file()
    assert not ended[ui.retry]["visible"] and ended[ui.and_then]["visible"], "a finished video: And then?, no Retry"

    handle = inject_video_failure(models)
    try:
        failed = last(page.generate(EXAMPLE, "", "fast", False, "auto", 1, False, StopFlag(), visitor))[ui.record]
    finally:
        handle.remove()
    ended = page.on_run_end(failed, history, visitor)
    history = ended[ui.history]
    assert ended[ui.retry]["visible"] and failed.video_error and len(history) == 1
    restored = page.on_history_select(history, None, Select(0), visitor)
    assert restored[ui.retry]["visible"] is False, "another run on screen: Retry goes"
    shown = last(page.retry_video(history[0], StopFlag(), visitor))
    assert "Only a run whose video failed" in shown[ui.status] and shown[ui.record].video == kept.video
    assert Path(kept.video).is_file(), "a stale Retry renders nothing, deletes nothing"

    stopping = StopFlag()
    for shown in page.retry_video(failed, stopping, visitor):
        if shown[ui.preview] and not stopping.is_set():
            page.on_stop(stopping)
    again = shown[ui.record]
    assert again.stopped and not again.video and page.on_run_end(again, history, visitor)[ui.retry]["visible"]
    shown = last(page.retry_video(again, StopFlag(), visitor))
    again = shown[ui.record]
    assert again.video.endswith("-retry2.mp4") and Path(again.video).is_file(), shown[ui.status]
    assert Path(kept.video).is_file()
