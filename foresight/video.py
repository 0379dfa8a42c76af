"""LTX-Video image-to-video with a preview per denoising step, the bridge's conditioning, and mp4 writing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image


class Stopped(Exception):
    """The user pressed Stop; raised from the step callback so no further step (or decode) runs."""


@torch.inference_mode()
def vision_tokens(models, image: Image.Image) -> torch.Tensor:
    """DINOv2 patch tokens [1, N, D] (CLS dropped)."""
    pixels = models.vision_processor(images=image, return_tensors="pt")["pixel_values"]
    pixels = pixels.to(models.vision.device, models.vision.dtype)
    return models.vision(pixel_values=pixels).last_hidden_state[:, 1:]


@torch.inference_mode()
def fused_conditioning(models, image: Image.Image, vlm_states: torch.Tensor):
    """DINOv2 patch tokens + VLM prefill states -> the bridge -> (prompt_embeds, prompt_attention_mask)."""
    patch_tokens = vision_tokens(models, image)
    bridge_dtype = next(models.bridge.parameters()).dtype
    return models.bridge.condition(patch_tokens.to(bridge_dtype), vlm_states.to(bridge_dtype))


class _Previewer:
    """Decodes the model's current estimate of the clean video's last latent frame after each step.

    The step callback only sees the new noisy latents; a forward hook on the transformer keeps
    its input x_t and velocity v, so the estimate x0 = x_t - sigma_t * v is one subtraction away.
    That gives a picture that sharpens step by step instead of noise that clears only at the end.
    """

    def __init__(self, pipe, latent_shape: tuple[int, int, int], decode_timestep: float):
        self.pipe, self.latent_shape, self.decode_timestep = pipe, latent_shape, decode_timestep
        self.x_t = self.velocity = None
        self._handle = pipe.transformer.register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, output):
        self.x_t = kwargs["hidden_states"][-1:]  # the conditional half under guidance
        self.velocity = (output[0] if isinstance(output, tuple) else output.sample)[-1:]

    def remove(self):
        self._handle.remove()

    @torch.inference_mode()
    def decode(self, timestep: torch.Tensor) -> np.ndarray:
        pipe = self.pipe
        sigma = float(timestep) / pipe.scheduler.config.num_train_timesteps
        x0 = self.x_t.float() - sigma * self.velocity.float()
        frames, height, width = self.latent_shape
        latents = pipe._unpack_latents(x0, frames, height, width, pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)[:, :, -1:]
        latents = pipe._denormalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                            pipe.vae.config.scaling_factor).to(pipe.vae.dtype)
        temb = None
        if pipe.vae.config.timestep_conditioning:
            temb = torch.tensor([self.decode_timestep], device=latents.device, dtype=latents.dtype)
        pixels = pipe.vae.decode(latents, temb, return_dict=False)[0][0, :, 0]  # [3, H, W] in [-1, 1]
        return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def render(models, image: Image.Image, width: int, height: int, num_frames: int, fps: int, seed: int,
           on_preview: Callable[[int, np.ndarray], None], stop: threading.Event,
           prompt: str | None = None, prompt_embeds=None, prompt_attention_mask=None) -> np.ndarray:
    """Run LTX image-to-video; `on_preview(step, rgb)` after every step. -> frames [F, H, W, 3] uint8."""
    pipe, sampling = models.video, models.settings.sampling
    compression_t, compression_s = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
    latent_shape = ((num_frames - 1) // compression_t + 1, height // compression_s, width // compression_s)
    previewer = _Previewer(pipe, latent_shape, sampling.decode_timestep)

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if stop.is_set():
            raise Stopped()
        on_preview(step, previewer.decode(timestep))
        return {}

    if prompt_embeds is not None:
        prompt_embeds = prompt_embeds.to(pipe.transformer.dtype)
        conditioning = dict(prompt_embeds=prompt_embeds, prompt_attention_mask=prompt_attention_mask)
        if sampling.guidance_scale > 1:  # no T5 to encode an empty negative prompt: use zeros
            conditioning.update(negative_prompt_embeds=torch.zeros_like(prompt_embeds),
                                negative_prompt_attention_mask=prompt_attention_mask)
    else:
        conditioning = dict(prompt=prompt)
    try:
        output = pipe(
            image=image, width=width, height=height, num_frames=num_frames, frame_rate=fps,
            num_inference_steps=sampling.num_inference_steps, guidance_scale=sampling.guidance_scale,
            decode_timestep=sampling.decode_timestep, decode_noise_scale=sampling.decode_noise_scale,
            max_sequence_length=sampling.max_sequence_length,
            generator=torch.Generator(device=pipe.device).manual_seed(seed),
            output_type="np", callback_on_step_end=on_step_end, **conditioning,
        )
    finally:
        previewer.remove()
    return (output.frames[0] * 255).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, fps: int, path: Path) -> Path:
    """H.264 in yuv420p with the index up front, so every browser plays it as soon as it arrives.

    x264's ultrafast preset: 2-3x faster than veryfast on these short clips, for a larger file.
    """
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=None, macro_block_size=16,
                            ffmpeg_params=["-preset", "ultrafast", "-crf", "20", "-movflags", "+faststart"],
                            pixelformat="yuv420p") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path
