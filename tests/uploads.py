"""Files a stranger could upload, written without ever holding their pixels: valid images that are
small on disk and huge decoded (a flat PNG compresses about 1000:1), and a JPEG whose header claims
any size. Used by the upload tests and by `scripts/upload_costs.py`."""

import io
import struct
import zlib

from PIL import Image

PNG_MODES = {"L": (0, 1, 8), "I;16": (0, 2, 16), "RGB": (2, 3, 8), "RGBA": (6, 4, 8)}  # colour type, bytes, depth


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def flat_png(path, width: int, height: int, mode: str = "L") -> int:
    """A valid `width` x `height` PNG of one grey, streamed row by row; returns its size in bytes."""
    color_type, channels, depth = PNG_MODES[mode]
    row = b"\x00" + b"\x80" * (width * channels)  # filter type 0, then the pixels
    compressor = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)))
        pending = b""
        for _ in range(height):
            pending += compressor.compress(row)
            if len(pending) > 1 << 20:
                f.write(_chunk(b"IDAT", pending))
                pending = b""
        f.write(_chunk(b"IDAT", pending + compressor.flush()) + _chunk(b"IEND", b""))
        return f.tell()


def claimed_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims `width` x `height`: refused on its header
    or it fails to decode; either way nothing that size is ever decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)
