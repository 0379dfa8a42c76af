"""What a visitor who means harm gets back, measured: the type every served file of a run comes back
with when the upload was a valid PNG named `x.html` carrying a script, and what a 36-byte playlist
named `loop.mp4` (ffmpeg's concat demuxer, opening itself) costs the clip reader.

    PYTHONPATH=. python scripts/hostile_costs.py

Runs the page in-process in the tiny profile on 127.0.0.1 (no weights are downloaded). The
playlist is read in a child process under a limit of 20,000 open files, as a server might have.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAYLIST_CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
from foresight.inputs import read_clip
peak = lambda: int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
before, started = peak(), time.perf_counter()
try:
    outcome = f"{len(list(read_clip(sys.argv[1], 24)))} frames"
except Exception as exc:
    outcome = f"refused: {exc}"
print(f"{time.perf_counter() - started:.3f} s, peak memory +{peak() - before:.0f} MB, {outcome}")
"""


def png_named(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (40, 160, 90)).save(path, format="PNG")
    chunk = b"tEXtComment\x00<html><script>document.title='owned'</script></html>"
    text = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    data = path.read_bytes()
    path.write_bytes(data[:33] + text + data[33:])
    return path


def served_types(scratch: Path) -> None:
    import httpx
    from gradio_client import Client, handle_file

    import app
    from foresight.pipeline import ForesightPipeline
    from foresight.profiles import load, make_settings

    from foresight.models import quiet_loaders

    quiet_loaders()
    demo = app.build_demo(app.make_page(ForesightPipeline(load(make_settings("tiny"), log=lambda m: None)), "fast"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}"
    try:
        Client(url, verbose=False).predict(handle_file(str(png_named(scratch / "x.html"))), "", "fast",
                                           api_name="/predict")
        kept_apart = getattr(app, "PRIVATE_DIR", None)  # what the visitor sent, kept where nothing is served
        private = sorted(p for p in kept_apart.rglob("*") if p.is_file()) if kept_apart else []
        for path in [*sorted(p for p in app.RUNS_DIR.rglob("*") if p.is_file()), *private]:
            response = httpx.get(f"{url}/gradio_api/file={path}")
            disposition = response.headers.get("content-disposition", "").split(";")[0]
            print(f"| `{path.name}` | {response.status_code} | {response.headers.get('content-type')} | {disposition} |")
    finally:
        demo.close()


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="foresight-hostile-"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(scratch / "gradio"))
    print("Served files of a run whose upload was a PNG named x.html:\n\n| file | status | type | disposition |\n|---|---|---|---|")
    served_types(scratch)
    loop = scratch / "loop.mp4"
    loop.write_text("ffconcat version 1.0\nfile loop.mp4\n")
    done = subprocess.run([sys.executable, "-c", PLAYLIST_CHILD, loop.name], cwd=scratch, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"\nA 36-byte ffconcat playlist named loop.mp4, read as a clip: {done.stdout.strip() or done.stderr[-300:]}")


if __name__ == "__main__":
    main()
