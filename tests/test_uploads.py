"""Untrusted uploads: nothing is decoded before its header says it fits, a decode never grows past the
budget, and however many arrive at once, only a few decode at a time. Files the tests write themselves
(`tests/uploads.py`): small on disk, huge decoded."""

import contextlib
import io
import threading

import pytest
from PIL import GifImagePlugin, Image, ImageFile

from foresight import inputs
from foresight.inputs import MAX_DECODES, MAX_PIXELS, InputError, check_upload, load_image

from uploads import claimed_jpeg, flat_png


@pytest.fixture
def decodes(monkeypatch):
    """Every decode Pillow does from here on: the size it decodes at, and how many ran at once. A
    test may set `meet`, a barrier each decode waits at before it goes on."""
    seen = {"sizes": [], "at_once": 0, "most_at_once": 0, "meet": None}
    lock, load = threading.Lock(), ImageFile.ImageFile.load

    def watched(self):
        if not self.tile:  # decoded already (or nothing to decode): no work
            return load(self)
        with lock:
            seen["sizes"].append(self.size)
            seen["at_once"] += 1
            seen["most_at_once"] = max(seen["most_at_once"], seen["at_once"])
        try:
            if seen["meet"] is not None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    seen["meet"].wait()
            return load(self)
        finally:
            with lock:
                seen["at_once"] -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched)
    return seen


def test_a_png_over_the_budget_is_refused_from_its_header_never_decoded(tmp_path, decodes):
    path = tmp_path / "bomb.png"
    assert flat_png(path, 8000, 7000, "RGBA") < 2 * 2**20  # 224 MB decoded, a few hundred KB on disk
    with pytest.raises(InputError, match=r"8000×7000 \(56 megapixels\); images up to 50 megapixels"):
        load_image(path)
    with pytest.raises(InputError, match="56 megapixels"):
        check_upload(path)
    assert decodes["sizes"] == []


def test_a_jpeg_over_the_budget_decodes_at_a_reduced_scale_and_one_claiming_too_much_is_refused(tmp_path, decodes):
    photo = tmp_path / "huge.jpg"
    Image.new("L", (9600, 7200), 128).save(photo, quality=80)  # 69 megapixels
    loaded = load_image(photo)
    (decoded,) = decodes["sizes"]
    assert decoded[0] * decoded[1] <= MAX_PIXELS and decoded == (4800, 3600), "draft: half the size, not whole"
    assert loaded.size == (3200, 2400) and loaded.mode == "RGB"
    with pytest.raises(InputError, match=r"40000×40000 \(1600 megapixels\).*\(JPEG photos up to 200\)"):
        load_image(claimed_jpeg(40000, 40000))
    assert len(decodes["sizes"]) == 1


def test_a_file_over_the_size_limit_is_refused_by_its_size(tmp_path, monkeypatch, decodes):
    monkeypatch.setattr(inputs, "MAX_UPLOAD_MB", 1)
    path = tmp_path / "large.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20))
    for source in (path, path.read_bytes()):
        with pytest.raises(InputError, match="That file is 3 MB; files up to 1 MB can be used"):
            load_image(source)
    assert decodes["sizes"] == []


def test_only_a_few_decode_at_once_however_many_arrive(decodes):
    """Six uploads at once: two decode together, never three. Inside, each decode waits for a third
    to join it (a barrier of three); with the bound, none can, so the first two wait out the
    barrier's deadline together, and the others go through it broken."""
    data = io.BytesIO()
    Image.new("RGB", (600, 400), (20, 90, 160)).save(data, format="PNG")
    decodes["meet"] = threading.Barrier(MAX_DECODES + 1, timeout=2)
    start, results = threading.Barrier(6), []

    def upload():
        start.wait()
        results.append(load_image(data.getvalue()))

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(image.size == (600, 400) for image in results)
    assert len(decodes["sizes"]) == 6 and decodes["most_at_once"] == MAX_DECODES


def test_the_upload_check_reads_the_header_and_says_what_the_run_will_do(tmp_path, decodes):
    path = tmp_path / "big.png"
    flat_png(path, 7000, 5000, "RGB")
    assert check_upload(path) == ["Downscaled from 7000×5000 to 3500×2500."]
    assert decodes["sizes"] == [], "no decode at upload"
    notes = []
    assert load_image(path, notes).size == (3500, 2500) and notes == check_upload(path)


def test_an_animation_gives_its_first_frame_without_walking_the_others(monkeypatch):
    frames = [Image.new("RGB", (64, 64), (255, 0, 0))] + [Image.new("RGB", (64, 64), (0, 0, i)) for i in range(99)]
    data = io.BytesIO()
    frames[0].save(data, format="GIF", save_all=True, append_images=frames[1:])
    visited, seek = [], GifImagePlugin.GifImageFile._seek
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek",
                        lambda self, frame, *args: (visited.append(frame), seek(self, frame, *args))[1])
    notes = []
    image = load_image(data.getvalue(), notes)
    assert image.getpixel((10, 10)) == (255, 0, 0) and notes == ["Used the first frame of the animation."]
    assert max(visited) <= 1, "frame 1 at most (to know it is animated), not all 100"


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "PCX"])
def test_formats_no_camera_makes_are_not_opened(tmp_path, fmt):
    """Pillow opens dozens of formats (EPS by running Ghostscript); an upload is one of the few
    that cameras, phones and screens make."""
    path = tmp_path / f"image.{fmt.lower()}"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path, format=fmt) if fmt != "EPS" else path.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n")
    with pytest.raises(InputError, match="could not be read as an image"):
        load_image(path)


def test_the_page_hands_an_upload_on_undecoded(tmp_path, decodes):
    """gr.Image's own preprocessing decodes and re-saves any upload that is not RGB; the page's
    image input passes the file on, for the run to check its header first."""
    from gradio.data_classes import ImageData

    from app import UploadImage

    path = tmp_path / "bomb.png"
    flat_png(path, 8000, 7000, "RGBA")
    assert UploadImage(type="filepath").preprocess(ImageData(path=str(path), orig_name="bomb.png")) == str(path)
    assert decodes["sizes"] == []


def test_an_inline_image_an_api_call_sends_is_kept_as_its_bytes_undecoded(tmp_path, decodes):
    """A `data:` URL (JSON, so no max_file_size) would be decoded and re-saved by gr.Image; the page
    keeps its bytes as a file for the run's header check."""
    import base64

    from gradio.data_classes import ImageData

    from app import UploadImage

    path = tmp_path / "bomb.png"
    flat_png(path, 8000, 7000, "RGBA")
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    kept = UploadImage(type="filepath").preprocess(ImageData(url=url))
    assert open(kept, "rb").read() == path.read_bytes() and decodes["sizes"] == []
    with pytest.raises(InputError, match="56 megapixels"):
        load_image(kept)
