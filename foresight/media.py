"""Encoding what the user sees: JPEG previews (files beside the mp4) and the mp4."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# imageio-ffmpeg starts ffmpeg with `preexec_fn=os.setpgrp` unless this is set (its documented
# switch). A preexec_fn makes Python fork() the whole process instead of vfork(); for a process
# holding a GPU's worth of mappings that fork is slow, and it sits between the last denoising step
# and the mp4. Without it, Ctrl-C in the terminal also reaches an ffmpeg mid-write: harmless.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
# An aborted writer (Stop) has written no frames on purpose; imageio-ffmpeg would warn about it.
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


def h264_round_trip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """One [H, W, 3] uint8 frame (even sides) through H.264 and back: what LTX's authors do to the
    condition image (`ltx_video/pipelines/crf_compressor.py`: PyAV, libx264 at this CRF, preset
    veryfast, yuv420p, one frame at rate 1), in memory."""
    import av

    with io.BytesIO() as mp4:
        container = av.open(mp4, "w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
            stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
            container.mux(stream.encode())
        finally:
            container.close()
        encoded = mp4.getvalue()
    with io.BytesIO(encoded) as mp4, av.open(mp4) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def write_jpeg(rgb: np.ndarray, path: Path, quality: int = 85) -> Path:
    """One [H, W, 3] uint8 frame as a JPEG file, written once where it is made: the page serves that file."""
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)
    return path


class Mp4Writer:
    """An mp4 about to be written: ffmpeg starts when this is made (while the video still renders),
    so its start-up is off the critical path; `write(frames)` then only encodes.

    H.264 in yuv420p with the index up front, so every browser plays it as soon as it arrives;
    x264's ultrafast preset (2-3x faster than veryfast on these short clips, for a larger file).
    """

    def __init__(self, path: Path, width: int, height: int, fps: int):
        import imageio_ffmpeg

        self.path, self.size = Path(path), (width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = imageio_ffmpeg.write_frames(
            str(self.path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=16, ffmpeg_log_level="error",
            output_params=["-preset", "ultrafast", "-crf", "20", "-movflags", "+faststart"])
        self._sink.send(None)  # starts ffmpeg

    def write(self, frames: np.ndarray) -> Path:
        """Encode [F, H, W, 3] uint8 frames and finish the file."""
        self.send(frames)
        return self.close()

    def send(self, frames: np.ndarray) -> None:
        """Encode [F, H, W, 3] (or one [H, W, 3]) uint8 frames; more may follow."""
        self._sink.send(np.ascontiguousarray(frames).tobytes())

    def close(self) -> Path:
        """Finish the file."""
        self._sink.close()
        return self.path

    def abort(self) -> None:
        """No video after all (Stop, a failure): end ffmpeg and leave no file behind."""
        self._sink.close()
        self.path.unlink(missing_ok=True)



def join_mp4(parts: list[Path], out: Path) -> Path:
    """The mp4s one after the other in `out`, without re-encoding (ffmpeg's concat demuxer, `-c
    copy`): each part keeps the quality it was written at. The parts must share size, rate and
    encoder settings, as `Mp4Writer`'s do; the index goes up front again."""
    import subprocess

    import imageio_ffmpeg

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as named:  # not beside the served mp4
        named.write("".join(f"file '{Path(part).resolve().as_posix()}'\n" for part in parts))
    listing = Path(named.name)
    try:
        done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "concat", "-safe", "0",
                               "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(out)],
                              capture_output=True, text=True, timeout=60)
    finally:
        listing.unlink(missing_ok=True)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"joining the clips failed: {done.stderr.strip()[-300:]}")
    return out


def write_lossless(frames: np.ndarray, path: Path) -> Path:
    """[F, H, W, 3] uint8 frames kept exactly: H.264 in RGB at QP 0 (libx264rgb, lossless), which
    predicts each frame from the last. Measured (docs/BENCHMARKS.md): 9 frames of a pan over a photo
    at 608×416 are 17× smaller than raw; frames of pure noise 1.6× larger."""
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    sink = imageio_ffmpeg.write_frames(str(path), (width, height), fps=24, codec="libx264rgb", pix_fmt_in="rgb24",
                                       pix_fmt_out="rgb24", quality=None, macro_block_size=1, ffmpeg_log_level="error",
                                       output_params=["-qp", "0", "-preset", "ultrafast"])
    sink.send(None)
    sink.send(np.ascontiguousarray(frames).tobytes())
    sink.close()
    return Path(path)


def read_lossless(path: Path) -> np.ndarray:
    """The frames `write_lossless` kept, exactly: [F, H, W, 3] uint8."""
    import av

    with av.open(str(path), format="matroska", container_options={"protocol_whitelist": "file"}) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
