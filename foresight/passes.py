"""LTX in two passes, as its authors run the 2B 0.9.8 distilled checkpoint.

Their `LTXMultiScalePipeline` (ltx_video/pipelines/pipeline_ltx_video.py), with the settings of
their configs/ltxv-2b-0.9.8-distilled.yaml (`config.VideoSampling`):

1. the first pass at `downscale_factor` of the size asked for (each side rounded down to 32), its
   seven timesteps, its output left as latents;
2. the latents doubled in space by the latent upscaler: un-normalized, upscaled, normalized again
   (`_upsample_latents`), then AdaIN-filtered toward the first pass's latents (`adain_filter_latent`);
3. the second pass at twice the first pass's size, from those latents noised to its first timestep
   (their `prepare_latents`: t·noise + (1 - t)·latents), its three timesteps, the same conditions
   (the prepared media resized to the pass's size: `_resize_conditioning_item`);
4. the decoded frames resized to the size asked for (bilinear, `F.interpolate`).

`video.render` runs them through diffusers' LTXConditionPipeline; what happens between and around
the passes is here, as the authors do it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VAE_MULTIPLE = 32  # the authors round a pass's sides down to the VAE's spatial factor


def pass_sizes(width: int, height: int, factor: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the first pass's size, the second's) for a clip of `width` x `height`."""
    first = tuple(int(side * factor) - int(side * factor) % VAE_MULTIPLE for side in (width, height))
    return first, (2 * first[0], 2 * first[1])


def tokens(width: int, height: int, num_frames: int) -> int:
    """Latent tokens a step of LTX works on at this size (32x spatial, 8x temporal compression, 1x1x1 patches)."""
    return ((num_frames - 1) // 8 + 1) * (height // 32) * (width // 32)


def resized(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[F, C, H, W] floats at `size` (width, height): bilinear, without aligned corners, as the authors
    resize a pass's media and its frames (`LTXVideoPipeline.resize_tensor`)."""
    if tuple(frames.shape[-2:]) == (size[1], size[0]):
        return frames
    return F.interpolate(frames, size=(size[1], size[0]), mode="bilinear", align_corners=False)


def condition_at(condition: tuple, size: tuple[int, int]) -> tuple:
    """The prepared condition (PIL images at the clip's size) at a pass's size: resized as the
    authors resize the prepared media, a [-1, 1] tensor, then back to 8 bits for diffusers (which
    scales it to [-1, 1] again; the rounding is within half a level)."""
    if condition[0].size == tuple(size):
        return condition
    pixels = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in condition]).float()
    scaled = resized(pixels / 127.5 - 1, size)
    rgb = ((scaled + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return tuple(Image.fromarray(frame) for frame in rgb)


def adain(latents: torch.Tensor, reference: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """Each channel of `latents` given the mean and spread of `reference`'s (the authors'
    `adain_filter_latent`, per sample and channel, blended by `factor`)."""
    dims = tuple(range(2, latents.ndim))
    r_std, r_mean = torch.std_mean(reference, dim=dims, keepdim=True)
    i_std, i_mean = torch.std_mean(latents, dim=dims, keepdim=True)
    return torch.lerp(latents, (latents - i_mean) / i_std * r_std + r_mean, factor)


def upsample(pipeline, upscaler, latents: torch.Tensor) -> torch.Tensor:
    """The first pass's latents [B, C, F, H, W] doubled in space for the second: un-normalized with
    the VAE's per-channel statistics, upscaled, normalized again, then AdaIN-filtered toward them."""
    vae = pipeline.vae
    scale = vae.config.scaling_factor
    plain = pipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std, scale)
    upscaled = upscaler(plain.to(upscaler.dtype)).to(latents.dtype)
    return adain(pipeline._normalize_latents(upscaled, vae.latents_mean, vae.latents_std, scale), latents)
