"""How often LTX-2B's denoising reads a tensor back to the host, and how many aten operations a step
launches, by part: the transformer's forward, the rest of the pipeline's step (scheduler, masks,
our callback), a preview decode, the final VAE decode.

LTX-Video 2B's real structure (28 transformer blocks, 32 heads, 128 latent channels; the 0.9.5 VAE's
layout) at a narrow width with random weights, on the CPU, at the default preset's size and length
(512x512x49 at 24 fps: 1,792 latent tokens; the counts in docs/BENCHMARKS.md were taken at its
earlier 512x512x33, and what a step dispatches does not depend on the clip's length). The operations a step dispatches are the same on any device; on a GPU each
host read is a sync, and each host copy (a tensor made from Python data) a blocking copy.

    PYTHONPATH=. python scripts/ltx_syncs.py
"""

from __future__ import annotations

import argparse
import dataclasses
import threading

import torch
from PIL import Image

from foresight import video as video_stage
from foresight.syncs import OpCounter, count_denoising
from foresight.config import PRESETS
from foresight.inputs import video_view
from foresight.models import prepare_video_pipeline
from foresight.profiles import load, make_settings
from foresight.profiles.random_full import LTX_095_VAE

NARROW_VAE = dict(LTX_095_VAE, block_out_channels=(8, 16, 32, 64, 128), decoder_block_out_channels=(16, 32, 64))


def narrow_ltx_2b(models):
    """The tiny profile's models with LTX-2B's structure at a narrow width in place of the tiny LTX."""
    from diffusers import AutoencoderKLLTXVideo, LTXConditionPipeline, LTXVideoTransformer3DModel

    tiny = models.video_pipeline
    caption = tiny.text_encoder.config.d_model
    transformer = LTXVideoTransformer3DModel(num_attention_heads=32, attention_head_dim=2, cross_attention_dim=64,
                                             caption_channels=caption).eval()  # 28 blocks, 128 channels
    pipeline = LTXConditionPipeline(scheduler=tiny.scheduler, vae=AutoencoderKLLTXVideo(**NARROW_VAE).eval(),
                                    text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=transformer)
    return dataclasses.replace(models, video_pipeline=prepare_video_pipeline(pipeline))


def count(models) -> OpCounter:
    condition = video_view(Image.new("RGB", (512, 512), (120, 30, 200)), PRESETS["default"])
    embeds, mask = video_stage.text_conditioning(models, "a square slides to the right")
    return count_denoising(models.video_pipeline, lambda: video_stage.render(
        models, [condition], PRESETS["default"].num_frames, PRESETS["default"].fps, 0, embeds, mask,
        threading.Event()))


def time_parts(models, repeats: int = 9) -> dict[str, float]:
    """Median seconds of one transformer forward and one preview decode of a 64x64x9 clip (the same
    operations as at any size, with next to no arithmetic: what is left is the host's cost of
    launching them one by one), eager and through the static buffers (`video.VideoGraphs`, which on
    a CPU run eagerly: what the buffers add)."""
    import statistics
    import time

    pipeline = models.video_pipeline
    shape = video_stage.latent_shape(pipeline, 9, 64, 64)
    tokens = shape[0] * shape[1] * shape[2]
    embeds, mask = video_stage.text_conditioning(models, "a square slides to the right")
    inputs = dict(hidden_states=torch.randn(1, tokens, 128), encoder_hidden_states=embeds,
                  timestep=torch.full((1, tokens), 909.4), encoder_attention_mask=mask,
                  video_coords=video_stage.transformer_coords(pipeline, 1, shape, 16))
    x0 = torch.randn(1, tokens, 128)
    graphs = video_stage.VideoGraphs(pipeline, cuda=False)
    parts = {"transformer forward": lambda: pipeline.transformer(**inputs, return_dict=False),
             "transformer forward, static buffers": lambda: graphs.transformer(**inputs),
             "preview decode": lambda: video_stage.decode_estimate(pipeline, x0, shape, 0.05, False),
             "preview decode, static buffers": lambda: graphs.decode_preview(x0, shape, 0.05, False)}
    seconds = {}
    with torch.inference_mode():
        for name, run in parts.items():
            run()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            seconds[name] = statistics.median(times)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    settings = make_settings("tiny", preview_every=1)
    models = narrow_ltx_2b(load(settings, log=lambda message: None))
    steps = models.settings.sampling.num_steps
    count(models)  # warm
    counter = count(models)
    preset = PRESETS["default"]
    print(f"LTX-2B structure at narrow width, {preset.width}x{preset.height}x{preset.num_frames}, {steps} steps, "
          "a preview every step")
    print(f"{'part':<28}{'aten ops':>10}{'host reads':>12}{'host copies':>13}")
    for part, calls in (("before", 1), ("transformer forward", steps), ("step", steps), ("preview decode", steps),
                        ("final decode", 1)):
        print(f"{part + (' (each)' if calls > 1 else ''):<28}{counter.ops[part] / calls:>10.0f}"
              f"{counter.reads[part] / calls:>12.1f}{counter.copies[part] / calls:>13.1f}")
    for where, n in counter.where.most_common(12):
        print(f"  {n:4d}  {where}")
    print("\nCPU time of a 64x64x9 clip, median of 9 (the host's launch cost; not a GPU time)")
    for name, seconds in time_parts(models).items():
        print(f"  {name:<38}{1000 * seconds:8.1f} ms")


if __name__ == "__main__":
    main()
