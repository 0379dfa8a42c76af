"""Whatever is uploaded becomes an RGB image fit for the preset, or a clear message before any model runs."""

import io

import numpy as np
import pytest
from PIL import Image

from foresight.config import PRESETS
from foresight.inputs import InputError, fit_size, load_image

from conftest import run_events


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    """A phone photo stored sideways reaches the models upright: the pixels turn, not only the size."""
    image = Image.new("RGB", (200, 100), (10, 200, 10))
    image.paste((250, 0, 0), (0, 0, 40, 40))  # stored top-left: red
    image.paste((0, 0, 250), (0, 60, 40, 100))  # stored bottom-left: blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = np.asarray(load_image(encode(image, "JPEG", exif=exif)), dtype=np.int16)
    assert loaded.shape == (200, 100, 3)

    def colour(top, left):
        return loaded[top + 10:top + 30, left + 10:left + 30].mean(axis=(0, 1))

    assert np.abs(colour(0, 60) - (250, 0, 0)).max() < 30, "the stored top-left is now the top-right"
    assert np.abs(colour(0, 0) - (0, 0, 250)).max() < 30, "the stored bottom-left is now the top-left"
    assert np.abs(colour(160, 40) - (10, 200, 10)).max() < 30


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK", "P", "I;16", "F", "1"])
def test_any_mode_becomes_rgb(mode):
    rgb = Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.arange(64 * 96).reshape(64, 96) * 10).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "F", "I;16") else "PNG"
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == "RGB" and loaded.size == (96, 64)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    assert load_image(encode(image, "PNG")).getpixel((5, 5)) == (255, 255, 255)


def test_animation_gives_its_first_frame():
    frames = [Image.new("RGB", (64, 64), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = load_image(data).getpixel((10, 10))
    assert r > 200 and b < 50


def test_huge_images_are_downscaled_first():
    loaded = load_image(encode(Image.new("RGB", (8000, 6000), (1, 2, 3)), "PNG"))
    assert max(loaded.size) <= 4096 and loaded.size[0] / loaded.size[1] == pytest.approx(4 / 3, rel=0.01)


@pytest.mark.parametrize("source, message", [
    (b"definitely not an image", "could not be read as an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "could not be read as an image"),
    (None, "add an image"),
    ("/no/such/file.png", "No image file"),
])
def test_unreadable_input_has_a_human_message(source, message):
    with pytest.raises(InputError, match=message):
        load_image(source)


def test_tiny_image_is_refused():
    with pytest.raises(InputError, match="too small"):
        load_image(encode(Image.new("RGB", (8, 8)), "PNG"))


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (1000, 100), (50, 50), (4000, 3000)])
@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
def test_fit_size_keeps_aspect_within_the_presets_area(size, preset):
    width, height = fit_size(*size, preset)
    assert width % 32 == 0 and height % 32 == 0
    assert width * height <= preset.width * preset.height
    aspect = min(max(size[0] / size[1], 1 / 3), 3)
    assert width / height == pytest.approx(aspect, rel=0.25)


def test_bad_input_is_an_error_event_before_any_model_runs(pipe, tmp_path):
    events = run_events(pipe, b"garbage", out_dir=tmp_path)
    assert [ev["type"] for ev in events] == ["error"]
    assert events[0]["stage"] == "input" and "could not be read" in events[0]["message"]


def test_unknown_preset_is_an_input_error(pipe, photo, tmp_path):
    events = run_events(pipe, photo, preset="ultra", out_dir=tmp_path)
    assert events[0]["type"] == "error" and "Unknown preset" in events[0]["message"]


def test_unknown_mode_is_an_input_error(pipe, photo, tmp_path):
    events = run_events(pipe, photo, mode="psychic", out_dir=tmp_path)
    assert [ev["type"] for ev in events] == ["error"] and "Unknown mode" in events[0]["message"]


def test_an_overlong_question_is_an_input_error(pipe, photo, tmp_path):
    events = run_events(pipe, photo, prompt="why? " * 300, out_dir=tmp_path)
    assert [ev["type"] for ev in events] == ["error"] and "keep it under 1000" in events[0]["message"]
