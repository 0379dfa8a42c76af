"""A visitor who means harm, through the real server where it matters: markup uploaded under any
name is never served back as something a browser runs, a clip is read by one named demuxer only,
and one client's flood of API calls leaves a page visitor served. In-process (a step can be held on
the real transformer while the queue fills), on a queue of 4 places."""

import os
import struct
import threading
import zlib
from pathlib import Path

import httpx
import imageio.v3 as iio
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from foresight.inputs import MAX_CLIP_PIXELS, read_clip, InputError
from foresight.gpu_queue import PLACES_PER_VISITOR

from test_app import EXAMPLE, free_port, launch_chromium, needs_chromium, open_page, upload, wait_idle

QUEUE_SIZE = 4  # so the API's share (half) is 2 places
# What a run's served files may be: media and records the app wrote, under names it chose.
SERVED_TYPES = {".mp4": "video/mp4", ".jpg": "image/jpeg", ".png": "image/png", ".json": "application/json",
                ".mkv": "video/x-matroska"}
MARKUP = b"<html><script>document.title='owned'</script><svg onload=alert(1)></svg></html>"


def png_carrying_markup(path: Path) -> Path:
    """A valid PNG (Pillow opens it by its content) with a script in a text chunk."""
    Image.new("RGB", (64, 48), (40, 160, 90)).save(path, format="PNG")
    data = path.read_bytes()
    chunk = b"tEXt" + b"Comment\x00" + MARKUP
    text = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    path.write_bytes(data[:33] + text + data[33:])  # after the 8-byte signature and the 25-byte IHDR
    return path


@pytest.fixture(scope="module")
def hostile(models, pipe):
    """The page in-process, with a gate that can hold a run's second denoising step."""
    import app

    gate = {"armed": False, "open": threading.Event(), "steps": 0, "held": threading.Event()}

    def hold_the_second_step(module, args):
        if gate["armed"]:
            gate["steps"] += 1
            if gate["steps"] == 2:
                gate["held"].set()
                gate["open"].wait(60)

    handle = models.video_pipeline.transformer.register_forward_pre_hook(hold_the_second_step)
    demo = app.build_demo(app.make_page(pipe, "fast"))
    port = free_port()
    demo.queue(max_size=QUEUE_SIZE).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    yield {"url": f"http://127.0.0.1:{port}", "app": app, "gate": gate, "demo": demo}
    handle.remove()
    gate["open"].set()
    demo.close()


def served(url: str, path: Path) -> httpx.Response:
    return httpx.get(f"{url}/gradio_api/file={path}", timeout=30)


def assert_every_served_file_is_media_the_app_made(url: str, app, kinds: set[str]) -> None:
    """Every file the runs left, fetched through the server: the type its name says, one of the
    app's own; what each visitor sent kept apart, as sent, and never served."""
    files = [path for path in app.RUNS_DIR.rglob("*") if path.is_file()]
    assert {path.suffix for path in files} >= kinds
    for path in files:
        response = served(url, path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == SERVED_TYPES[path.suffix], (path, response.headers)
    private = [path for path in (app.PRIVATE_DIR / str(os.getpid())).rglob("*") if path.is_file()]
    assert private and all(path.read_bytes()[:2] in (b"\x89P", b"\xff\xd8") for path in private), \
        "what each visitor sent (PNGs, the example's JPEG) is kept apart, as sent"
    assert all(served(url, path).status_code == 403 for path in private), "and never served"


def test_markup_uploaded_under_any_name_comes_back_only_as_media_the_app_made(hostile, tmp_path, capfd):
    """Through the API, which takes any name. (A page's run, which keeps its input and thumbnail as
    PNG and JPEG too, is checked in the flood test below, whose page visitor uploads such a PNG.)"""
    url, app = hostile["url"], hostile["app"]
    client = Client(url, verbose=False)
    for name in ("x.html", "x.svg", "x.xml", "x.js"):  # valid PNGs under a name of the sender's: they run
        text, preview, video = client.predict(handle_file(str(png_carrying_markup(tmp_path / name))), "", "fast",
                                              api_name="/predict")
        assert text and video.endswith(".mp4")
    svg = tmp_path / "pure.svg"
    svg.write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    with pytest.raises(Exception, match="could not be read as an image"):
        client.predict(handle_file(str(svg)), "", "fast", api_name="/predict")
    assert_every_served_file_is_media_the_app_made(url, app, {".mp4", ".jpg", ".json", ".mkv"})
    assert "Traceback" not in capfd.readouterr().err


def write_mp4(path: Path, frames: int = 9, size: int = 64) -> Path:
    iio.imwrite(path, np.full((frames, size, size, 3), 120, np.uint8), fps=8, plugin="FFMPEG",
                macro_block_size=16)
    return path


def hostile_clip(kind: str, tmp_path: Path) -> Path:
    """A file named .mp4 that is not the clip it claims to be."""
    clip = tmp_path / f"{kind}.mp4"
    real = write_mp4(tmp_path / "real.mp4")
    if kind == "concat":  # reads another local video
        clip.write_text(f"ffconcat version 1.0\nfile {real}\n")
    elif kind == "concat loop":  # opens itself, again and again, until the process runs out of files
        clip.write_text(f"ffconcat version 1.0\nfile {clip.name}\n")
    elif kind == "hls":  # reads another local video
        clip.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{real}\n#EXT-X-ENDLIST\n")
    elif kind == "sdp":  # would listen on the network
        clip.write_text("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n"
                        "a=rtpmap:96 H264/90000\n")
    elif kind == "matroska":  # a container other than the one a clip may be
        iio.imwrite(tmp_path / "real.mkv", np.zeros((9, 64, 64, 3), np.uint8), fps=8, plugin="FFMPEG")
        clip.write_bytes((tmp_path / "real.mkv").read_bytes())
    elif kind == "grows midway":  # a small stream that turns into one over the pixel budget
        side = int(MAX_CLIP_PIXELS ** 0.5) // 16 * 16 + 64
        big = write_mp4(tmp_path / "big.mp4", frames=2, size=side)
        listing = tmp_path / "parts.txt"
        listing.write_text(f"file '{real}'\nfile '{big}'\n")
        import subprocess

        import imageio_ffmpeg

        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "concat", "-safe", "0", "-i",
                        str(listing), "-c", "copy", str(clip)], check=True)
    elif kind == "mpeg4":  # a codec no phone writes today: its decoder is not one a stranger may reach
        iio.imwrite(clip, np.zeros((9, 64, 64, 3), np.uint8), fps=8, plugin="FFMPEG", codec="mpeg4")
    elif kind == "truncated":
        data = real.read_bytes()
        clip.write_bytes(data[:len(data) // 3])
    return clip


@pytest.mark.parametrize("kind, said", [
    ("concat", "could not be read as a video"), ("concat loop", "could not be read as a video"),
    ("hls", "could not be read as a video"), ("mpeg4", "That clip's video is mpeg4"),
    ("sdp", "could not be read as a video"), ("matroska", "could not be read as a video"),
    ("grows midway", "That clip is"), ("truncated", "could not be read as a video")])
def test_a_clip_that_is_not_what_it_claims_is_refused_in_words_before_anything_else_is_read(kind, said, tmp_path):
    clip = hostile_clip(kind, tmp_path)
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(InputError, match=said):
        list(read_clip(clip, 24))
    assert len(os.listdir("/proc/self/fd")) <= descriptors, "no file left open"


@needs_chromium
def test_one_clients_flood_is_refused_in_words_and_a_page_visitor_is_still_served(hostile, tmp_path, capfd):
    """A run is held on the GPU while one client asks for four more: it gets its share of places and
    is told in words past it; a second API client finds the API's share taken; a visitor of the
    page still gets a place, and every admitted run ends with its video."""
    from playwright import sync_api as playwright

    url, gate, app = hostile["url"], hostile["gate"], hostile["app"]
    flooder, other = Client(url, verbose=False), Client(url, verbose=False)
    gate.update(armed=True, steps=0)
    gate["open"].clear()
    gate["held"].clear()
    jobs = [flooder.submit(handle_file(EXAMPLE), "", "fast", api_name="/predict")]
    assert gate["held"].wait(60), "the first run holds the GPU"
    jobs += [flooder.submit(handle_file(EXAMPLE), "", "fast", api_name="/predict") for _ in range(4)]
    outcomes = []
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_page(browser, url)
        upload(page, png_carrying_markup(tmp_path / "page.png"))  # the page takes image names; the API any
        refused_api = None
        try:
            other.predict(handle_file(EXAMPLE), "", "fast", api_name="/predict")
        except Exception as exc:  # noqa: BLE001 - the refusal, as the client sees it
            refused_api = str(exc)
        page.click("#generate")
        page.wait_for_function("document.querySelector('#queue').innerText.includes('Waiting')", timeout=30_000)
        gate["armed"] = False
        gate["open"].set()
        for job in jobs:
            try:
                outcomes.append(job.result()[2])
            except Exception as exc:  # noqa: BLE001 - the refusal, as the client sees it
                outcomes.append(str(exc))
        wait_idle(page)
        assert page.locator("#video video[src]").count() == 1 and "mode · seed" in page.inner_text("#status")
        page.wait_for_function("document.querySelectorAll('#history img').length == 1", timeout=30_000)
        assert page.evaluate("document.title") != "owned"
        browser.close()
    assert_every_served_file_is_media_the_app_made(url, app, {".mp4", ".jpg", ".png", ".json", ".mkv"})
    admitted = [o for o in outcomes if o.endswith(".mp4")]
    refused = [o for o in outcomes if not o.endswith(".mp4")]
    assert len(admitted) == PLACES_PER_VISITOR and len(refused) == 5 - PLACES_PER_VISITOR
    assert all("runs on their way" in o for o in refused), refused
    assert refused_api and "The API's share of this GPU's queue" in refused_api
    assert "Traceback" not in capfd.readouterr().err


def test_submissions_at_once_get_no_more_places_than_one_after_another(pipe):
    """Gradio queues an event only after its validator returns, and validators run side by side:
    submissions at once all see the same queue. A place promised counts until its run begins (each
    handler says so), or, its event cancelled before it began, until the promise lapses; one after
    another, a visitor is never refused."""
    import app
    from foresight.gpu_queue import Places
    from foresight.runtime import StopFlag

    from test_story_page import Visitor, last

    page, now = app.make_page(pipe, "fast"), [0.0]
    app.build_demo(page).queue(max_size=4)  # the API's share: 2 places
    page.places, ui = Places(clock=lambda: now[0]), page.ui  # time stands still: no promise lapses
    visitor, gone = Visitor("visitor"), Visitor("gone")
    at_once = [page.admit(visitor, 5, api=True)[0] for _ in range(PLACES_PER_VISITOR + 1)]  # none queued yet
    assert [v["is_valid"] for v in at_once] == [True] * PLACES_PER_VISITOR + [False]
    assert "runs on their way" in at_once[-1]["message"]
    for _ in range(PLACES_PER_VISITOR):  # the promised runs begin, and end
        assert last(page.predict(EXAMPLE, request=visitor))[ui.video]
    history = []
    for handler, inputs in [("generate", 8)] * 2 + [("and_then", 7)] * 2 + [("retry_video", 2)] * 2:
        assert page.admit(visitor, inputs)[0]["is_valid"], f"one after another, before {handler}"
        run = {"generate": lambda: page.generate(EXAMPLE, "", "fast", False, "auto", 0, False, StopFlag(), visitor),
               "and_then": lambda: page.and_then("", False, "auto", 1, False, history[0], StopFlag(), visitor),
               "retry_video": lambda: page.retry_video(history[0], StopFlag(), visitor)}[handler]
        record = last(run())[ui.record]  # a retry of a run whose video did not fail is refused at once
        history = page.on_run_end(record, history, visitor)[ui.history]
    assert page.admit(visitor, 8)[0]["is_valid"]
    assert all(page.admit(gone, 8)[0]["is_valid"] for _ in range(PLACES_PER_VISITOR))
    assert not page.admit(gone, 8)[0]["is_valid"], "promised, not begun: still counted"
    now[0] += page.places.hold_s  # cancelled while on their way: the promises lapse
    assert page.admit(gone, 8)[0]["is_valid"]
    bare = Visitor(None)  # an HTTP client without a session: Gradio names its event after the check
    assert all(page.admit(bare, 5, api=True)[0]["is_valid"] for _ in range(2))
    refused = page.admit(bare, 5, api=True)[0]
    assert not refused["is_valid"] and "The API's share" in refused["message"], "held by the API's share alone"
    assert last(page.predict(EXAMPLE, request=Visitor("an event's own id")))[ui.video]
    assert page.admit(bare, 5, api=True)[0]["is_valid"], "its place came back when its run began"


@pytest.mark.parametrize("fmt", ["JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_image_format_an_upload_may_be_reads_its_own_file_and_nothing_else(tmp_path, fmt):
    """Each format the upload check opens (inputs.FORMATS) is read from the file itself: no other
    file is opened and no program is started while it loads (Python's audit events: open, subprocess)."""
    import sys

    from foresight.inputs import FORMATS, load_image

    assert fmt in (*FORMATS, "MPO")
    path = tmp_path / "image.bin"
    frames = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (64, 48), (10, 200, 10))]
    frames[0].save(path, format=fmt, **({"save_all": True, "append_images": frames[1:]} if fmt == "MPO" else {}))
    seen, watching = [], [True]

    def watch(event, args):
        if watching and (event == "subprocess.Popen" or event == "open" and str(args[0]) != str(path)):
            seen.append((event, str(args[0])))

    sys.addaudithook(watch)  # an audit hook stays for the process: it watches only while `watching`
    try:
        load_image(path)
    finally:
        watching.clear()
    assert seen == [], f"{fmt} reached beyond its own file: {seen}"
