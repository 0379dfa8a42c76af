"""The web app as people and programs meet it: launched on 127.0.0.1 in the tiny profile."""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from foresight.config import PRESETS
from foresight.inputs import MAX_CLIP_SECONDS

from conftest import inject_video_failure

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "cat.jpg")
ARTIFACTS = ROOT / "test-artifacts"
CACHE_TTL_S = 60  # the sweep then runs every 10 s (storage.keep_swept)
MAX_UPLOAD_MB = 2  # the app's file-size limit in these tests
FAST_FRAMES = PRESETS["fast"].num_frames
RUNS_MAX_MB = 256  # all runs' files together, in these tests (a visitor's share, a quarter, holds a few noise-heavy runs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio"), "FORESIGHT_RUNS_MAX_MB": str(RUNS_MAX_MB),
           "FORESIGHT_API_KEEP_S": "30", "FORESIGHT_CACHE_TTL": str(CACHE_TTL_S),
           "FORESIGHT_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)}
    log = open(tmp / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--profile", "tiny", "--port", str(port), "--mcp"],
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
    yield {"url": url, "outputs": tmp / "gradio" / "foresight-runs", "gradio_cache": tmp / "gradio", "log": tmp / "app.log",
           "pid": process.pid}
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
    assert frames.shape[0] == FAST_FRAMES and frames.shape[-1] == 3
    assert re.fullmatch(r"cat-seed\d+\.mp4", Path(video).name), "the download is named after the input and seed"


def test_predict_continues_a_clip_and_refuses_one_over_its_budget_in_words(client, tmp_path):
    """And then? through the API: the clip it returned, sent back, comes back longer by a segment."""
    _, _, first = client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    theirs = tmp_path / "theirs.mp4"  # as a client keeps it, under its own name
    theirs.write_bytes(Path(first).read_bytes())
    text, _, story = client.predict(None, "And then?", "fast", handle_file(str(theirs)), api_name="/predict")
    added = PRESETS["fast"].num_frames - PRESETS["fast"].condition_frames
    assert text and iio.imread(story, plugin="FFMPEG").shape[0] == FAST_FRAMES + added
    long = tmp_path / "long.mp4"
    iio.imwrite(long, np.zeros(((MAX_CLIP_SECONDS + 2) * 8, 32, 32, 3), np.uint8), fps=8, plugin="FFMPEG")
    with pytest.raises(Exception, match=f"That clip is 22 s long; clips up to {MAX_CLIP_SECONDS} s"):
        client.predict(None, "", "fast", handle_file(str(long)), api_name="/predict")


def test_the_console_at_start_up_is_one_line_per_model_and_then_where_to_go(server):
    lines = server["log"].read_text().splitlines()
    ready = next(i for i, line in enumerate(lines) if line.startswith("[foresight] ready in "))
    assert [line.split(":")[0] for line in lines[:ready]] == ["[foresight] VLM", "[foresight] vision model",
                                                              "[foresight] bridge", "[foresight] video model",
                                                              "[foresight] video upscaler"]
    assert all("tiny random-weight stand-in for" in line and "loaded in" in line
               for line in lines[:ready] if "bridge" not in line)
    assert f"at {server['url']}/" in lines[ready] and "python app.py --share" in lines[ready]
    assert f"MCP tool `predict` at {server['url']}/gradio_api/mcp/" in lines[ready]
    assert not any(word in line for line in lines[:ready + 1] for word in ("%|", "float32", "share=True"))


def test_predict_is_a_tool_an_agent_can_call(server):
    """`--mcp`: Gradio's MCP server lists /predict alone, described for an agent, and a call through
    the protocol returns the reasoning and a video that decodes."""
    import ast
    import asyncio
    import base64

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    tools = httpx.get(f"{server['url']}/gradio_api/mcp/schema").json()
    assert [tool["name"] for tool in tools] == ["predict"], "nothing private is a tool"
    assert "render a short video of what happens next" in tools[0]["description"]
    described = tools[0]["inputSchema"]["properties"]["preset"]["description"]
    for name, preset in PRESETS.items():  # what an agent reads of each preset is what it renders
        assert f'"{name}" ({preset.width}x{preset.height}, {preset.num_frames} frames, {preset.seconds:.1f} s)' \
            in described
    assert f"all at {PRESETS['fast'].fps} fps" in described
    assert len({preset.fps for preset in PRESETS.values()}) == 1
    assert set(tools[0]["inputSchema"]["properties"]) == {"image", "prompt", "preset", "clip", "sharper"}
    assert "second pass" in tools[0]["inputSchema"]["properties"]["sharper"]["description"]
    continued = tools[0]["inputSchema"]["properties"]["clip"]["description"]
    assert "and then?" in continued and f"up to {MAX_CLIP_SECONDS} s" in continued
    assert f"({PRESETS['default'].condition_frames}, or {PRESETS['high'].condition_frames} at \"high\")" in continued
    image = "data:image/jpeg;base64," + base64.b64encode(Path(EXAMPLE).read_bytes()).decode()  # no URL to fetch

    async def call():
        async with streamable_http_client(f"{server['url']}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool("predict", {"image": image, "prompt": "", "preset": "fast"})

    result = asyncio.run(call())
    assert not result.isError, result.content
    reasoning, preview, video = ast.literal_eval(result.content[0].text)  # the endpoint's three outputs
    assert reasoning and preview["url"].endswith(".jpg") and video["url"].endswith(".mp4")
    frames = iio.imread(httpx.get(video["url"]).content, extension=".mp4", plugin="FFMPEG")
    assert frames.shape[0] == FAST_FRAMES


def test_bench_times_the_app_as_its_client_sees_it(server):
    from foresight.bench import APP_METRICS, app_timeline, format_app_table

    fast = app_timeline(server["url"], ["fast"], runs=2)["fast"]
    assert all(fast[key]["n"] == 2 for key, _, _ in APP_METRICS)
    assert fast["text"]["median"] < fast["video"]["median"] <= fast["done"]["median"]
    assert fast["preview"]["median"] < fast["video"]["median"]
    assert "| fast |" in format_app_table({"fast": fast})


def test_a_run_is_asked_for_through_the_queue_only_where_its_fair_share_is_held(server):
    """Gradio's direct route (`/run/<api>`) would run a queued event past its validator, the queue's
    fair share: the app closes it (`api_open=False`)."""
    import httpx

    answer = httpx.post(f"{server['url']}/gradio_api/run/predict", json={"data": [None, "", "fast", None, False]},
                        timeout=30)
    assert answer.status_code == 404 and "join the queue" in answer.text


def test_a_bad_image_is_one_clear_error_without_a_traceback_and_the_app_keeps_serving(client, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(Exception, match="could not be read as an image"):
        client.predict(handle_file(str(bad)), "", "fast", api_name="/predict")
    text, preview, video = client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    assert text and Path(video).exists()
    log = server["log"].read_text()
    assert "refused an API input: That file could not be read as an image" in log and "Traceback" not in log


def test_an_upload_over_the_size_limit_is_refused_in_words_and_never_kept(client, server, tmp_path):
    """Gradio's own max_file_size: its client refuses before sending, and the server stops reading a
    request that says otherwise at the limit, keeping nothing of it."""
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes((MAX_UPLOAD_MB + 1) * 2**20))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), "", "fast", api_name="/predict")
    cached = sum(f.stat().st_size for f in server["gradio_cache"].rglob("*") if f.is_file())
    response = httpx.post(f"{server['url']}/gradio_api/upload", files={"files": ("big.png", big.read_bytes())})
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert sum(f.stat().st_size for f in server["gradio_cache"].rglob("*") if f.is_file()) < cached + 2**20


def memory_mb(pid: int, field: str) -> float:
    """The server's resident memory now (VmRSS), or its peak since the last reset (VmHWM)."""
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith(field + ":")) / 1024


def test_a_burst_of_huge_uploads_leaves_the_server_serving_within_its_memory_budget(client, server, tmp_path):
    """Images small on disk and huge decoded, sent together by six visitors: those over the pixel budget are refused
    from their header, the one within it decoded once; the server's peak memory grows by less than
    1 GB, and it goes on serving."""
    from uploads import flat_png

    files = [tmp_path / f"bomb{i}.png" for i in range(5)] + [tmp_path / "big.png"]
    for i, path in enumerate(files[:-1]):  # each its own bytes (the same bytes share one path in Gradio's cache)
        flat_png(path, 8000, 7000 + i, "RGBA")  # 56 megapixels: over the budget
    flat_png(files[-1], 7000, 7000, "RGBA")  # 49: within it, 196 MB decoded
    Path(f"/proc/{server['pid']}/clear_refs").write_text("5")  # the peak starts again from now, not from loading
    before = memory_mb(server["pid"], "VmRSS")
    jobs = [submit(Client(server["url"], verbose=False), image=str(path)) for path in files]  # strangers, together
    outcomes = []
    for job in jobs:
        try:
            job.result()
            outcomes.append("ran")
        except Exception as exc:  # noqa: BLE001 - the refusal, as the client sees it
            outcomes.append(str(exc))
    assert outcomes[-1] == "ran" and all("56 megapixels" in o for o in outcomes[:-1]), outcomes
    assert 100 < memory_mb(server["pid"], "VmHWM") - before < 1024, "the big one was decoded, within the budget"
    text, preview, video = client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    assert text and Path(video).exists()


def test_a_cancelled_job_writes_no_video(client, server):
    before = set(server["outputs"].rglob("*.mp4"))
    job = submit(client, preset="high")
    for _ in job:  # the first update: the run is on the GPU queue's worker
        break
    job.cancel()
    time.sleep(3)
    assert set(server["outputs"].rglob("*.mp4")) <= before, "a cancelled run writes no video"
    text, preview, video = client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
    assert Path(video).exists(), "the next request runs normally"


def test_disk_use_stays_bounded(client, server, tmp_path):
    """Runs are served from their folders (no copies in Gradio's cache); the cache's sweep deletes
    old uploads and never touches a run. (The runs' budget: tests/test_runs.py, tests/test_space.py.)"""
    from foresight.storage import folder_bytes

    mine = tmp_path / "mine.png"  # not an example: those stay in the cache for the page
    Image.open(EXAMPLE).save(mine)
    for _ in range(2):
        client.predict(handle_file(str(mine)), "", "fast", api_name="/predict")
    assert folder_bytes(server["outputs"]) > 0
    cached = [p for p in server["gradio_cache"].rglob("*") if p.is_file() and not p.is_relative_to(server["outputs"])]
    assert not [p for p in cached if p.suffix in (".mp4", ".jpg") and "seed" in p.name], "no copies of a run's files"
    upload, run_file = next(p for p in cached if p.name == "mine.png"), next(server["outputs"].rglob("*.mp4"))
    for path in (upload, run_file):
        os.utime(path, (time.time() - 2 * CACHE_TTL_S,) * 2)  # older than the cache keeps files
    deadline = time.time() + 60  # the sweep runs every 10 s; this waits for it, it does not time it
    while upload.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not upload.exists() and run_file.exists(), "an old upload is deleted, a run's file is the runs' to keep"


def test_the_cache_sweep_keeps_the_folder_under_its_size():
    from foresight.storage import sweep

    with tempfile.TemporaryDirectory() as folder:
        for i in range(10):
            path = Path(folder) / f"{i}.bin"
            path.write_bytes(b"x" * 1000)
            os.utime(path, (1000 + i, 1000 + i))
        keep = {str(Path(folder) / "0.bin")}
        assert sweep(Path(folder), max_age_s=10**12, max_bytes=4500, keep=keep) == 6
        left = sorted(p.name for p in Path(folder).iterdir())
        assert left == ["0.bin", "7.bin", "8.bin", "9.bin"], "the oldest go first; kept files stay"


needs_chromium = pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                                    reason="needs Debian's chromium (apt-get install chromium), as .ci/run installs")


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def upload(page, path):
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#input-image img", timeout=30_000)


def status(page) -> str:
    return page.inner_text("#status")


def wait_status(page, text, timeout=60_000):
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=timeout)


def wait_idle(page, timeout=90_000):
    """The run has ended on the server: Generate is unlocked again."""
    page.wait_for_function("!document.querySelector('#generate').disabled", timeout=timeout)


def generate(page, timeout=90_000):
    """Press Generate and wait for the run to end."""
    page.click("#generate")
    page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)
    wait_idle(page, timeout)


@needs_chromium
def test_a_run_in_a_real_browser(server):
    from playwright import sync_api as playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_page(browser, server["url"])
        assert page.locator("#stop").is_disabled(), "Stop only while a run is active"
        page.get_by_text("Options", exact=True).click()
        assert page.locator("#seed input").is_disabled(), "no seed to type while it is randomized"
        page.locator("#randomize input").uncheck()
        page.wait_for_function("!document.querySelector('#seed input').disabled", timeout=10_000)
        page.locator("#randomize input").check()
        page.get_by_text("About", exact=True).click()
        page.wait_for_function("document.querySelector('#about').innerText.includes('random-weight stand-ins')",
                               timeout=10_000)
        assert "Bridge:" in page.inner_text("#about") and "Bridge:" not in page.inner_text("#status")
        upload(page, EXAMPLE)
        page.click("#generate")
        page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)
        wait_status(page, "Rendering step")
        page.wait_for_function("document.querySelector('#reasoning textarea').value.length > 0", timeout=60_000)
        page.wait_for_selector("#video video[src]", timeout=60_000)
        wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        assert "mode · seed" in status(page) and "rendered at" in status(page)
        assert page.locator("#preview").is_hidden(), "the preview became the video where it stood"
        assert "mode" in page.inner_text("#caption")
        assert page.locator("#stop").is_disabled()
        browser.close()


@needs_chromium
def test_a_refusal_is_said_once_where_the_user_looks(server):
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_page(browser, server["url"])
        page.click("#generate")  # no image yet
        wait_status(page, "Please add an image")
        wait_idle(page)
        page.locator("#input-image input[type=file]").set_input_files(
            files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"these are not pixels" * 20}])
        wait_status(page, "could not be read as an image")  # refused on upload, before Generate
        page.wait_for_timeout(500)
        text = page.inner_text("body")
        assert text.count("could not be read as an image") == 1, "one message, not three"
        assert page.locator(".toast-body").count() == 0 and page.locator("#reasoning .error").count() == 0
        page.locator("#input-image input[type=file]").set_input_files(files=[{  # over the size limit: Gradio says so
            "name": "big.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n" + bytes((MAX_UPLOAD_MB + 1) * 2**20)}])
        page.wait_for_function("document.body.innerText.includes('exceed the maximum allowed size of 2.0 Mb')",
                               timeout=15000)
        browser.close()
    log = server["log"].read_text()
    assert "refused an upload: That file could not be read as an image" in log and "Traceback" not in log


@needs_chromium
def test_stop_then_generate_at_once_starts_a_run(server):
    """Pressing Stop while the previews render, then Generate the moment it is enabled, runs again."""
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_page(browser, server["url"])
        upload(page, EXAMPLE)
        page.click("#preset label:has-text('High')")
        page.click("#generate")
        wait_status(page, "Rendering step")
        page.click("#stop")
        wait_status(page, "Stopping", timeout=5_000)
        assert page.locator("#generate").is_disabled(), "no new run until this one has really ended"
        wait_idle(page, timeout=30_000)
        assert status(page).strip() == "Stopped."
        assert page.locator("#video video[src]").count() == 0
        page.click("#preset label:has-text('Fast')")
        page.click("#generate")  # at once
        page.wait_for_selector("#video video[src]", timeout=60_000)
        wait_idle(page)
        assert "mode · seed" in status(page)
        browser.close()


@needs_chromium
def test_a_second_user_is_told_how_many_runs_are_ahead(server):
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        first, second = open_page(browser, server["url"]), open_page(browser, server["url"])
        for page in (first, second):
            upload(page, EXAMPLE)
        first.click("#preset label:has-text('High')")
        first.click("#generate")
        wait_status(first, "Rendering step")
        second.click("#preset label:has-text('Fast')")
        second.click("#generate")
        second.wait_for_function("document.querySelector('#queue').innerText.includes('Waiting: 1 run ahead')",
                                 timeout=15_000)
        first.click("#stop")
        wait_status(second, "Thinking", timeout=60_000)
        wait_idle(second)
        assert "mode · seed" in status(second)
        browser.close()


@needs_chromium
def test_history_restores_a_whole_run_and_the_panorama_is_explained(server, tmp_path):
    from playwright import sync_api as playwright

    panorama = tmp_path / "panorama.png"
    Image.new("RGB", (3000, 200), (200, 80, 40)).save(panorama)
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_page(browser, server["url"])
        upload(page, EXAMPLE)
        page.fill("#prompt textarea", "Where will the cat look?")
        page.press("#prompt textarea", "Tab")
        page.click("#preset label:has-text('Fast')")
        generate(page)
        page.wait_for_function("document.querySelectorAll('#history img').length == 1", timeout=30_000)
        first_text, first_status = page.input_value("#reasoning textarea"), status(page)
        upload(page, panorama)
        wait_status(page, "Ready.")
        page.fill("#prompt textarea", "")
        page.press("#prompt textarea", "Tab")
        generate(page)
        assert "centre-cropped to 3:1" in status(page) and "(20% of it)" in status(page)
        page.wait_for_function("document.querySelectorAll('#history img').length == 2", timeout=30_000)
        page.click("#preset label:has-text('Default')")  # changed since: the restore sets it back
        page.locator("#history img").nth(1).click()  # the older run: newest first
        page.wait_for_function("document.querySelector('#prompt textarea').value == 'Where will the cat look?'",
                               timeout=30_000)
        assert page.input_value("#reasoning textarea") == first_text
        assert page.locator("#preset input[value=fast]").is_checked()
        assert status(page) == first_status and page.locator("#video video[src]").count() == 1
        seed = first_status.split("seed ")[1].split(" ")[0]
        page.get_by_text("Options", exact=True).click()
        assert page.input_value("#seed input") == seed and not page.locator("#randomize input").is_checked()
        assert page.locator("#input-image img").count() == 1
        browser.close()


@needs_chromium
def test_a_failed_video_keeps_the_text_and_retry_renders_it(models, pipe, tmp_path):
    """In-process app, so the failure can be injected into the real LTX transformer with a hook."""
    import app
    from playwright import sync_api as playwright

    demo = app.build_demo(app.make_page(pipe, "fast"))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    handle = inject_video_failure(models)
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            page = open_page(browser, f"http://127.0.0.1:{port}")
            upload(page, EXAMPLE)
            page.click("#generate")
            page.wait_for_selector("#retry", state="visible", timeout=60_000)
            assert "injected failure" in status(page)
            text = page.input_value("#reasoning textarea")
            assert text, "the text stays"
            assert page.locator("#video video[src]").count() == 0
            page.click("#retry")
            page.wait_for_selector("#video video[src]", timeout=60_000)
            page.wait_for_selector("#retry", state="hidden", timeout=30_000)
            assert page.input_value("#reasoning textarea") == text
            browser.close()
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        for _ in range(2):
            client.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
        sessions = list(demo.state_holder.session_data.values())
        assert len(sessions) == 2, "the page's session and the API client's"
        assert all(set(session.blocks_config.blocks) <= set(demo.blocks) for session in sessions), \
            "no component made for an update outlives its run (Gradio keeps them per session)"
    finally:
        handle.remove()
        demo.close()

