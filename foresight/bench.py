"""`python -m foresight bench`: the user's timeline, measured end to end through the pipeline's events.

Each run goes through ForesightPipeline exactly as the app drives it. Per preset and mode it
reports the median and range over runs of: first text, first preview, mp4 ready, text tokens/s
while the video renders and alone, the condition's VAE encode, the time to write the mp4, and
peak GPU memory; then the same for a continuation ("and then", a row of its own): the next
segment of a story the preset made, conditioned on its last frames and joined to its mp4. Variants
(decode, schedule, text pace, preview cadence) each get their own pipeline on the same loaded
models. `--trace DIR` writes one run's timeline per preset, mode and variant.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from foresight.config import PRESETS, check
from foresight.inputs import fit_size
from foresight.pipeline import ForesightPipeline
from foresight.trace import write_trace

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"
METRICS = [  # key, label, unit
    ("ttft", "first text", "s"),
    ("first_frame", "first preview", "s"),
    ("video_ready", "mp4 ready", "s"),
    ("tok_s_with_video", "text while video renders", "tok/s"),
    ("tok_s_alone", "text alone", "tok/s"),
    ("step_s", "a denoising step", "s"),
    ("step_s_alone", "a step, video alone", "s"),
    ("encode_s", "condition encode", "s"),
    ("mp4_write", "mp4 writing", "s"),
    ("peak_gib", "peak GPU memory", "GiB"),
]


def run_metrics(events: list[dict]) -> dict:
    """The timeline of one run, from its events."""
    end = events[-1]
    assert end["type"] == "thinking_complete", end
    times, start, ready = end["token_times"], end["video_start"], end["video_ready"]
    metrics = {"ttft": end["ttft"], "first_frame": end["first_frame"], "video_ready": ready,
               "mp4_write": end["overhead_s"]["mp4"] or None, "tok_s_with_video": None, "overlap_tokens": 0}
    if start is not None and ready and times:
        inside = [t for t in times if start <= t <= min(ready, times[-1])]
        metrics["overlap_tokens"] = len(inside)
        if len(inside) >= 2 and inside[-1] > inside[0]:
            metrics["tok_s_with_video"] = (len(inside) - 1) / (inside[-1] - inside[0])
    metrics["step_s"] = step_seconds(end)
    encode = [span["end"] - span["start"] for span in end["spans"] if span["name"] == "encode image"]
    metrics["encode_s"] = encode[0] if encode else None
    return metrics


def step_seconds(end: dict) -> float | None:
    """The median denoising step of a run (its trace's "step N" spans: on a GPU, CUDA-event times)."""
    steps = [span["end"] - span["start"] for span in end["spans"] if re.fullmatch(r"step \d+", span["name"])]
    return statistics.median(steps) if steps else None


def text_alone(pipe, image, preset: str) -> float:
    """Decode speed with no video: the same pipeline run (same worker thread), without the renderer."""
    times = list(pipe(image, preset=preset, seed=0, video=False))[-1]["token_times"]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def video_alone(pipe, image, preset: str, mode: str | None, out_dir) -> float | None:
    """A denoising step with no text beside it: the pipeline's video-only run (a retry's)."""
    return step_seconds(list(pipe(image, preset=preset, mode=mode, seed=0, out_dir=out_dir,
                                  reasoning="Next: the scene continues."))[-1])


def profile_first_token(models, image, path: Path) -> Path:
    """Where the time to the first token goes: Qwen's processor and `generate` up to its first
    token, run in this thread under cProfile (Python functions) and torch.profiler (ops and, on
    a GPU, kernels). Written as text tables."""
    import cProfile
    import io
    import pstats
    import threading

    from torch.profiler import ProfilerActivity, profile

    from foresight import vlm as vlm_stage
    from foresight.inputs import load_image

    def first_token():
        inputs = vlm_stage.build_inputs(models, load_image(image), "")
        vlm_stage.stream_reasoning(models, inputs, lambda text: None, threading.Event(), max_new_tokens=1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    first_token()  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    python = cProfile.Profile()
    started = time.perf_counter()
    with profile(activities=activities) as ops:
        python.enable()
        first_token()
        python.disable()
    seconds = time.perf_counter() - started
    stats = io.StringIO()
    pstats.Stats(python, stream=stats).sort_stats("cumulative").print_stats(45)
    averages = ops.key_averages()
    tables = [f"time to the first token, profiled: {seconds:.3f} s", stats.getvalue(),
              averages.table(sort_by="cpu_time_total", row_limit=40)]
    if torch.cuda.is_available():
        tables.append(averages.table(sort_by="cuda_time_total", row_limit=40))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(tables))
    return path


def bench(pipe, presets: list[str], runs: int, modes: list[str | None], image=EXAMPLE,
          trace_dir: str | Path | None = None, label: str = "", and_then: bool = True,
          passes: tuple[int, ...] = (1,)) -> dict:
    """{"preset/mode": summary} for one pipeline; one uncounted run per preset and mode first; with
    `and_then`, a "preset/mode · and then" row too: the next segment of the story the row made;
    `passes` (1, 2): a "preset/mode · two passes" row for LTX's authors' two passes."""
    results: dict[str, dict] = {}
    alone: dict[str, list[float]] = {}  # text alone does not depend on the mode: measured once per preset
    with tempfile.TemporaryDirectory() as scratch:
        for preset, mode, count in itertools.product(presets, modes, passes):
            def run(seed, preset=preset, mode=mode, count=count):
                return pipe(image, preset=preset, mode=mode, seed=seed, out_dir=scratch, passes=count)

            list(run(0))  # warm-up, not counted
            samples, events = [], []
            for seed in range(runs):
                events, metrics = measured(lambda: run(seed))
                samples.append(metrics)
            alone.setdefault(preset, [text_alone(pipe, image, preset) for _ in range(runs)])
            steps_alone = [video_alone(pipe, image, preset, mode, scratch) for _ in range(runs)]
            for sample, speed, step in zip(samples, alone[preset], steps_alone):
                sample.update(tok_s_alone=speed, step_s_alone=step)
            row = f"{events[-1]['preset']}/{events[-1]['mode']}" + (" · two passes" if count == 2 else "")
            results[row] = summarize(samples)
            if and_then and count == 1:
                results[f"{row} · and then"] = summarize(
                    continued(pipe, events[-1]["video_url"], preset, mode, runs, Path(scratch)))
            if trace_dir:
                name = re.sub(r"[^A-Za-z0-9.]+", "-", f"{row}-{label}").strip("-")
                write_trace(trace_dir, name, events[-1], f"{row} · {label} · {machine()}")
    return results


def pass_costs(presets: list[str], sampling, aspect: tuple[int, int] = (1, 1)) -> str:
    """What a step works on in one pass and in two, per preset (tokens: 32x spatial, 8x temporal
    compression, 1x1x1 patches), and two passes' cost in one pass's steps: by tokens alone, and with
    attention (n² per step) counted instead. Arithmetic, not a measurement: what a GPU makes of it
    is `scripts/device_bench.sh`'s to say."""
    from foresight import passes

    lines = ["| preset | one pass | two passes: first, second | steps | step-equivalents (tokens) | "
             "(attention, n²) |", "|---|---|---|---|---|---|"]
    for name in presets:
        preset = PRESETS[name]
        size = fit_size(*aspect, preset)
        one = passes.tokens(*size, preset.num_frames)
        first, second = (passes.tokens(*s, preset.num_frames) for s in passes.pass_sizes(*size,
                                                                                          sampling.downscale_factor))
        steps = sampling.pass_steps(2)
        by_tokens = (steps[0] * first + steps[1] * second) / (steps[0] * one)
        by_attention = (steps[0] * first ** 2 + steps[1] * second ** 2) / (steps[0] * one ** 2)
        lines.append(f"| {name} {size[0]}×{size[1]} | {one} × {steps[0]} | {first} × {steps[0]}, {second} × "
                     f"{steps[1]} | {sum(steps)} | {by_tokens:.2f} | {by_attention:.2f} |")
    return "\n".join(lines)


def measured(run) -> tuple[list[dict], dict]:
    """One run's events (`run()` yields them) and its metrics, peak GPU memory included."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    events = list(run())
    metrics = run_metrics(events)
    metrics["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return events, metrics


def continued(pipe, story: str, preset: str, mode: str | None, runs: int, scratch: Path) -> list[dict]:
    """The next segment of `story`, `runs` times (the first runs warmed up what it shares with them):
    its metrics."""
    return [measured(lambda: pipe(story=story, preset=preset, mode=mode, seed=seed,
                                  out_dir=scratch / f"then{seed}"))[1] for seed in range(runs)]


def variants(settings, decodes, schedules, paces, previews, compiles=(False,), earlies=(False,), graphs=(False,)) \
        -> list[tuple[str, object]]:
    """(label, settings) for every combination asked for: compiled ones last (compiling changes the
    loaded modules for good), shared schedules first (an untried `streams` crash loses nothing else)."""
    out = []
    for compiled, schedule, decode, pace, every, early, graphed in itertools.product(
            compiles, schedules, decodes, paces, previews, earlies, graphs):
        changed = check(replace(settings, decode=decode, schedule=schedule, text_pace=pace, preview_every=every,
                                vision_early=early, compile_video=compiled, video_graphs=graphed))
        label = (f"{decode} · {schedule} · pace {pace:g} · previews {every}" + (" · DINOv2 early" if early else "")
                 + (" · compiled" if compiled else "") + (" · video graphs" if graphed else ""))
        out.append((label, changed))
    return out


VARIANT_FLAGS = {"early", "compiled", "graphs"}  # vision_early, compile_video, video_graphs


def parse_variant(text: str, settings):
    """(label, settings) from `decode:schedule:pace:previews[:early][:compiled|:graphs]`, e.g.
    `static:streams:45:2` or `static:streams:45:2:graphs` (`video_graphs`)."""
    parts = text.split(":")
    flags = parts[4:]
    if len(parts) < 4 or not set(flags) <= VARIANT_FLAGS or len(set(flags)) < len(flags) \
            or {"compiled", "graphs"} <= set(flags):
        raise ValueError(f"variant {text!r}: use decode:schedule:pace:previews[:early][:compiled|:graphs], "
                         "e.g. static:streams:45:2")
    decode, schedule, pace, every = parts[0], parts[1], float(parts[2]), int(parts[3])
    return variants(settings, [decode], [schedule], [pace], [every], ["compiled" in flags], ["early" in flags],
                    ["graphs" in flags])[0]


def bench_variants(models, presets: list[str], runs: int, settings_list, modes: list[str | None],
                   image=EXAMPLE, log=lambda message: None, on_variant=lambda results: None,
                   trace_dir=None, and_then: bool = True, passes: tuple[int, ...] = (1,)) -> dict:
    """{label: {"preset/mode": summary}}: every variant on the same loaded models.

    Each variant gets its own pipeline (its own worker threads and streams) and its warm-up, which
    pays the static decode's compile; a decode that falls back is reported as what ran.
    `on_variant(results so far)` after each, so a run cut short keeps what it measured.
    """
    results = {}
    for label, settings in settings_list:
        pipe = ForesightPipeline(replace(models, settings=settings))
        start = time.perf_counter()
        pipe.warm_up(image, log=log)
        if pipe.models.settings.decode != settings.decode:
            label = label.replace(settings.decode, pipe.models.settings.decode, 1)
        log(f"[bench] {label}: warmed up in {time.perf_counter() - start:.1f}s")
        results[label] = bench(pipe, presets, runs, modes, image, trace_dir, label, and_then, passes)
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
    """One row per preset, mode and variant."""
    header = ["preset/mode", "variant"] + [f"{label} ({unit})" for _, label, unit in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(dict.fromkeys(row for by_row in results.values() for row in by_row))
    for row in rows:
        for variant, by_row in results.items():
            if row in by_row:
                cells = [row, variant] + [format_stat(by_row[row][key], unit) for key, _, unit in METRICS]
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
    each update and the transport. Files are not downloaded, as a page would fetch them beside
    the stream. One uncounted run per preset first.
    """
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)

    def one_run(preset: str) -> dict:
        start, seen = time.perf_counter(), {}
        for outputs in client.submit(handle_file(str(image)), "", preset, api_name="/predict"):
            for key, value in zip(("text", "preview", "video"), outputs, strict=True):
                if value and not _is_update(value):
                    seen.setdefault(key, time.perf_counter() - start)
        seen["done"] = time.perf_counter() - start
        return seen

    results = {}
    for preset in presets:
        one_run(preset)
        results[preset] = summarize([one_run(preset) for _ in range(runs)], APP_METRICS)
    return results


def _is_update(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


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


def app_command(args) -> int:
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


def _numbers(text: str | None, default, kind=float) -> list:
    return [kind(item) for item in text.split(",")] if text else [default]


def bench_command(models, args, log) -> int:
    settings = models.settings
    presets = args.preset or (["fast", "default"] if settings.profile == "tiny" else list(PRESETS))
    modes = args.mode or [None]
    if args.variant:
        settings_list = [parse_variant(text, settings) for text in args.variant]
    else:
        settings_list = variants(settings, args.decode or [settings.decode], args.schedule or [settings.schedule],
                                 _numbers(args.pace, settings.text_pace),
                                 _numbers(args.previews, settings.preview_every, int),
                                 [item == "on" for item in args.compile_video] if args.compile_video else [False],
                                 [settings.vision_early], [settings.video_graphs])
    started = time.strftime("%Y-%m-%d %H:%M")
    title = (f"Foresight bench · {started} · profile {settings.profile} · {machine()} · {args.runs} runs · "
             f"{settings.max_new_tokens} new tokens · median (min–max)")
    if settings.profile == "random-full" and "text" in modes:
        title += (f"\n(text mode: the random VLM writes no prediction line, so the video starts after "
                  f"{settings.prediction_max_tokens} tokens, about a real first line)")

    def save(results: dict) -> None:
        log(format_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps({"date": started, "profile": settings.profile, "machine": machine(),
                                                   "runs": args.runs, "title": title, "results": results}, indent=2))

    counts = tuple(int(count) for count in args.passes.split(",")) if args.passes else (1,)
    results = bench_variants(models, presets, args.runs, settings_list, modes, log=log, on_variant=save,
                             trace_dir=args.trace, and_then=not args.no_and_then, passes=counts)
    if args.profile_first_token:
        written = profile_first_token(replace(models, settings=replace(settings, decode="dynamic")), EXAMPLE,
                                      Path(args.profile_first_token))
        log(f"[bench] where the time to the first token goes: {written}")
    print(title)
    print(format_table(results))
    if 2 in counts:
        print("\nWhat a step works on, in one pass and in LTX's two (square clips; arithmetic, not timed):")
        print(pass_costs(presets, settings.sampling))
    return 0
