"""LTX-Video image-to-video: conditioning (bridge or T5), denoising with previews, frames.

The video is rendered by diffusers' `LTXConditionPipeline`, the pipeline that takes the distilled
checkpoints' own timesteps (`VideoSampling`), with the condition at frame 0: the input image, or
("And then?") the story's last frames, which the clip then begins with.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Sequence

import torch
from PIL import Image

from foresight import passes as passes_stage
from foresight.graphs import StaticGraphs, graphed_forward
from foresight.media import h264_round_trip
from foresight.trace import Trace, null_trace


class Stopped(Exception):
    """Stop was pressed; raised from the step callback so no further step, and no decode, runs."""


@torch.inference_mode()
def vision_tokens(models, image: Image.Image) -> torch.Tensor:
    """DINOv2 patch tokens [1, N, D] (CLS dropped) of the loaded image; its processor resizes and crops."""
    pixels = models.vision_processor(images=image, return_tensors="pt")["pixel_values"]
    pixels = pixels.to(models.vision.device, models.vision.dtype)
    return models.vision(pixel_values=pixels).last_hidden_state[:, 1:]


@torch.inference_mode()
def fused_conditioning(models, patch_tokens: torch.Tensor,
                       vlm_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2 patch tokens (`vision_tokens`) + VLM prefill states -> the bridge -> (prompt_embeds,
    prompt_attention_mask)."""
    bridge_dtype = next(models.bridge.parameters()).dtype
    return models.bridge.condition(patch_tokens.to(bridge_dtype), vlm_states.to(bridge_dtype))


@torch.inference_mode()
def text_conditioning(models, prompt: str, max_sequence_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`text` mode: the prediction line through LTX's own T5 (the pipeline's `encode_prompt`)."""
    pipeline = models.video_pipeline
    embeds, mask, _, _ = pipeline.encode_prompt(
        prompt, do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length or models.settings.sampling.max_sequence_length,
        device=pipeline._execution_device)
    return embeds, mask


def negative_conditioning(models, embeds: torch.Tensor, mask: torch.Tensor) -> dict:
    """What guidance > 1 needs beside the conditioning: T5's encoding of an empty prompt when T5 is
    loaded (what the pipeline itself would use), else zeros (the bridge has no 'empty' input)."""
    pipeline = models.video_pipeline
    if pipeline.text_encoder is not None:
        negative, negative_mask, _, _ = pipeline.encode_prompt(
            "", do_classifier_free_guidance=False, max_sequence_length=embeds.shape[1],
            device=pipeline._execution_device)
    else:
        negative, negative_mask = torch.zeros_like(embeds), mask
    return dict(negative_prompt_embeds=negative.to(embeds.dtype), negative_prompt_attention_mask=negative_mask)


def compile_video(pipeline) -> None:
    """torch.compile the denoising: the LTX transformer's repeated block (diffusers' regional
    compilation: one block compiled once serves all of them), shapes dynamic, so no preset or
    aspect ratio compiles again. Compiling happens at the first call (the warm-up pays it).

    The VAE's decoder is left eager: compiled with dynamic shapes it still compiled again for some
    sizes (guards on conv3d sizes), which would stall a user's run at an unseen aspect ratio."""
    blocks = pipeline.transformer.transformer_blocks
    if all(getattr(block, "_compiled_call_impl", None) is None for block in blocks):
        pipeline.transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)


def prepare_condition(image: Image.Image, crf: int) -> Image.Image:
    """The condition image as LTX's authors hand it to the VAE (`ltx_video/inference.py`,
    `load_image_to_tensor_with_resize_and_crop`): blurred with a 3x3 Gaussian of sigma 1
    (torchvision's, as theirs), scaled to bytes by truncation as they do, then one H.264 frame at
    `crf` and back (`media.h264_round_trip`), "for getting more motion in image-to-video". `crf` 0:
    the image as it is. Sides are even (multiples of 32), so nothing is cropped."""
    if crf <= 0:
        return image
    from torchvision.transforms import functional as tvf

    blurred = tvf.gaussian_blur(tvf.to_tensor(image), kernel_size=3, sigma=1.0)
    rgb = (blurred.permute(1, 2, 0) * 255.0).byte().numpy()
    return Image.fromarray(h264_round_trip(rgb, crf))


class DenoisingEstimate:
    """The model's estimate of the clean video at each step, x0 = x_t - sigma * v, from a forward hook.

    The step callback only sees the latents after the step; the hook keeps the transformer's
    input x_t, its per-token timesteps (the condition frame's are 0, so its x0 is itself) and its
    velocity v (guided, when guidance runs: v_u + g * (v_c - v_u), as the pipeline steps with).
    """

    def __init__(self, pipeline, guidance_scale: float):
        self.guidance_scale = guidance_scale
        self.x0: torch.Tensor | None = None  # packed [1, tokens, channels], float32
        self._handle = pipeline.transformer.register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, output):
        x_t, timestep = kwargs["hidden_states"].float(), kwargs["timestep"].float()
        velocity = (output[0] if isinstance(output, tuple) else output.sample).float()
        if velocity.shape[0] == 2:  # guidance: (unconditional, conditional)
            unconditional, conditional = velocity.chunk(2)
            velocity = unconditional + self.guidance_scale * (conditional - unconditional)
            x_t, timestep = x_t[1:], timestep[1:]
        sigma = (timestep / 1000).reshape(timestep.shape[0], -1, 1)
        self.x0 = x_t - sigma * velocity

    def remove(self) -> None:
        self._handle.remove()


def transformer_coords(pipeline, batch: int, shape: tuple[int, int, int], fps: int) -> torch.Tensor:
    """The positions LTXConditionPipeline gives the transformer for a clip conditioned at frame 0
    (its own helpers, pinned by a test), so training sees exactly what sampling sees."""
    frames, height, width = shape
    ids = pipeline._prepare_video_ids(batch, frames, height, width, patch_size=pipeline.transformer_spatial_patch_size,
                                      patch_size_t=pipeline.transformer_temporal_patch_size,
                                      device=pipeline.transformer.device)
    coords = pipeline._scale_video_ids(ids, scale_factor=pipeline.vae_spatial_compression_ratio,
                                       scale_factor_t=pipeline.vae_temporal_compression_ratio, frame_index=0).float()
    coords[:, 0] = coords[:, 0] * (1.0 / fps)  # as the pipeline does it, bit for bit (1/24 is not exact)
    return coords


def latent_shape(pipeline, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    return ((num_frames - 1) // pipeline.vae_temporal_compression_ratio + 1,
            height // pipeline.vae_spatial_compression_ratio, width // pipeline.vae_spatial_compression_ratio)


@torch.inference_mode()
def decode_estimate(pipeline, x0: torch.Tensor, shape: tuple[int, int, int], decode_timestep: float,
                    whole: bool) -> torch.Tensor:
    """A preview of the estimate's last frame, [H, W, 3] uint8 on the model's device.

    The causal VAE reads its first latent frame as one picture and each later one as eight, so a
    later latent frame decoded alone is out of what it was trained on. `whole`: decode the whole
    estimate (exact, the cost of the final decode); else the first and last latent frames together,
    a 9-frame clip whose last frame stands for the video's last (about 2/L of the cost).
    """
    frames, height, width = shape
    latents = pipeline._unpack_latents(x0, frames, height, width, pipeline.transformer_spatial_patch_size,
                                       pipeline.transformer_temporal_patch_size)
    if not whole and frames > 2:  # slices, not a list index: nothing is copied from the host
        latents = torch.cat([latents[:, :, :1], latents[:, :, -1:]], dim=2)
    vae = pipeline.vae
    latents = pipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std,
                                            vae.config.scaling_factor).to(vae.dtype)
    timestep = None
    if vae.config.timestep_conditioning:  # filled on the device (a tensor literal would be a host copy)
        timestep = torch.full((1,), decode_timestep, device=latents.device, dtype=latents.dtype)
    pixels = vae.decode(latents, timestep, return_dict=False)[0][0, :, -1]  # [3, H, W] in [-1, 1]
    return to_uint8((pixels.float() + 1) / 2).permute(1, 2, 0)


def preview_steps(num_steps: int, every: int) -> list[int]:
    """The steps a preview follows: every `every`-th (none when 0), and the last."""
    return [step for step in range(num_steps) if every and (step % every == 0 or step == num_steps - 1)]


def to_uint8(unit: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8, on whatever device they are."""
    return (unit.clamp(0, 1) * 255).round().to(torch.uint8)


# 7 aspect ratios x 3 presets x 3 sizes (one pass, and each of two) x 2 prompt lengths (bridge, T5), and a few more
MAX_TRANSFORMER_SHAPES = 144
MAX_PREVIEW_SHAPES = 72


class VideoGraphs:
    """The renderer's static graphs (`foresight/graphs.py`): LTX's transformer forward and the
    preview decode on static buffers, one set (on CUDA, one captured graph) per shape, sharing one
    memory pool. Made once per pipeline; used by its renderer thread only."""

    def __init__(self, pipeline, cuda: bool):
        pool = torch.cuda.graph_pool_handle() if cuda else None
        transformer, forward = pipeline.transformer, type(pipeline.transformer).forward
        self.transformer = StaticGraphs(lambda **inputs: forward(transformer, **inputs, return_dict=False)[0],
                                        cuda, MAX_TRANSFORMER_SHAPES, pool)
        self.preview = StaticGraphs(lambda **inputs: decode_estimate(pipeline, **inputs), cuda, MAX_PREVIEW_SHAPES,
                                    pool)

    def decode_preview(self, x0: torch.Tensor, shape: tuple[int, int, int], decode_timestep: float,
                       whole: bool) -> torch.Tensor:
        """`decode_estimate` through its graph, copied: the next replay may reuse the output's memory."""
        return self.preview(x0=x0, shape=shape, decode_timestep=decode_timestep, whole=whole).clone()

    @property
    def captured(self) -> int:
        return self.transformer.captured + self.preview.captured


def sampling_arguments(models, condition: Sequence[Image.Image], num_frames: int, fps: int, generator,
                       prompt_embeds: torch.Tensor, prompt_attention_mask: torch.Tensor,
                       timesteps: Sequence[float] | None = None, latents: torch.Tensor | None = None) -> dict:
    """LTXConditionPipeline's arguments for one pass sampled as `config.VideoSampling` says (its
    `timesteps`, the first pass's by default), its first frames `condition`: one image, or 8k+1
    frames as a video at frame 0 (the authors' `conditioning_media_paths` with start frame 0, each
    frame prepared as their image is: `ltx_video/inference.py`, `load_media_file`). Every latent
    frame the condition covers is held at its VAE encoding, noised by `image_cond_noise_scale` x
    sigma^2 at each step. `latents`: a pass that goes on from them (LTX's second), noised to its
    first timestep: diffusers does that only for a denoising strength below 1, which drops the first
    of the timesteps it is given, so a first one (1000, the schedule's top) is put before them (the
    step sizes come from the per-token timesteps: tests/test_passes.py). `generator`: a
    seed, or the generator the first pass drew from (the authors' second pass goes on drawing from it)."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    first = condition[0]
    frame = LTXVideoCondition(image=first, frame_index=0) if len(condition) == 1 else \
        LTXVideoCondition(video=list(condition), frame_index=0)

    pipeline, sampling = models.video_pipeline, models.settings.sampling
    timesteps = list(sampling.timesteps if timesteps is None else timesteps)
    prompt_embeds = prompt_embeds.to(pipeline.transformer.dtype)
    conditioning = dict(prompt_embeds=prompt_embeds, prompt_attention_mask=prompt_attention_mask)
    if sampling.guidance_scale > 1:
        conditioning.update(negative_conditioning(models, prompt_embeds, prompt_attention_mask))
    if latents is not None:
        conditioning.update(latents=latents, denoise_strength=len(timesteps) / (len(timesteps) + 1))
        timesteps = [1000.0, *timesteps]
    if not isinstance(generator, torch.Generator):
        generator = torch.Generator(device=pipeline.device).manual_seed(generator)
    return dict(conditions=[frame], width=first.width, height=first.height, num_frames=num_frames, frame_rate=fps,
                timesteps=timesteps, guidance_scale=sampling.guidance_scale,
                image_cond_noise_scale=sampling.image_cond_noise_scale, generator=generator, output_type="latent",
                **conditioning)


@torch.inference_mode()
def decode_video(pipeline, latents: torch.Tensor, generator: torch.Generator, decode_timestep: float,
                 noise_scale: float) -> torch.Tensor:
    """A pass's final latents ([1, C, F, h, w], normalized, as `output_type="latent"` returns them)
    -> frames [F, 3, H, W] in [0, 1], decoded as LTX's authors decode them
    (`ltx_video/pipelines/pipeline_ltx_video.py`, the end of `LTXVideoPipeline.__call__`, and
    `ltx_video/models/autoencoders/vae_encode.py`, `vae_decode`): `noise_scale` of noise mixed into
    the normalized latents, then un-normalized per channel and decoded at `decode_timestep`.
    diffusers' LTXConditionPipeline mixes the noise in after un-normalizing (docs/PITFALLS.md). The
    noise is drawn from the run's generator, where diffusers draws it (the authors draw from torch's
    global one, which a server shared by many runs cannot seed per run)."""
    vae = pipeline.vae
    timestep = None
    if vae.config.timestep_conditioning:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        latents = latents * (1 - noise_scale) + noise * noise_scale
        timestep = torch.full((latents.shape[0],), decode_timestep, device=latents.device, dtype=vae.dtype)
    latents = pipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
    return pipeline.video_processor.postprocess_video(video, output_type="pt")[0]


@torch.inference_mode()
def render(models, condition: Sequence[Image.Image], num_frames: int, fps: int, seed: int,
           prompt_embeds: torch.Tensor, prompt_attention_mask: torch.Tensor, stop: threading.Event,
           on_preview: Callable[[int, int, torch.Tensor], None] = lambda number, step, rgb: None,
           trace: Trace = null_trace, graphs: VideoGraphs | None = None,
           attach: Callable[[Callable[[], None]], None] = lambda undo: None, passes: int = 1) -> torch.Tensor:
    """Denoise with LTX, `condition` (the condition image, or the story's last frames, prepared:
    `prepare_condition`) as its first frames -> frames [F, H, W, 3] uint8 on the CPU, at the
    condition's size. `passes=2`: the authors' two passes (`passes.py`): the first at two thirds of
    the size, the upscaler, the second at twice the first's, the frames resized to the size.

    `on_preview(pass, step, rgb)` gets previews ([H, W, 3] uint8 at the clip's size, on the model's
    device, still being computed there: the caller copies it off the critical path) on the steps of
    the preview cadence (`Settings.preview_every`) of each pass, its last step included. Raises
    Stopped when `stop` is set. With `graphs` (`Settings.video_graphs`), each step's transformer
    forward and each preview decode run through their static graphs. `attach(undo)` is told how to
    take each hook (and the graphed forward) off the shared transformer again, for a caller that
    must do it from another thread.
    """
    pipeline, sampling = models.video_pipeline, models.settings.sampling
    size = condition[0].size
    sizes = [size] if passes == 1 else list(passes_stage.pass_sizes(*size, sampling.downscale_factor))
    schedules = [sampling.timesteps, sampling.second_pass_timesteps][:passes]
    estimate = DenoisingEstimate(pipeline, sampling.guidance_scale)
    attach(estimate.remove)
    marks, sampler = {}, threading.get_ident()  # where the current step began, and where the final decode begins

    def on_forward(module, args):  # a step begins; before a pass's first, its condition was encoded
        if threading.get_ident() != sampler:  # an abandoned run's worker, woken up: not this run's step
            raise Stopped()
        if "step" not in marks:
            trace.add("video", "encode image", marks["pass"], trace.mark())
        marks["step"] = trace.mark()

    step_hook = pipeline.transformer.register_forward_pre_hook(on_forward)
    attach(step_hook.remove)
    graphed = graphed_forward(pipeline.transformer, graphs.transformer) if graphs else contextlib.nullcontext()
    generator, latents = torch.Generator(device=pipeline.device).manual_seed(seed), None
    try:
        with graphed as undo_forward:
            if undo_forward is not None:
                attach(undo_forward)
            for number, (pass_size, timesteps) in enumerate(zip(sizes, schedules), start=1):
                marks.pop("step", None)  # its first forward marks its condition's encode
                marks["pass"] = trace.mark()
                callback = _previewing(models, estimate, marks, trace, stop, on_preview, graphs, number, passes,
                                       (num_frames, pass_size), size)
                arguments = sampling_arguments(models, passes_stage.condition_at(condition, pass_size), num_frames,
                                               fps, generator, prompt_embeds, prompt_attention_mask, timesteps,
                                               latents)
                latents = pipeline(**arguments, callback_on_step_end=callback).frames
                if number < passes:
                    with trace.span("video", "upscale"):
                        latents = passes_stage.upsample(pipeline, models.upscaler, latents)
            frames = decode_video(pipeline, latents, generator, sampling.decode_timestep, sampling.decode_noise_scale)
        trace.add("video", "VAE decode", marks["decode"], trace.mark())
        with trace.span("video", "frames to CPU"):
            frames = passes_stage.resized(frames, size)  # [F, 3, H, W]: from the second pass's size
            frames = to_uint8(frames).permute(0, 2, 3, 1).cpu()
    finally:
        estimate.remove()
        step_hook.remove()
    return frames


def _previewing(models, estimate, marks, trace, stop, on_preview, graphs, number: int, passes: int,
                clip: tuple[int, tuple[int, int]], size: tuple[int, int]):
    """A pass's step callback: its step's span, Stop, and the previews of its cadence, decoded at the
    pass's size and shown at the clip's."""
    pipeline, settings = models.video_pipeline, models.settings
    num_frames, (width, height) = clip
    shape = latent_shape(pipeline, num_frames, height, width)
    previewed = set(preview_steps(settings.sampling.pass_steps(passes)[number - 1], settings.preview_every))
    decode = graphs.decode_preview if graphs is not None else functools.partial(decode_estimate, pipeline)
    label = "" if number == 1 else f"pass {number} "

    def on_step_end(pipe, step, timestep, callback_kwargs):
        trace.add("video", f"{label}step {step}", marks["step"], trace.mark())
        if stop.is_set():
            raise Stopped()
        if step in previewed:
            with trace.span("video", f"{label}preview {step}"):
                rgb = decode(estimate.x0, shape, settings.sampling.decode_timestep,
                             whole=settings.preview_decode == "whole")
                if (width, height) != size:
                    rgb = to_uint8(passes_stage.resized(rgb.permute(2, 0, 1)[None].float() / 255, size)[0]
                                   ).permute(1, 2, 0)
                on_preview(number, step, rgb)
        marks["decode"] = trace.mark()
        return {}

    return on_step_end


@torch.inference_mode()
def warm_conditionings(models) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A conditioning of each loaded mode's shape: the bridge's (fused) and T5's (text)."""
    conditionings = []
    if models.bridge is not None:
        vision = torch.zeros(1, 4, models.vision.config.hidden_size, device=models.vision.device)
        states = torch.zeros(1, 4, models.vlm.config.text_config.hidden_size, device=models.vlm.device)
        conditionings.append(fused_conditioning(models, vision, states))
    if models.video_pipeline.text_encoder is not None:
        conditionings.append(text_conditioning(models, "Next: warming up."))
    return conditionings


@torch.inference_mode()
def capture_graphs(models, graphs: VideoGraphs, sizes: list[tuple[int, int, int]],
                   conditionings: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Capture (on a CPU: prepare) the graphs of these (width, height, frames) clips for each
    (prompt_embeds, mask): one step of the run's own pipeline call and one preview each, so the
    inputs are exactly a run's; no final decode."""
    pipeline, settings = models.video_pipeline, models.settings
    for width, height, frames in sizes:
        shape = latent_shape(pipeline, frames, height, width)
        for embeds, mask in conditionings:
            estimate = DenoisingEstimate(pipeline, settings.sampling.guidance_scale)

            def on_step_end(pipe, step, timestep, callback_kwargs):
                graphs.decode_preview(estimate.x0, shape, settings.sampling.decode_timestep,
                                      whole=settings.preview_decode == "whole")
                return {}

            arguments = sampling_arguments(models, [Image.new("RGB", (width, height))], frames, 16, 0, embeds, mask)
            try:
                with graphed_forward(pipeline.transformer, graphs.transformer):
                    pipeline(**{**arguments, "timesteps": arguments["timesteps"][:1]},
                             callback_on_step_end=on_step_end)
            finally:
                estimate.remove()
