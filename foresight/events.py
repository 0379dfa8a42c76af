"""The streaming protocol (docs/DESIGN.md): plain JSON-serialisable dicts with a `type` and `t`."""

from __future__ import annotations

import base64
import io

from PIL import Image

EVENT_TYPES = ("thinking_start", "text_chunk", "video_frame", "video_complete", "thinking_complete", "error")


def event(type_: str, t: float, **fields) -> dict:
    assert type_ in EVENT_TYPES, type_
    return {"type": type_, "t": round(t, 4), **fields}


def decode_frame(ev: dict) -> Image.Image:
    """The image carried by a `video_frame` event."""
    return Image.open(io.BytesIO(base64.b64decode(ev["data"]))).convert("RGB")


def for_log(ev: dict) -> dict:
    """The event as written to an events log: frame data omitted."""
    return {k: v for k, v in ev.items() if k != "data"}
