"""Turning whatever a user uploads into one RGB image of the preset's size, or a clear refusal."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from foresight.config import Preset

MIN_SIDE = 32  # smaller than this there is nothing to look at
# Keeps the prompt well inside the static KV cache (Settings.static_cache_len): a longer one grows the
# cache, and a compiled decode step then compiles again (about a minute on a GPU).
MAX_QUESTION_CHARS = 1000
MAX_PIXELS_BEFORE_DOWNSCALE = 4096 * 4096  # anything larger is shrunk before any other work
Image.MAX_IMAGE_PIXELS = 20000 * 20000  # refuse decompression bombs beyond this, with our message


class InputError(ValueError):
    """Bad input; the message is for a person."""


def load_image(source) -> Image.Image:
    """Open a path, bytes or PIL image; apply EXIF rotation; first frame; RGB; downscale huge ones."""
    if source is None:
        raise InputError("Please add an image first.")
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError(f"No image file at {path}.")
            image = Image.open(path)
        image.seek(0)  # the first frame of an animation
        image.draft("RGB", (4096, 4096))  # JPEG: decode huge files at a reduced scale, cheaply
        image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError("That image is too large to open (over 400 megapixels).") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError("That file could not be read as an image. Try a PNG or JPEG.") from exc
    image = ImageOps.exif_transpose(image)
    if image.width * image.height > MAX_PIXELS_BEFORE_DOWNSCALE:
        image.thumbnail((4096, 4096), Image.Resampling.LANCZOS)
    image = to_rgb(image)
    if min(image.size) < MIN_SIDE:
        raise InputError(f"That image is too small ({image.width}x{image.height}); use one at least "
                         f"{MIN_SIDE} pixels on each side.")
    return image


def check_question(question: str | None) -> str:
    """The user's question, stripped; refused when it is too long to think about quickly."""
    question = (question or "").strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise InputError(f"The question is {len(question)} characters long; please keep it under "
                         f"{MAX_QUESTION_CHARS}.")
    return question


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB: transparency onto white, 16-bit and float scaled to 8-bit, CMYK and palettes converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def fit_size(width: int, height: int, preset: Preset, multiple: int = 32) -> tuple[int, int]:
    """The largest size with the input's aspect ratio within the preset's area, sides divisible by `multiple`."""
    area = preset.width * preset.height
    aspect = min(max(width / height, 1 / 3), 3)  # very long strips are centre-cropped to 3:1
    fitted_w = math.sqrt(area * aspect)
    fitted_h = fitted_w / aspect
    return max(multiple, int(fitted_w // multiple) * multiple), max(multiple, int(fitted_h // multiple) * multiple)


def fit_to_preset(image: Image.Image, preset: Preset) -> Image.Image:
    width, height = fit_size(image.width, image.height, preset)
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
