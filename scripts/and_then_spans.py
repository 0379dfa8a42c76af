"""Where a continuation ("And then?") spends its time against a first run: the spans of each, side
by side, per preset (median of N pairs; each pair a first run and the next segment of its story).

    PYTHONPATH=. python scripts/and_then_spans.py [--profile tiny] [--runs 5]

A span's length, and with '@' when it starts (seconds from the run's start). docs/BENCHMARKS.md
has the numbers and what they say.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from foresight.pipeline import ForesightPipeline
from foresight.profiles import load, make_settings

EXAMPLE = "examples/cat.jpg"
SPANS = ["load image", "load story", "condition image", "prefill", "DINOv2", "encode image", "step 0", "preview 0",
         "VAE decode", "mp4"]
MOMENTS = {"first text": "ttft", "first preview": "first_frame", "mp4 ready": "video_ready"}


def collect(pipe, preset: str, runs: int, scratch: str) -> dict[str, dict[str, list[float]]]:
    rows: dict[str, dict[str, list[float]]] = {"first run": {}, "and then": {}}
    for seed in range(runs):
        first = list(pipe(EXAMPLE, preset=preset, seed=seed, out_dir=f"{scratch}/{preset}{seed}"))[-1]
        going_on = list(pipe(story=first["video_url"], seed=seed, out_dir=f"{scratch}/{preset}{seed}-then"))[-1]
        for kind, end in (("first run", first), ("and then", going_on)):
            for span in end["spans"]:
                if span["name"] in SPANS:
                    rows[kind].setdefault(span["name"], []).append(span["end"] - span["start"])
                    rows[kind].setdefault(span["name"] + " @", []).append(span["start"])
            for label, key in MOMENTS.items():
                rows[kind].setdefault(label, []).append(end[key])
    return rows


def table(rows: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| span | first run | and then |", "|---|---|---|"]
    for key in [name for span in SPANS for name in (span, span + " @")] + list(MOMENTS):
        cells = [f"{statistics.median(rows[kind][key]):.3f}" if key in rows[kind] else "–" for kind in rows]
        lines.append(f"| {key} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    pipe = ForesightPipeline(load(make_settings(args.profile), log=lambda message: None))
    pipe.warm_up(EXAMPLE, log=lambda message: None)
    with tempfile.TemporaryDirectory() as scratch:
        for preset in args.preset or ["fast", "default"]:
            print(f"\n{preset}: median of {args.runs}, seconds (a span's length; '@': when it starts)")
            print(table(collect(pipe, preset, args.runs, scratch)))


if __name__ == "__main__":
    main()
