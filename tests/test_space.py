"""The app as a public Space meets it: strangers' sessions side by side, each output processed once,
a phone's screen. In-process, so the tests can count what Gradio does and shrink the disk budget."""

from pathlib import Path

import pytest
from gradio import processing_utils
from gradio.route_utils import delete_files_created_by_app
from gradio_client import Client, handle_file

from foresight import storage
from foresight.pipeline import ForesightPipeline

from conftest import with_settings
from test_app import EXAMPLE, free_port, launch_chromium, needs_chromium, open_page, status, upload, wait_idle

RUNS_MAX_MB = 4.5  # one browser run at `fast` (about 3.2 MB, its noise-like last frames included) fits; two do not


@pytest.fixture(scope="module")
def space(models):
    """The page on its own port, its text held to 4 tokens/s while the video renders (so the text
    outlasts the video, as on a GPU) and a disk budget of one run."""
    import app

    budget, app.RUNS_MAX_MB = app.RUNS_MAX_MB, RUNS_MAX_MB
    demo = app.build_demo(app.make_page(ForesightPipeline(with_settings(models, text_pace=4.0)), "fast"))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    yield {"url": f"http://127.0.0.1:{port}", "demo": demo, "app": app}
    demo.close()
    app.RUNS_MAX_MB = budget


def test_the_mp4_and_the_previews_are_processed_once_not_on_every_update(space, monkeypatch):
    probes, hashes = [], []
    probe, hash_file = processing_utils.video_is_playable, processing_utils.hash_file
    monkeypatch.setattr(processing_utils, "video_is_playable", lambda path: probes.append(path) or probe(path))
    monkeypatch.setattr(processing_utils, "hash_file", lambda path, *a: hashes.append(path) or hash_file(path, *a))
    job = Client(space["url"], verbose=False).submit(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    updates = [video for _, _, video in job]
    after_video = updates[next(i for i, video in enumerate(updates) if video):]
    assert len(after_video) >= 3, "the text goes on after the mp4, update after update"
    assert probes == [], "the pipeline's own mp4 is never probed"
    runs = space["app"].RUNS_DIR
    assert [path for path in hashes if Path(path).is_relative_to(runs)] == [], \
        "previews and the mp4 are served from the run's folder: never hashed, never copied"


@needs_chromium
def test_a_strangers_runs_push_yours_out_and_your_page_says_so_in_words(space, capfd):
    """Two sessions on a budget of one run: the second visitor's run takes the first's files. The
    first's thumbnail then says in words that the run is gone and leaves the history; no toast,
    no traceback. Gradio's cache deletion and the app's sweep, run early, leave the runs alone."""
    from playwright import sync_api as playwright

    app = space["app"]
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        first = open_page(browser, space["url"])
        second = open_page(browser, space["url"])  # another tab: another visitor's session
        for page in (first, second):
            upload(page, EXAMPLE)
            page.fill("#prompt textarea", "What next?")
            page.press("#prompt textarea", "Tab")
            page.click("#generate")
            page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)
            wait_idle(page)
            page.wait_for_function("document.querySelectorAll('#history img').length == 1", timeout=30_000)
        # Gradio's own cache deletion and ours, run early: they leave the runs alone
        delete_files_created_by_app(space["demo"], age=0)
        storage.sweep(Path(processing_utils.get_upload_folder()), max_age_s=0, max_bytes=0, skip=app.RUNS_DIR)
        first.locator("#history img").first.click()
        first.wait_for_function("document.querySelector('#status').innerText.includes('no longer kept')",
                                timeout=30_000)
        first.wait_for_function("document.querySelectorAll('#history img').length == 0", timeout=30_000)
        second.fill("#prompt textarea", "")
        second.press("#prompt textarea", "Tab")
        second.locator("#history img").first.click()
        second.wait_for_function("document.querySelector('#prompt textarea').value == 'What next?'", timeout=30_000)
        assert "mode · seed" in status(second) and second.locator("#video video[src]").count() == 1
        source = second.get_attribute("#video video", "src")
        assert second.request.get(source).ok, "the restored video is still there to play"
        assert first.locator(".toast-body").count() == second.locator(".toast-body").count() == 0
        browser.close()
    assert "Traceback" not in capfd.readouterr().err


@needs_chromium
def test_on_a_phone_the_output_is_on_screen_after_generate(space):
    from playwright import sync_api as playwright

    in_view = """(id) => { const box = document.querySelector(id).getBoundingClientRect();
                           return box.top > -2 && box.top < window.innerHeight; }"""  # a scroll lands within a pixel
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page.goto(space["url"])
        page.wait_for_selector("#generate")
        upload(page, EXAMPLE)
        assert not page.evaluate(in_view, "#status"), "before Generate the output is below the inputs"
        page.click("#generate")
        page.wait_for_function(f"({in_view})('#status')", timeout=10_000)
        page.wait_for_selector("#video video[src]", timeout=60_000)
        wait_idle(page)
        assert page.evaluate(in_view, "#reasoning") and page.evaluate(in_view, "#output"), \
            "the thinking and the video are on screen"
        browser.close()
