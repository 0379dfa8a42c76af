"""Whatever a user uploads becomes one RGB image, or a clear refusal; then each model's view of it.

`load_image` opens the upload (EXIF rotation, first frame, any mode to RGB, huge ones shrunk) and
notes in words what it did. Each consumer then prepares its own view, the same in serving and in
training:

* `vlm_view`: Qwen's view, at its own pixel budget whatever the video preset;
* DINOv2 takes the loaded image as it is (its processor resizes and centre-crops);
* `video_view`: LTX's condition image, fitted to the preset's area with sides divisible by 32.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from foresight.config import Preset

MIN_SIDE = 32  # smaller than this there is nothing to look at
# Keeps the prompt well inside the static KV cache (Settings.static_cache_len): a longer one grows the
# cache, and a compiled decode step then compiles again.
MAX_QUESTION_CHARS = 1000
MAX_SIDE_BEFORE_DOWNSCALE = 4096  # anything larger is shrunk before any other work
MAX_ASPECT = 3  # longer strips are centre-cropped to 3:1 for the video
Image.MAX_IMAGE_PIXELS = 20000 * 20000  # refuse decompression bombs beyond this, with our message


class InputError(ValueError):
    """Bad input; the message is for a person."""


def load_image(source, notes: list[str] | None = None) -> Image.Image:
    """Open a path, bytes or PIL image; apply EXIF rotation; first frame; RGB; downscale huge ones.

    What was done that the user may not expect is appended to `notes`, in words.
    """
    notes = [] if notes is None else notes
    if source is None:
        raise InputError("Please add an image first (upload, webcam or paste).")
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
        frames = getattr(image, "n_frames", 1)
        image.seek(0)  # the first frame of an animation
        image.draft("RGB", (MAX_SIDE_BEFORE_DOWNSCALE,) * 2)  # JPEG: decode huge files at a reduced scale, cheaply
        image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError("That image is too large to open (over 400 megapixels).") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError("That file could not be read as an image. Try a PNG or JPEG.") from exc
    if frames > 1:
        notes.append(f"Used the first of its {frames} animation frames.")
    image = ImageOps.exif_transpose(image)
    original = image.size
    if max(image.size) > MAX_SIDE_BEFORE_DOWNSCALE:
        image.thumbnail((MAX_SIDE_BEFORE_DOWNSCALE,) * 2, Image.Resampling.LANCZOS)
    if image.size != original and (image.width * image.height) < (original[0] * original[1]) / 1.5:
        notes.append(f"Downscaled from {original[0]}×{original[1]} to {image.width}×{image.height}.")
    image = to_rgb(image)
    if min(image.size) < MIN_SIDE:
        raise InputError(f"That image is too small ({image.width}×{image.height}); use one at least "
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


def vlm_view(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Qwen2.5-VL's view: resized to Qwen's `smart_resize` size (sides multiples of 28, area within
    the bounds, aspect kept), with PIL's bicubic resize, as the Qwen authors' `qwen-vl-utils`
    (`fetch_image`) prepares images before the processor; the processor then leaves the size alone.
    Huge images are first reduced by an integer factor (`reducing_gap`), which saves ~0.1 s of CPU."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    height, width = smart_resize(image.height, image.width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)


def fit_size(width: int, height: int, preset: Preset, multiple: int = 32) -> tuple[int, int]:
    """The largest size with the input's aspect ratio within the preset's area, sides divisible by `multiple`."""
    area = preset.width * preset.height
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    fitted_w = math.sqrt(area * aspect)
    fitted_h = fitted_w / aspect
    return max(multiple, int(fitted_w // multiple) * multiple), max(multiple, int(fitted_h // multiple) * multiple)


def video_view(image: Image.Image, preset: Preset, notes: list[str] | None = None) -> Image.Image:
    """LTX's condition image: the input fitted to the preset (centre-cropped to at most 3:1)."""
    width, height = fit_size(image.width, image.height, preset)
    aspect = image.width / image.height
    if notes is not None and not 1 / MAX_ASPECT <= aspect <= MAX_ASPECT:
        kept = (min(aspect, MAX_ASPECT) if aspect >= 1 else max(aspect, 1 / MAX_ASPECT))
        share = kept / aspect if aspect >= 1 else aspect / kept
        notes.append(f"The {image.width}×{image.height} image is wider than 3:1 and was centre-cropped to 3:1 "
                     f"({share:.0%} of it) for the video." if aspect > 1 else
                     f"The {image.width}×{image.height} image is taller than 1:3 and was centre-cropped to 1:3 "
                     f"({share:.0%} of it) for the video.")
    return crop_and_resize(image, width, height)


def crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-cropped to the target's aspect ratio, then resized with PIL's bicubic filter: how LTX's
    authors fit a condition image (`ltx_video/inference.py`, `load_image_to_tensor_with_resize_and_crop`)."""
    target = width / height
    if image.width / image.height > target:
        crop_width, crop_height = int(image.height * target), image.height
    else:
        crop_width, crop_height = image.width, int(image.width / target)
    left, top = (image.width - crop_width) // 2, (image.height - crop_height) // 2
    return image.crop((left, top, left + crop_width, top + crop_height)).resize((width, height),
                                                                               Image.Resampling.BICUBIC)
