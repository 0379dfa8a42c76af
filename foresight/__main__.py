"""Command line: `python -m foresight predict|bench|train|eval-bridge ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from foresight.config import DECODES, PRESETS, SCHEDULES
from foresight.train import TrainConfig


def comma_list(allowed: tuple[str, ...]):
    """An argparse type: 'a,b' -> ['a', 'b'], each one of `allowed`."""
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: use one or more of {', '.join(allowed)}, comma-separated")
        return items
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foresight", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="think about one image and render what happens next")
    predict.add_argument("image")
    predict.add_argument("--prompt", default="", help="an optional question about the image")
    predict.add_argument("--preset", choices=list(PRESETS), default="default")
    predict.add_argument("--mode", choices=["fused", "text"], default=None,
                         help="conditioning mode (default: fused when bridge weights are present, else text)")
    predict.add_argument("--seed", type=int, default=None)
    predict.add_argument("--profile", choices=["tiny", "full", "random-full"], default=None,
                         help="default: full on a CUDA GPU, tiny elsewhere")
    predict.add_argument("--models-dir", default=None, help="local folders named like the hub ids")
    predict.add_argument("--out", default="outputs", help="folder for the mp4")
    predict.add_argument("--events", default=None, help="write every event as JSON lines (frame data omitted)")

    bench = commands.add_parser("bench", help="time the user's timeline end to end")
    bench.add_argument("--profile", choices=["tiny", "random-full"], default="tiny")
    bench.add_argument("--preset", choices=list(PRESETS), action="append", default=None)
    bench.add_argument("--mode", choices=["fused", "text"], default=None)
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--decode", type=comma_list(DECODES), default=None,
                       help=f"one or more of {','.join(DECODES)} (default: the profile's, static on CUDA)")
    bench.add_argument("--schedule", type=comma_list(SCHEDULES), default=None,
                       help=f"one or more of {','.join(SCHEDULES)} (default: the profile's)")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="tokens per run (default: the profile's)")
    bench.add_argument("--app", default=None, metavar="URL",
                       help="time a running app (python app.py, a Space, a share link) as its client sees it, "
                            "instead of the pipeline in this process")
    bench.add_argument("--json", default=None, help="write the results here as JSON")

    train = commands.add_parser("train", help="train the bridge on a folder of images or clips")
    train.add_argument("--data", required=True, help="a folder of images (distill) or mp4/webm clips (video)")
    train.add_argument("--objective", choices=["distill", "video"], default="distill")
    train.add_argument("--out", required=True, help="the checkpoint folder, e.g. weights/my-bridge")
    train.add_argument("--captions", default=None, help='JSON lines {"file": ..., "caption": ...} (optional)')
    train.add_argument("--profile", choices=["tiny", "full", "random-full"], default=None)
    train.add_argument("--resume", action="store_true", help="continue from OUT/training/state.pt")
    defaults = TrainConfig()
    for name in ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "val_fraction",
                 "val_every", "save_every", "seed"):
        value = getattr(defaults, name)
        train.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    train.add_argument("--preset", choices=list(PRESETS), default=defaults.preset,
                       help="images are fitted to it as in the app; clips are cropped to its square and length")

    evaluate = commands.add_parser("eval-bridge", help="held-out loss and a text-vs-fused preview grid")
    evaluate.add_argument("--weights", required=True, help="a bridge checkpoint folder")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--objective", choices=["distill", "video"], default="distill")
    evaluate.add_argument("--captions", default=None)
    evaluate.add_argument("--profile", choices=["tiny", "full", "random-full"], default=None)
    evaluate.add_argument("--preset", choices=list(PRESETS), default=defaults.preset)
    evaluate.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    evaluate.add_argument("--grid", default="bridge-grid.png", help="where to write the comparison grid")
    evaluate.add_argument("--grid-images", type=int, default=4)

    args = parser.parse_args(argv)
    if args.command == "predict":
        return predict_command(args)
    if args.command == "train":
        from foresight.train import train_command

        return train_command(args)
    if args.command == "eval-bridge":
        from foresight.evaluate import eval_command

        return eval_command(args)
    from foresight.bench import bench_command

    return bench_command(args)


def predict_command(args) -> int:
    from foresight.events import for_log
    from foresight.inputs import InputError, load_image

    try:  # refuse a bad image before loading any model
        load_image(args.image)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from foresight.config import make_settings
    from foresight.models import load_models
    from foresight.pipeline import ForesightPipeline

    # One run: compiling the static-cache decode (~50 s on a GPU) would cost more than it saves.
    one_run = {} if os.environ.get("FORESIGHT_DECODE") else {"decode": "dynamic"}
    settings = make_settings(args.profile, models_dir=args.models_dir, **one_run)
    if settings.profile == "tiny":
        print("[foresight] tiny profile: random weights, the outputs are noise. "
              "On a CUDA machine run with --profile full for the real models.", file=sys.stderr)
    pipe = ForesightPipeline(load_models(settings, log=lambda m: print(m, file=sys.stderr)))
    log = open(args.events, "w") if args.events else None
    status = 0
    try:
        for ev in pipe(args.image, prompt=args.prompt, preset=args.preset, mode=args.mode, seed=args.seed,
                       out_dir=args.out):
            if log:
                log.write(json.dumps(for_log(ev)) + "\n")
                log.flush()
            if ev["type"] == "text_chunk":
                print(ev["content"], end="", flush=True)
            elif ev["type"] == "error":
                print(f"\nerror ({ev['stage']}): {ev['message']}", file=sys.stderr)
                status = 1
            elif ev["type"] == "thinking_complete":
                print()
                if ev["video_url"]:
                    print(f"video: {Path(ev['video_url'])}", file=sys.stderr)
                print(f"mode {ev['mode']}, seed {ev['seed']}; first token {_secs(ev['ttft'])}, "
                      f"first frame {_secs(ev['first_frame'])}, video ready {_secs(ev['video_ready'])}",
                      file=sys.stderr)
    finally:
        if log:
            log.close()
    return status


def _secs(value) -> str:
    return "-" if value is None else f"{value:.2f}s"


if __name__ == "__main__":
    sys.exit(main())
