"""A run as ZeroGPU makes it, timed as the page sees it: through `spaces.GPU`'s own wrapper (a worker
forked on the first call and reused, arguments and events pickled across; `tests/zero_gpu.py`),
against the same runs made in-process.

    PYTHONPATH=.:tests python scripts/zero_gpu_like.py --runs 3

Tiny profile, `fast` preset, on this machine's CPU: the numbers show what crossing the process
boundary adds, not a GPU's times. A Space's real lease also waits for a GPU and moves the weights
into the worker; neither happens here.
"""

from __future__ import annotations

import argparse
import time

EXAMPLE = "examples/cat.jpg"


class Visitor:
    session_hash = "timing"


def timed_run(page) -> dict:
    """(first text, first preview, mp4) in seconds since the page's handler was called."""
    from foresight.runtime import StopFlag

    started, seen = time.perf_counter(), {}
    for text, preview, video, _, _, record in page.generate(EXAMPLE, "", "fast", "auto", 0, True,
                                                            {"stop": StopFlag()}, Visitor()):
        for key, value in (("text", text), ("preview", preview), ("mp4", video)):
            if value and key not in seen:
                seen[key] = time.perf_counter() - started
    assert record.get("video"), record.get("error") or record.get("video_error")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import app
    from foresight.models import quiet_loaders
    from foresight.pipeline import ForesightPipeline
    from foresight.profiles import load, make_settings
    from zero_gpu import zero_gpu_like

    quiet_loaders()
    pipe = ForesightPipeline(load(make_settings("tiny"), log=lambda m: None))
    rows = [("in-process", i + 1, timed_run(app.make_page(pipe, "fast"))) for i in range(args.runs)]
    with zero_gpu_like():
        page = app.make_page(pipe, "fast")  # its run goes through spaces.GPU
        rows += [("ZeroGPU-like", i + 1, timed_run(page)) for i in range(args.runs)]
    print("| how | run | first text (s) | first preview (s) | mp4 (s) |\n|---|---|---|---|---|")
    for how, run, seen in rows:
        print(f"| {how} | {run}{' (fork)' if how != 'in-process' and run == 1 else ''} | {seen['text']:.3f} | "
              f"{seen['preview']:.3f} | {seen['mp4']:.3f} |")


if __name__ == "__main__":
    main()
