"""`python -m foresight eval-bridge`: is a bridge checkpoint any good?

Reports the held-out loss (and, for distill, the cosine similarity to the T5 targets) on the same
split training used, and draws a grid of previews: the input, `text` mode and `fused` mode with
this bridge, side by side, one row per held-out image, same seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageOps

from foresight.bridge import Bridge, BridgeError, load_bridge
from foresight.config import base_models
from foresight.data import FeatureSet, item_image, list_items, split
from foresight.events import decode_frame
from foresight.train import Trainer, TrainConfig

CELL = 192


def held_out_metrics(models, features: FeatureSet, bridge: Bridge, config: TrainConfig) -> dict:
    """The training split's held-out items, scored exactly as training validates."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(models, features, scratch, config, bridge_config=bridge.config)
        trainer.bridge.load_state_dict(bridge.state_dict())
        metrics = trainer.validate()
    return {"held_out_items": len(trainer.val_ids), **{f"val_{k}": v for k, v in metrics.items()}}


def final_frame(pipe, image, mode: str, seed: int, preset: str) -> Image.Image:
    """The video's last frame (a dark cell when no video came)."""
    with tempfile.TemporaryDirectory() as scratch:
        frames = [ev for ev in pipe(image, preset=preset, mode=mode, seed=seed, out_dir=scratch, frame_events=True)
                  if ev["type"] == "video_frame" and ev["kind"] == "frame"]
        return decode_frame(frames[-1]) if frames else Image.new("RGB", (CELL, CELL), (40, 40, 40))


def comparison_grid(models, bridge: Bridge, name: str, images: list[Image.Image], out: Path, seed: int = 0,
                    preset: str = "fast") -> Path:
    """Rows: input | text mode | fused mode (this bridge). The video's last frame, same seed for both."""
    from foresight.pipeline import ForesightPipeline

    device, dtype = models.settings.device, next(models.vision.parameters()).dtype
    fused = copy.deepcopy(bridge).to(device, dtype).eval()
    pipe = ForesightPipeline(dataclasses.replace(models, bridge=fused))
    header = 24
    grid = Image.new("RGB", (3 * CELL, header + len(images) * CELL), "white")
    draw = ImageDraw.Draw(grid)
    for col, title in enumerate(["input", "text mode", f"fused: {name}"]):
        draw.text((col * CELL + 6, 6), title, fill="black")
    for row, image in enumerate(images):
        cells = [image, final_frame(pipe, image, "text", seed, preset), final_frame(pipe, image, "fused", seed, preset)]
        for col, cell in enumerate(cells):
            grid.paste(ImageOps.fit(cell, (CELL, CELL)), (col * CELL, header + row * CELL))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def eval_command(models, args, log: Callable[[str], None]) -> int:
    """`python -m foresight eval-bridge`, on models the command line loaded."""
    bridge_dir = Path(args.weights)
    try:
        bridge = load_bridge(bridge_dir, expected_base_models=base_models(models.settings))
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = TrainConfig(objective=args.objective, preset=args.preset, val_fraction=args.val_fraction)
    features = FeatureSet.build(models, args.data, args.objective, preset=args.preset,
                                num_tokens=bridge.config.num_tokens, captions_file=args.captions, log=log)
    report = held_out_metrics(models, features, bridge, config)
    _, val_ids = split(features.names, args.val_fraction)
    items = {item.path.name: item for item in list_items(args.data, args.objective, args.captions)}
    images = [item_image(items[features.names[i]]) for i in val_ids[:args.grid_images]]
    if images and models.video_pipeline.text_encoder is not None:
        report["grid"] = str(comparison_grid(models, bridge, bridge_dir.name, images, Path(args.grid),
                                             preset=args.preset))
    print(json.dumps(report, indent=2))
    return 0
