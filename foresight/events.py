"""The streaming protocol (docs/DESIGN.md): plain JSON-serialisable dicts with a `type` and `t`."""

from __future__ import annotations

from PIL import Image

EVENT_TYPES = ("thinking_start", "text_chunk", "video_frame", "video_complete", "thinking_complete", "error")


def event(type_: str, t: float, **fields) -> dict:
    assert type_ in EVENT_TYPES, type_
    return {"type": type_, "t": round(t, 4), **fields}


def decode_frame(ev: dict) -> Image.Image:
    """The image a `video_frame` event points at (its JPEG file)."""
    with Image.open(ev["path"]) as image:
        return image.convert("RGB")
