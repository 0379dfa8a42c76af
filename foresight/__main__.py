"""Command line: `python -m foresight predict|check|bench|train|eval-bridge ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from foresight.config import DECODES, PRESETS, SCHEDULES
from foresight.profiles import PROFILES
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


def add_model_options(parser: argparse.ArgumentParser, profiles=PROFILES, default: str | None = None) -> None:
    parser.add_argument("--profile", choices=list(profiles), default=default,
                        help="where the models come from (default: full on a CUDA GPU, tiny elsewhere)")
    parser.add_argument("--weights", default=None, metavar="DIR",
                        help="a bridge checkpoint folder for fused mode (also FORESIGHT_WEIGHTS); refused if it was "
                             "trained against other base models")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foresight", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="think about one image and render what happens next")
    predict.add_argument("image", nargs="?", default=None, help="the image (not with --continue)")
    predict.add_argument("--continue", dest="story", default=None, metavar="RUN_DIR_OR_MP4",
                         help="and then? continue a story: an mp4 this command made (its record beside it), a folder "
                              "holding one, or any mp4 (then its last frames, and no earlier text)")
    predict.add_argument("--prompt", default="", help="an optional question about the image")
    predict.add_argument("--preset", choices=list(PRESETS), default=None,
                         help="default: default, or the story's when continuing one")
    predict.add_argument("--mode", choices=["fused", "text"], default=None,
                         help="conditioning mode (default: fused when bridge weights are present, else text)")
    predict.add_argument("--seed", type=int, default=None)
    predict.add_argument("--sharper", action="store_true",
                         help="LTX's authors' second pass: the clip at two thirds of the size, its latents upscaled, "
                              "three more steps at twice that (sharper, slower)")
    add_model_options(predict)
    predict.add_argument("--models-dir", default=None, help="local folders named like the hub ids")
    predict.add_argument("--out", default="outputs", help="folder for the mp4")
    predict.add_argument("--events", default=None, help="write every event as JSON lines (frame data omitted)")
    predict.add_argument("--trace", default=None, metavar="DIR",
                         help="write the run's timeline (timeline.png) and its spans (timeline.json) here")

    check = commands.add_parser("check", help="after installing: load the models, run one example, check the "
                                              "outputs and report pass/fail with numbers")
    add_model_options(check)
    check.add_argument("--image", default=None, help="the image to run (default: a shipped example)")
    check.add_argument("--json", default=None, help="also write the report here as JSON")

    bench = commands.add_parser("bench", help="time the user's timeline end to end")
    add_model_options(bench, profiles=("tiny", "random-full"), default="tiny")
    bench.add_argument("--preset", choices=list(PRESETS), action="append", default=None)
    bench.add_argument("--mode", type=comma_list(("fused", "text")), default=None,
                       help="one or both of fused,text (default: the models' default mode)")
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--decode", type=comma_list(DECODES), default=None,
                       help=f"one or more of {','.join(DECODES)} (default: the profile's, static on CUDA)")
    bench.add_argument("--schedule", type=comma_list(SCHEDULES), default=None,
                       help=f"one or more of {','.join(SCHEDULES)} (default: the profile's)")
    bench.add_argument("--pace", default=None, help="text pace(s) while the video renders, tokens/s, comma-separated "
                                                   "(0: not paced; default: the settings')")
    bench.add_argument("--previews", default=None,
                       help="preview cadence(s), comma-separated: every N steps, 0 for none (default: the settings')")
    bench.add_argument("--compile-video", type=comma_list(("off", "on")), default=None,
                       help="off, on or off,on: torch.compile LTX's transformer blocks (compiled variants run last)")
    bench.add_argument("--variant", action="append", default=None, metavar="D:S:P:N[:early][:compiled|:graphs]",
                       help="instead of every combination of the above: one variant, decode:schedule:pace:previews "
                            "(e.g. static:streams:45:2), optionally with DINOv2 beside the prefill (:early) and "
                            "the compiled video path (:compiled) or the video's CUDA graphs (:graphs); repeatable")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="tokens per run (default: the profile's)")
    bench.add_argument("--trace", default=None, metavar="DIR",
                       help="write one run's timeline per preset, mode and variant (PNG and JSON spans) here")
    bench.add_argument("--profile-first-token", default=None, metavar="FILE",
                       help="after the variants, profile Qwen's processor and generate up to the first token "
                            "(cProfile and torch.profiler tables) and write them here")
    bench.add_argument("--app", default=None, metavar="URL",
                       help="time a running app (python app.py, a Space, a share link) as its client sees it, "
                            "instead of the pipeline in this process")
    bench.add_argument("--passes", default=None, metavar="1,2",
                       help="LTX's passes: 1 (default), 2 (the authors' second pass: a \"two passes\" row), or 1,2")
    bench.add_argument("--no-and-then", action="store_true",
                       help="first runs only: no \"and then\" row (the next segment of each row's story)")
    bench.add_argument("--json", default=None, help="write the results here as JSON")

    train = commands.add_parser("train", help="train the bridge on a folder of images or clips")
    train.add_argument("--data", required=True, help="a folder of images (distill) or mp4/webm clips (video)")
    train.add_argument("--objective", choices=["distill", "video"], default="distill")
    train.add_argument("--out", required=True, help="the checkpoint folder, e.g. weights/my-bridge")
    train.add_argument("--captions", default=None, help='JSON lines {"file": ..., "caption": ...} (optional)')
    train.add_argument("--profile", choices=list(PROFILES), default=None)
    train.add_argument("--resume", action="store_true", help="continue from OUT/training/state.pt")
    defaults = TrainConfig()
    for name in ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "val_fraction",
                 "val_every", "save_every", "seed"):
        value = getattr(defaults, name)
        train.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    train.add_argument("--preset", choices=list(PRESETS), default=defaults.preset,
                       help="video objective: clips are cropped to this preset's square and length")

    evaluate = commands.add_parser("eval-bridge", help="held-out loss and a text-vs-fused preview grid")
    evaluate.add_argument("--weights", required=True, help="a bridge checkpoint folder")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--objective", choices=["distill", "video"], default="distill")
    evaluate.add_argument("--captions", default=None)
    evaluate.add_argument("--profile", choices=list(PROFILES), default=None)
    evaluate.add_argument("--preset", choices=list(PRESETS), default=defaults.preset)
    evaluate.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    evaluate.add_argument("--grid", default="bridge-grid.png", help="where to write the comparison grid")
    evaluate.add_argument("--grid-images", type=int, default=4)

    args = parser.parse_args(argv)
    if args.command == "bench" and args.app:
        from foresight.bench import app_command

        return app_command(args)
    return run_command(args)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_command(args) -> int:
    """Load the models the command asks for, then run it."""
    from foresight.bridge import BridgeError
    from foresight.inputs import InputError, check_upload
    from foresight.models import quiet_loaders
    from foresight.profiles import load, make_settings

    if args.command == "predict":
        if (args.image is None) == (args.story is None):
            print("error: give an image, or --continue a story, not both", file=sys.stderr)
            return 2
        try:  # refuse a bad image, from its header, before loading any model
            if args.image is not None:
                check_upload(args.image)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    quiet_loaders()
    overrides = {}
    if getattr(args, "models_dir", None):
        overrides["models_dir"] = Path(args.models_dir)
    if args.command != "eval-bridge" and getattr(args, "weights", None):
        overrides["weights"] = Path(args.weights)
    if args.command in ("predict", "check"):
        overrides["decode"] = "dynamic"  # one run: compiling the static decode would cost more than it saves
    if args.command == "bench":
        overrides.update({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})
    try:
        settings = make_settings(args.profile, **overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.profile == "tiny":
        log("[foresight] tiny profile: random-weight stand-ins, the outputs are noise. "
            "On a CUDA machine run with --profile full for the real models.")
    quiet = args.command in ("bench", "eval-bridge")
    try:
        models = load(settings, log=(lambda m: None) if quiet else log,
                      load_text_encoder=(args.objective == "distill") if args.command == "train" else None,
                      load_vision=True if args.command in ("train", "eval-bridge") else None)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "predict":
        return predict_command(models, args)
    if args.command == "check":
        from foresight.check import check_command

        return check_command(models, args, log)
    if args.command == "train":
        from foresight.train import train_command

        return train_command(models, args, log)
    if args.command == "eval-bridge":
        from foresight.evaluate import eval_command

        return eval_command(models, args, log)
    from foresight.bench import bench_command

    return bench_command(models, args, log)


def predict_command(models, args) -> int:
    from foresight.pipeline import ForesightPipeline
    from foresight.story import locate
    from foresight.trace import write_trace

    pipe = ForesightPipeline(models)
    story, clip = locate(args.story) if args.story else (None, None)
    events_log = open(args.events, "w") if args.events else None
    status = 0
    try:
        for ev in pipe(args.image, prompt=args.prompt, preset=args.preset, mode=args.mode, seed=args.seed,
                       out_dir=args.out, story=story, clip=clip, passes=2 if args.sharper else 1):
            if events_log:
                events_log.write(json.dumps(ev) + "\n")
                events_log.flush()
            if ev["type"] == "thinking_start":
                passes = ev["passes"]
                for note in ev["input_notes"]:
                    log(f"[foresight] {note}")
                if ev["segment"] > 1:
                    log(f"[foresight] segment {ev['segment']} of at most {ev['max_segments']}, from the story's last "
                        f"{ev['condition_frames']} frames; seed {ev['seed']}")
            elif ev["type"] == "text_chunk":
                print(ev["content"], end="", flush=True)
            elif ev["type"] == "error":
                print(f"\nerror ({ev['stage']}): {ev['message']}", file=sys.stderr)
                status = 1
            elif ev["type"] == "thinking_complete":
                print()
                if ev["video_url"]:
                    log(f"video: {Path(ev['video_url'])} (and then? `python -m foresight predict --continue "
                        f"{Path(ev['video_url'])}`)")
                log(f"mode {ev['mode']}, seed {ev['seed']}{', two passes' if passes == 2 else ''}; first token "
                    f"{_secs(ev['ttft'])}, "
                    f"first preview {_secs(ev['first_frame'])}, video ready {_secs(ev['video_ready'])}")
                if args.trace:
                    title = f"{Path(args.image or args.story).name} · {ev['preset']} · {ev['mode']} · {models.settings.profile}"
                    _, png = write_trace(args.trace, "timeline", ev, title)
                    log(f"timeline: {png}")
    finally:
        if events_log:
            events_log.close()
    return status


def _secs(value) -> str:
    return "-" if value is None else f"{value:.2f}s"


if __name__ == "__main__":
    sys.exit(main())
