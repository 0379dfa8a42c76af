"""`python -m foresight bench`: the user's timeline, measured end to end through the pipeline's events.

Each run goes through ForesightPipeline exactly as the app drives it. Per preset it reports the
median and range over runs of: first token, first preview frame, mp4 ready, text tokens/s while
the video renders and alone, the time to write the mp4, the pipeline's own overhead (JPEG
previews and frames, mp4 writing) as a share of the run, and peak GPU memory.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from foresight.config import PRESETS

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"
METRICS = [  # key, label, unit
    ("ttft", "first token", "s"),
    ("first_frame", "first preview frame", "s"),
    ("video_ready", "mp4 ready", "s"),
    ("tok_s_with_video", "text while video renders", "tok/s"),
    ("tok_s_alone", "text alone", "tok/s"),
    ("mp4_write", "mp4 writing", "s"),
    ("overhead_share", "pipeline overhead / mp4 ready", "%"),
    ("peak_gib", "peak GPU memory", "GiB"),
]


def run_metrics(events: list[dict]) -> dict:
    """The timeline of one run, from its events."""
    end = events[-1]
    assert end["type"] == "thinking_complete", end
    times, start, ready = end["token_times"], end["video_start"], end["video_ready"]
    metrics = {"ttft": end["ttft"], "first_frame": end["first_frame"], "video_ready": ready,
               "mp4_write": end["overhead_s"]["mp4"], "tok_s_with_video": None, "overlap_tokens": 0}
    if ready:  # JPEG frames and the mp4 are encoded side by side: the longer of the two is on the clock
        metrics["overhead_share"] = 100 * max(end["overhead_s"].values()) / ready
    if start is not None and ready and times:
        window_end = min(ready, times[-1])
        inside = [t for t in times if start <= t <= window_end]
        metrics["overlap_tokens"] = len(inside)
        if len(inside) >= 2 and window_end - start > 0:
            metrics["tok_s_with_video"] = (len(inside) - 1) / (inside[-1] - inside[0])
    return metrics


def text_alone(pipe, image, preset: str) -> float:
    """Decode speed with no video: the same pipeline run (same worker thread), without the renderer."""
    times = list(pipe(image, preset=preset, seed=0, video=False))[-1]["token_times"]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def bench(pipe, presets: list[str], runs: int, mode: str | None = None, image=EXAMPLE) -> dict:
    cuda = torch.cuda.is_available()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for preset in presets:
            for _ in pipe(image, preset=preset, mode=mode, seed=0, out_dir=scratch):  # warm-up, not counted
                pass
            samples = []
            for seed in range(runs):
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                metrics = run_metrics(list(pipe(image, preset=preset, mode=mode, seed=seed, out_dir=scratch)))
                metrics["tok_s_alone"] = text_alone(pipe, image, preset)
                metrics["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                samples.append(metrics)
            results[preset] = summarize(samples)
    return results


def summarize(samples: list[dict]) -> dict:
    summary = {}
    for key, _, _ in METRICS:
        values = [s[key] for s in samples if s.get(key) is not None]
        summary[key] = ({"median": statistics.median(values), "min": min(values), "max": max(values),
                         "n": len(values)} if values else None)
    return summary


def format_table(results: dict) -> str:
    lines = ["| preset | metric | median | min – max |", "|---|---|---|---|"]
    for preset, summary in results.items():
        for key, label, unit in METRICS:
            stat = summary[key]
            if stat is None:
                lines.append(f"| {preset} | {label} | – | – |")
                continue
            fmt = "{:.0f}" if unit == "tok/s" else "{:.1f}" if unit == "%" else "{:.3f}"
            lines.append(f"| {preset} | {label} ({unit}) | {fmt.format(stat['median'])} | "
                         f"{fmt.format(stat['min'])} – {fmt.format(stat['max'])} |")
    return "\n".join(lines)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"


def bench_command(args) -> int:
    from foresight.config import make_settings
    from foresight.models import load_models
    from foresight.pipeline import ForesightPipeline

    settings = make_settings(args.profile)
    pipe = ForesightPipeline(load_models(settings, log=lambda m: None))
    presets = args.preset or (["fast", "default"] if settings.profile == "tiny" else list(PRESETS))
    started = time.strftime("%Y-%m-%d %H:%M")
    results = bench(pipe, presets, args.runs, args.mode)
    print(f"Foresight bench · {started} · profile {settings.profile} · {machine()} · {args.runs} runs per preset "
          f"· mode {args.mode or pipe.default_mode()}")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"date": started, "profile": settings.profile, "machine": machine(),
                                               "runs": args.runs, "results": results}, indent=2))
    return 0
