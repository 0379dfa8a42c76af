"""`python -m foresight bench`: the user's timeline, measured end to end through the pipeline's events.

Each run goes through ForesightPipeline exactly as the app drives it. Per preset it reports the
median and range over runs of: first token, first preview frame, mp4 ready, text tokens/s while
the video renders and alone, the time to write the mp4, the pipeline's own overhead (JPEG
previews and frames, mp4 writing) as a share of the run, and peak GPU memory.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from foresight.config import PRESETS
from foresight.pipeline import ForesightPipeline

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
    """{preset: summary} for one pipeline (one decode and schedule); one uncounted run per preset first."""
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


def bench_variants(models, presets: list[str], runs: int, decodes: list[str], schedules: list[str],
                   mode: str | None = None, image=EXAMPLE, log=lambda message: None,
                   on_variant=lambda results: None) -> dict:
    """{"decode/schedule": {preset: summary}}: every combination on the same loaded models.

    Each combination gets its own pipeline (its own worker threads and streams) and its warm-up,
    which pays the static decode's compile; a decode that falls back is reported as what ran.
    `on_variant(results so far)` after each combination, so a run cut short keeps what it measured.
    """
    results = {}
    for schedule, decode in itertools.product(schedules, decodes):  # a schedule at a time: shared ones first
        pipe = ForesightPipeline(replace(models, settings=replace(models.settings, decode=decode, schedule=schedule)))
        start = time.perf_counter()
        pipe.warm_up(image, log=log)
        variant = f"{pipe.models.settings.decode}/{schedule}"
        log(f"[bench] {variant}: warmed up in {time.perf_counter() - start:.1f}s")
        results[variant] = bench(pipe, presets, runs, mode, image)
        on_variant(results)
    return results


def summarize(samples: list[dict], metrics=METRICS) -> dict:
    summary = {}
    for key, _, _ in metrics:
        values = [s[key] for s in samples if s.get(key) is not None]
        summary[key] = ({"median": statistics.median(values), "min": min(values), "max": max(values),
                         "n": len(values)} if values else None)
    return summary


def format_stat(stat: dict | None, unit: str) -> str:
    """A table cell: `median (min–max)`, or – when nothing was measured."""
    if stat is None:
        return "–"
    fmt = "{:.0f}" if unit == "tok/s" else "{:.1f}" if unit in ("%", "GiB") else "{:.3f}"
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def format_table(results: dict) -> str:
    """One row per preset and decode/schedule."""
    header = ["preset", "decode/schedule"] + [f"{label} ({unit})" for _, label, unit in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    presets = list(dict.fromkeys(preset for by_preset in results.values() for preset in by_preset))
    for preset in presets:
        for variant, by_preset in results.items():
            if preset not in by_preset:
                continue
            cells = [preset, variant] + [format_stat(by_preset[preset][key], unit) for key, _, unit in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


APP_METRICS = [  # key, label, unit: what a client of a running app sees, from its submit
    ("text", "first text", "s"),
    ("preview", "first preview", "s"),
    ("video", "video", "s"),
    ("done", "last update", "s"),
]


def app_timeline(url: str, presets: list[str], runs: int, image=EXAMPLE) -> dict:
    """{preset: summary} of the user's timeline through a running app's `/predict` stream.

    Adds what the pipeline's own events cannot see: the upload, the queue, Gradio's processing of
    each update (an ffprobe of the mp4, copies into its cache) and the transport. Files are not
    downloaded, as a page would fetch them beside the stream. One uncounted run per preset first.
    """
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)

    def one_run(preset: str) -> dict:
        start, seen = time.perf_counter(), {}
        for outputs in client.submit(handle_file(str(image)), "", preset, api_name="/predict"):
            for key, value in zip(("text", "preview", "video"), outputs, strict=True):
                is_update = isinstance(value, dict) and value.get("__type__") == "update"
                if value and not is_update:
                    seen.setdefault(key, time.perf_counter() - start)
        seen["done"] = time.perf_counter() - start
        return seen

    results = {}
    for preset in presets:
        one_run(preset)
        results[preset] = summarize([one_run(preset) for _ in range(runs)], APP_METRICS)
    return results


def format_app_table(results: dict) -> str:
    header = ["preset"] + [f"{label} ({unit})" for _, label, unit in APP_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for preset, summary in results.items():
        cells = [preset] + [format_stat(summary[key], unit) for key, _, unit in APP_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"


def bench_command(args) -> int:
    if args.app:
        presets = args.preset or ["fast", "default"]
        started = time.strftime("%Y-%m-%d %H:%M")
        results = app_timeline(args.app, presets, args.runs)
        print(f"Foresight app timeline · {started} · {args.app} · client on {machine()} · {args.runs} runs per "
              "preset · seconds from submit, median (min–max)")
        print(format_app_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps({"date": started, "app": args.app, "runs": args.runs,
                                                   "results": results}, indent=2))
        return 0
    from foresight.config import make_settings
    from foresight.models import load_models

    overrides = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    settings = make_settings(args.profile, **overrides)
    models = load_models(settings, log=lambda m: None)
    presets = args.preset or (["fast", "default"] if settings.profile == "tiny" else list(PRESETS))
    decodes, schedules = args.decode or [settings.decode], args.schedule or [settings.schedule]
    started = time.strftime("%Y-%m-%d %H:%M")
    mode = args.mode or models.modes[0]
    title = (f"Foresight bench · {started} · profile {settings.profile} · {machine()} · {args.runs} runs per preset "
             f"· mode {mode} · {settings.max_new_tokens} new tokens · median (min–max)")
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731 - stdout is the table

    def save(results: dict) -> None:
        log(format_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps({"date": started, "profile": settings.profile, "machine": machine(),
                                                   "runs": args.runs, "mode": mode, "results": results}, indent=2))

    results = bench_variants(models, presets, args.runs, decodes, schedules, args.mode, log=log, on_variant=save)
    print(title)
    print(format_table(results))
    return 0
