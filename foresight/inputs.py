"""Whatever a user uploads becomes one RGB image, or a clear refusal; then each model's view of it.

`load_image` opens the upload (EXIF rotation, first frame, any mode to RGB, huge ones shrunk) and
notes in words what it did. Every upload is a stranger's, so nothing is decoded before its header
says it fits (`open_image`: the file's size, its format, the pixels it would decode to), and at
most MAX_DECODES decode at once, however many visitors upload. `check_upload` says from the header
alone what `load_image` would refuse or note, for the page. Each consumer then prepares its own
view, the same in serving and in training:

* `vlm_view`: Qwen's view, at its own pixel budget whatever the video preset;
* DINOv2 takes the loaded image as it is (its processor resizes and centre-crops);
* `video_view`: LTX's condition image, fitted to the preset's area with sides divisible by 32.

A clip to continue ("And then?" from a bare mp4) is a stranger's too: `read_clip` checks its
size, its stream's pixels and its length before and while it decodes (MAX_CLIP_*).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from foresight.config import Preset

MIN_SIDE = 32  # smaller than this there is nothing to look at
# Keeps the prompt well inside the static KV cache (Settings.static_cache_len): a longer one grows the
# cache, and a compiled decode step then compiles again.
MAX_QUESTION_CHARS = 1000
MAX_SIDE_BEFORE_DOWNSCALE = 4096  # anything larger is shrunk before any other work
MAX_ASPECT = 3  # longer strips are centre-cropped to 3:1 for the video
# What an upload may cost (docs/DESIGN.md, "Untrusted uploads"). Phones and cameras make up to 50
# megapixels, decoded whole in at most 200 MB (RGBA); a JPEG decodes at up to 1/8 of its size
# (`draft`), so the 200-megapixel JPEGs some phones make are read at a quarter of that.
MAX_UPLOAD_MB = int(os.environ.get("FORESIGHT_MAX_UPLOAD_MB", 50))  # also Gradio's max_file_size (app.py)
MAX_PIXELS = 50_000_000  # decoded whole: PNG, WebP, GIF, BMP, TIFF
MAX_JPEG_PIXELS = 200_000_000  # a JPEG's own size; it is decoded at a reduced scale
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what cameras, phones and screens make (JPEG: MPO too)
MAX_DECODES = 2  # at once, in this process
JPEG_FORMATS = ("JPEG", "MPO")
TURNING = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Modes Pillow's box reduction takes; the others (palette, 1-bit, 16-bit grey) are made RGB first.
# (A palette-and-alpha image would have its palette indices averaged.)
REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"}
# Pillow's own guard, for an image opened anywhere else: it refuses past twice this (2 gigapixels,
# 8 GB as RGBA). Ours comes first and says the image's size; Pillow's warnings below that are ours.
Image.MAX_IMAGE_PIXELS = 1_000_000_000
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
LIMITS = (f"images up to {MAX_PIXELS // 1_000_000} megapixels can be used (JPEG photos up to "
          f"{MAX_JPEG_PIXELS // 1_000_000})")
_decoding = threading.BoundedSemaphore(MAX_DECODES)
# A clip to continue: at most Full HD and 20 s (what a story's segments add up to is far less),
# and however its container describes itself, no more frames than that length at 60 fps are decoded.
MAX_CLIP_PIXELS = 1920 * 1088
MAX_CLIP_SECONDS = 20
MAX_CLIP_FRAMES = MAX_CLIP_SECONDS * 60
CLIP_LIMITS = f"clips up to {MAX_CLIP_SECONDS} s, Full HD and {MAX_UPLOAD_MB} MB can be continued"
# A clip is opened by the one demuxer a clip may be, never by what ffmpeg guesses from its bytes (a
# text file named .mp4 can be a playlist: ffmpeg's concat, HLS or SDP demuxers then open other files,
# itself included, or the network). "mp4" is ffmpeg's mov/mp4 demuxer (phones' .mp4 and .mov alike);
# `protocol_whitelist`: it may read the file itself and nothing else; `enable_drefs` off (its default):
# no data references to other files. Then only the codecs phones and this app write are decoded.
CLIP_DEMUXER = "mp4"
CLIP_CODECS = ("h264", "hevc")
READ_ONLY_THE_FILE = {"protocol_whitelist": "file", "enable_drefs": "0"}


class InputError(ValueError):
    """Bad input; the message is for a person."""


def load_image(source, notes: list[str] | None = None) -> Image.Image:
    """Open a path, bytes or PIL image; apply EXIF rotation; first frame; RGB; downscale huge ones.

    Refused (InputError) before any decoding if its header says it is too big (`open_image`).
    What was done that the user may not expect is appended to `notes`, in words.
    """
    notes = [] if notes is None else notes
    image = opened = open_image(source)
    notes += header_notes(image)
    target = downscaled_size(*image.size)  # as stored; EXIF may turn it
    ours = not isinstance(source, Image.Image)  # a file opened here, closed once decoded
    if not ours:  # the caller's image: turned and shrunk on a copy
        image = image.copy()
    with _decoding, contextlib.closing(opened) if ours else contextlib.nullcontext():
        try:
            image.seek(0)  # the first frame of an animation
            if image.format in JPEG_FORMATS:  # decoded at a reduced scale, at least the target's size
                image.draft("RGB", target)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError("That file could not be read as an image. Try a PNG or JPEG.") from exc
        if image.getexif().get(0x0112) in TURNING:  # read now: a PNG's EXIF may follow its pixels
            target = target[::-1]
        ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
        if image.mode not in REDUCIBLE_MODES:
            image = to_rgb(image)
        image = to_rgb(shrink(image, target))
    if min(image.size) < MIN_SIDE:
        raise InputError(f"That image is too small ({image.width}×{image.height}); use one at least "
                         f"{MIN_SIDE} pixels on each side.")
    return image


def open_image(source) -> Image.Image:
    """The upload opened but not decoded, once its file size, format and decoded size are within
    the budget (MAX_UPLOAD_MB, FORMATS, MAX_PIXELS or MAX_JPEG_PIXELS), else InputError."""
    if source is None:
        raise InputError("Please add an image first (upload, webcam or paste).")
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        size, opened = len(source), lambda: io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"No image file at {path}.")
        size, opened = path.stat().st_size, lambda: path
    if size > MAX_UPLOAD_MB * 2**20:
        raise InputError(f"That file is {size / 2**20:.0f} MB; files up to {MAX_UPLOAD_MB} MB can be used.")
    try:
        image = Image.open(opened(), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(f"That image is over {2 * Image.MAX_IMAGE_PIXELS // 10**9} gigapixels; {LIMITS}.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError("That file could not be read as an image. Try a PNG or JPEG.") from exc
    limit = MAX_JPEG_PIXELS if image.format in JPEG_FORMATS else MAX_PIXELS
    if image.width * image.height > limit:
        image.close()
        raise InputError(f"That image is {image.width}×{image.height} ({image.width * image.height / 1e6:.0f} "
                         f"megapixels); {LIMITS}.")
    return image


def check_upload(source) -> list[str]:
    """For the page, as a file arrives: InputError if `load_image` would refuse it on its header,
    else the notes it would make. Reads the header only (a decode costs the run, once)."""
    image = open_image(source)
    try:
        return header_notes(image)
    finally:
        if image is not source:
            image.close()


def header_notes(image: Image.Image) -> list[str]:
    """What loading will do that the user may not expect, known from the header: the first frame of
    an animation (without walking its frames), a downscale."""
    notes = ["Used the first frame of the animation."] if getattr(image, "is_animated", False) else []
    width, height = upright_size(image)
    target = downscaled_size(width, height)
    if target != (width, height):
        notes.append(f"Downscaled from {width}×{height} to {target[0]}×{target[1]}.")
    return notes


def upright_size(image: Image.Image) -> tuple[int, int]:
    """The size once EXIF rotation is applied, as far as the header tells: a PNG's EXIF may follow
    its pixels (Pillow's `getexif` would decode them to find it), so a PNG's counts only if it
    came first."""
    exif = image.getexif() if image.format != "PNG" or "exif" in image.info else {}
    return (image.height, image.width) if exif.get(0x0112) in TURNING else image.size


def downscaled_size(width: int, height: int) -> tuple[int, int]:
    """The size a loaded image has: reduced by the smallest whole factor that brings its longer
    side within MAX_SIDE_BEFORE_DOWNSCALE (aspect kept; a box reduction, as a JPEG's draft does)."""
    factor = -(-max(width, height) // MAX_SIDE_BEFORE_DOWNSCALE)
    return -(-width // factor), -(-height // factor)


def shrink(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """The decoded image at `downscaled_size`: a box reduction by a whole factor (cheap however big),
    then Lanczos for what a JPEG's draft left over."""
    factor = min(image.width // target[0], image.height // target[1])
    if factor > 1:
        image = image.reduce(factor)
    return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)


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
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
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


def read_clip(source, fps: int) -> Iterator[Image.Image]:
    """An untrusted clip's frames as RGB images, at `fps` (each moment k/fps, from its first frame,
    shows the latest frame at or before it), or InputError: from its header (file size, a video
    stream, its pixels and stated length), then while decoding (each frame's pixels, the frames
    decoded, their times). What the container claims decides nothing: however long its frames say
    they last, at most MAX_CLIP_SECONDS at `fps` come out."""
    import av

    path = Path(source)
    if not path.is_file():
        raise InputError(f"No clip at {path.name}.")
    if path.stat().st_size > MAX_UPLOAD_MB * 2**20:
        raise InputError(f"That clip is {path.stat().st_size / 2**20:.0f} MB; {CLIP_LIMITS}.")
    unreadable = "That file could not be read as a video. Send an mp4 made by Foresight, or another H.264 mp4."
    with _decoding:
        try:
            container = av.open(str(path), format=CLIP_DEMUXER, container_options=READ_ONLY_THE_FILE)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InputError(unreadable) from exc
        with container:
            if not container.streams.video:
                raise InputError(unreadable)
            stream = container.streams.video[0]
            if stream.codec_context.name not in CLIP_CODECS:
                raise InputError(f"That clip's video is {stream.codec_context.name}; clips in "
                                 f"{' or '.join(name.upper() for name in CLIP_CODECS)} can be continued.")
            _check_pixels(stream.codec_context.width, stream.codec_context.height)
            if container.duration is not None and container.duration / av.time_base > MAX_CLIP_SECONDS + 1:
                raise InputError(f"That clip is {container.duration / av.time_base:.0f} s long; {CLIP_LIMITS}.")
            # The last frame lasts one source frame (its rate, read from the header, is only trusted
            # to shorten that), so a clip of n frames at rate r comes out n/r seconds long.
            span = min(1 / float(stream.average_rate), 1 / fps) if stream.average_rate else 1 / fps
            yield from _resampled(_decoded(container, stream, unreadable), fps, span)


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_CLIP_PIXELS:
        raise InputError(f"That clip is {width}×{height}; {CLIP_LIMITS}.")


def _decoded(container, stream, unreadable: str) -> Iterator[tuple[float, Image.Image]]:
    """(seconds since the first frame, the frame) of a clip's video stream, within the clip budget."""
    import av

    start = None
    try:
        for count, frame in enumerate(container.decode(stream), start=1):
            _check_pixels(frame.width, frame.height)  # a stream may change its size midway
            start = float(frame.time or 0.0) if start is None else start
            moment = float(frame.time or 0.0) - start
            if count > MAX_CLIP_FRAMES or moment > MAX_CLIP_SECONDS + 1:
                raise InputError(f"That clip runs past {MAX_CLIP_SECONDS} s; {CLIP_LIMITS}.")
            yield moment, frame.to_image()
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:  # a stream broken midway
        raise InputError(unreadable) from exc


def _resampled(frames: Iterator[tuple[float, Image.Image]], fps: int, span: float) -> Iterator[Image.Image]:
    """Moments k/fps each showing the latest frame at or before them, until the last frame's end
    (its time + `span`, at most 1/fps); at least one. Bounded by the frames' times, which
    `_decoded` bounds."""
    slot, previous, moment = 0, None, 0.0
    for moment, frame in frames:
        while previous is not None and slot / fps < moment - 1e-4:  # the moments before this frame
            yield previous
            slot += 1
        previous = frame
    if previous is None:
        raise InputError("That clip holds no frames.")
    while slot == 0 or slot / fps < moment + span - 1e-4:  # the last frame's own moments
        yield previous
        slot += 1
