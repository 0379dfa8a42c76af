"""The web app as people and programs meet it: launched on 127.0.0.1 in the tiny profile."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "cat.jpg")
ARTIFACTS = ROOT / "test-artifacts"
CACHE_TTL_S = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "FORESIGHT_OUTPUTS": str(tmp / "outputs"), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "FORESIGHT_MAX_OUTPUT_RUNS": "2", "FORESIGHT_CACHE_TTL": str(CACHE_TTL_S)}
    log = open(tmp / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--profile", "tiny", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert process.poll() is None, (tmp / "app.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("the app did not start:\n" + (tmp / "app.log").read_text())
    yield {"url": url, "outputs": tmp / "outputs", "gradio_cache": tmp / "gradio", "log": tmp / "app.log"}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def launch_chromium(playwright):
    """Debian's chromium, headless, with nothing reaching out of this machine."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])


def submit(client, image=EXAMPLE, prompt="What happens next?", preset="fast"):
    return client.submit(handle_file(image), prompt, preset, api_name="/predict")


def is_update(value):
    return isinstance(value, dict) and value.get("__type__") == "update"


def test_predict_streams_text_then_previews_then_the_video(client):
    job = submit(client)
    texts, order = [], []
    for text, preview, video in job:
        if not is_update(text) and (not texts or text != texts[-1]):
            texts.append(text)
        if not is_update(preview) and preview:
            order.append("preview")
        if not is_update(video) and video:
            order.append("video")
    assert len(texts) >= 3, "text arrives in several chunks"
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:])), "each chunk extends the text"
    assert "preview" in order and order.index("preview") < order.index("video")
    text, preview, video = job.result()
    assert text == texts[-1]
    frames = iio.imread(video, plugin="FFMPEG")
    assert frames.shape[0] == 17 and frames.shape[-1] == 3


def test_bench_times_the_app_as_its_client_sees_it(server):
    from foresight.bench import APP_METRICS, app_timeline, format_app_table

    fast = app_timeline(server["url"], ["fast"], runs=2)["fast"]
    assert all(fast[key]["n"] == 2 for key, _, _ in APP_METRICS)
    assert fast["text"]["median"] < fast["video"]["median"] <= fast["done"]["median"]
    assert fast["preview"]["median"] < fast["video"]["median"]
    assert "| fast |" in format_app_table({"fast": fast})


def test_a_bad_image_is_a_clear_error_and_the_app_keeps_serving(client, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(Exception, match="could not be read as an image"):
        client.predict(handle_file(str(bad)), "", "fast", api_name="/predict")
    text, preview, video = client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    assert text and Path(video).exists()


def test_stop_ends_the_run_on_the_server(client, server):
    before = set(server["outputs"].glob("*.mp4"))
    job = submit(client, preset="high")
    for _ in job:  # the first update: the run is on the GPU queue's worker
        break
    job.cancel()
    time.sleep(3)
    assert set(server["outputs"].glob("*.mp4")) == before, "a stopped run writes no video"
    text, preview, video = client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    assert Path(video).exists(), "the next request runs normally"


def test_disk_use_stays_bounded(client, server):
    for _ in range(4):
        client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    run_ids = {p.name.split(".")[0] for p in server["outputs"].iterdir()}
    assert len(run_ids) <= 2  # FORESIGHT_MAX_OUTPUT_RUNS
    cached = [p for p in server["gradio_cache"].rglob("*") if p.is_file()]
    assert cached, "previews and videos pass through Gradio's cache"
    time.sleep(2 * CACHE_TTL_S + 2)
    remaining = [p for p in cached if p.exists()]
    assert len(remaining) < len(cached), "Gradio's cache deletion removes old previews and videos"


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                    reason="needs Debian's chromium (apt-get install chromium), as .ci/run installs")
def test_in_a_real_browser(server):
    from playwright import sync_api as playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server["url"])
        assert "Bridge: fused weights tiny-random loaded" in page.inner_text("#banner")
        page.click("#generate")  # no image yet
        page.wait_for_function("document.querySelector('#status').innerText.includes('Please add an image')",
                               timeout=30_000)
        page.locator("#input-image input[type=file]").set_input_files(
            files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n" + b"junk" * 50}])
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').innerText.includes('could not be read')",
                               timeout=30_000)
        page.locator("#input-image button[aria-label='Remove Image']").click()
        page.locator("#input-image input[type=file]").set_input_files(EXAMPLE)
        page.wait_for_selector("#input-image img", timeout=30_000)
        page.click("#generate")
        page.wait_for_function("document.querySelector('#reasoning textarea').value.length > 0", timeout=60_000)
        page.wait_for_selector("#preview img[src]", timeout=60_000)
        page.wait_for_selector("#video video[src]", timeout=60_000)
        page.wait_for_function("document.querySelector('#status').innerText.includes('seed')", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        assert "mode" in page.inner_text("#status")
        page.wait_for_function("document.querySelectorAll('#history img').length == 1", timeout=30_000)
        first_text = page.input_value("#reasoning textarea")
        page.locator("#input-image input[type=file]").set_input_files(str(ROOT / "examples" / "rocket.jpg"))
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#history img').length == 2", timeout=60_000)
        assert page.input_value("#reasoning textarea") != first_text, "another image, another thought"
        page.locator("#history img").nth(1).click()  # the older run: newest first
        page.wait_for_function(f"document.querySelector('#reasoning textarea').value == {first_text!r}",
                               timeout=30_000)
        page.click("#preset label:has-text('high')")  # a long run, to stop
        page.click("#generate")
        page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)  # one run at a time
        page.wait_for_function("document.querySelector('#reasoning textarea').value.length > 0", timeout=60_000)
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Stopped.')", timeout=10_000)
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
        page.wait_for_timeout(3000)  # a stopped run neither finishes nor writes over the status later
        assert page.inner_text("#status").strip() == "Stopped."
        assert page.locator("#video video[src]").count() == 0
        browser.close()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium")
def test_a_failed_video_keeps_the_text_and_retry_renders_it(models, pipe, tmp_path):
    """In-process app, so the failure can be injected into the real LTX transformer with a hook."""
    import app
    from playwright import sync_api as playwright

    demo = app.build_demo(pipe, default_preset="fast")
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    failures = {"left": 1}

    def fail_once(module, args, output):
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("injected failure")

    handle = models.video_pipeline.transformer.register_forward_hook(fail_once)
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            page.locator("#input-image input[type=file]").set_input_files(EXAMPLE)
            page.wait_for_selector("#input-image img", timeout=30_000)
            page.click("#generate")
            page.wait_for_selector("#retry", state="visible", timeout=60_000)
            assert "injected failure" in page.inner_text("#status")
            text = page.input_value("#reasoning textarea")
            assert text, "the text stays"
            assert page.locator("#video video[src]").count() == 0
            page.click("#retry")
            page.wait_for_selector("#video video[src]", timeout=60_000)
            page.wait_for_selector("#retry", state="hidden", timeout=30_000)
            assert page.input_value("#reasoning textarea") == text
            browser.close()
    finally:
        handle.remove()
        demo.close()
