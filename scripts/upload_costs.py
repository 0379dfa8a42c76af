"""What one untrusted upload costs the server to load (`foresight.inputs.load_image`, as the page and
every run call it): peak memory added and CPU time, each file in a fresh process.

    PYTHONPATH=. python scripts/upload_costs.py [--huge]

The files are written into a temporary folder: PNGs small on disk and huge decoded (`tests/uploads.py`),
a real 200-megapixel JPEG, phone-sized photos. `--huge` adds the 27000x27000 RGBA PNG (2.9 GB
decoded; it takes a minute to write and, on code that decodes it, about as long to load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from uploads import claimed_jpeg, flat_png  # noqa: E402

MEASURE = """
import json, resource, sys
from foresight.inputs import InputError, load_image

def status(field):  # this process's own memory (ru_maxrss would count the parent's from before the exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

baseline_kb, before = status("VmRSS"), resource.getrusage(resource.RUSAGE_SELF)
try:
    image = load_image(sys.argv[1]); outcome = f"loaded {image.width}x{image.height}"
except InputError as exc:
    outcome = f"refused: {exc}"
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"outcome": outcome, "peak_mb": (status("VmHWM") - baseline_kb) / 1024,
                  "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}))
"""


def files(folder: Path, huge: bool) -> dict[str, Path]:
    out = {}
    for name, (width, height, mode) in {"png-16000x16000-L": (16000, 16000, "L"),
                                         "png-9000x9000-RGBA": (9000, 9000, "RGBA"),
                                         "png-7000x7000-RGBA": (7000, 7000, "RGBA"),
                                         "png-7000x7000-16-bit-grey": (7000, 7000, "I;16"),
                                         **({"png-27000x27000-RGBA": (27000, 27000, "RGBA")} if huge else {})}.items():
        flat_png(folder / f"{name}.png", width, height, mode)
        out[name] = folder / f"{name}.png"
    rng = np.random.default_rng(0)
    for name, (width, height) in {"jpeg-16320x12240-photo": (16320, 12240), "jpeg-4000x3000-photo": (4000, 3000)}.items():
        noise = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((width, height), Image.Resampling.BILINEAR).save(folder / f"{name}.jpg",
                                                                                      quality=90)
        out[name] = folder / f"{name}.jpg"
    Image.new("P", (7000, 7000), 3).save(folder / "gif-7000x7000.gif")
    Image.new("P", (7000, 7000), 3).save(folder / "gif-7000x7000-transparent.gif", transparency=3)
    out["gif-7000x7000"] = folder / "gif-7000x7000.gif"
    out["gif-7000x7000-transparent"] = folder / "gif-7000x7000-transparent.gif"
    (folder / "jpeg-claims-40000x40000.jpg").write_bytes(claimed_jpeg(40000, 40000))
    out["jpeg-claims-40000x40000"] = folder / "jpeg-claims-40000x40000.jpg"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--huge", action="store_true", help="also the 27000x27000 RGBA PNG")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print("| file | on disk | outcome | peak memory added | CPU |")
        print("|---|---|---|---|---|")
        for name, path in files(Path(scratch), args.huge).items():
            result = json.loads(subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                                               text=True, check=True).stdout)
            print(f"| {name} | {path.stat().st_size / 1e6:.1f} MB | {result['outcome'][:70]} | "
                  f"{result['peak_mb']:.0f} MB | {result['cpu_s']:.2f} s |")


if __name__ == "__main__":
    main()
