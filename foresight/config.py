"""Presets, model ids and profiles: every knob the pipeline reads, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    name: str
    width: int  # target area is width * height; the input's aspect ratio is kept within it
    height: int
    num_frames: int  # LTX wants 8k+1
    fps: int


PRESETS = {
    "fast": Preset("fast", 256, 256, 17, 16),
    "default": Preset("default", 512, 512, 33, 16),
    "high": Preset("high", 768, 768, 65, 24),
}
# A CUDA out-of-memory at one preset retries once at the next smaller one.
SMALLER_PRESET = {"high": "default", "default": "fast"}


@dataclass(frozen=True)
class ModelIds:
    """Hub ids (or local folders) of the four models. Each is overridable."""

    vlm: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    vision: str = "facebook/dinov2-large"
    # Diffusers-format repo: scheduler, VAE, T5 text encoder and tokenizer, and the transformer's config.
    video: str = "Lightricks/LTX-Video-0.9.5"
    # The 2B distilled checkpoints have no diffusers folder: their transformer (and VAE, when the
    # file holds one) come from this single-file checkpoint, with configs from `video`.
    # Empty string: the transformer comes from the `video` folder (e.g. the 13B distilled repo).
    video_single_file: str = "Lightricks/LTX-Video/ltxv-2b-0.9.8-distilled.safetensors"



@dataclass(frozen=True)
class VideoSampling:
    """Sampler settings for a distilled LTX checkpoint (guidance 1, few steps)."""

    num_inference_steps: int = 8
    guidance_scale: float = 1.0
    decode_timestep: float = 0.05  # timestep-aware VAEs (0.9.1 and later)
    decode_noise_scale: float = 0.025
    max_sequence_length: int = 128


@dataclass(frozen=True)
class Settings:
    profile: str  # "full", "tiny" or "random-full"
    model_ids: ModelIds = field(default_factory=ModelIds)
    models_dir: Path | None = None  # local folders named like the hub ids, instead of the hub
    weights_dir: Path = Path(__file__).resolve().parent.parent / "weights"
    device: str = "cpu"
    dtype: str = "bfloat16"
    sampling: VideoSampling = field(default_factory=VideoSampling)
    max_new_tokens: int = 256
    vlm_max_pixels: int = 512 * 512  # caps Qwen's vision tokens (324 at 512x512)
    hidden_layer: int = -3  # which VLM layer's prefill output feeds the bridge (HunyuanVideo's choice)
    # Load T5-XXL (9.5 GB) for `text` mode. Off, it is skipped whenever a bridge can run `fused` mode.
    text_mode: bool = True
    # "static": a fixed-size KV cache; transformers then compiles the decode step on CUDA (CUDA graphs,
    # "reduce-overhead"), paid once by the warm-up (~50 s). The default on CUDA: on an H100 it decodes
    # at 94 tok/s alone and 80 beside the video, against 14-53 and 12-17 for "dynamic" (DESIGN.md,
    # "Performance"). "dynamic": the plain growing cache, not compiled; the default on a CPU.
    decode: str = "dynamic"
    static_cache_len: int = 2048  # one size for every call, so the compiled step is reused
    # How the two workers share the GPU: "shared" (one stream) or "streams" (the text on its own
    # high-priority stream); see foresight/scheduling.py.
    schedule: str = "shared"


DECODES = ("dynamic", "static")
SCHEDULES = ("shared", "streams")  # foresight/scheduling.py

# Environment overrides of the model ids (full and random-full profiles). For the 13B distilled
# model: FORESIGHT_VIDEO_ID=Lightricks/LTX-Video-0.9.8-13B-distilled FORESIGHT_VIDEO_SINGLE_FILE=
MODEL_ID_ENV = {"vlm": "FORESIGHT_VLM_ID", "vision": "FORESIGHT_VISION_ID", "video": "FORESIGHT_VIDEO_ID",
                "video_single_file": "FORESIGHT_VIDEO_SINGLE_FILE"}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def on_zero_gpu() -> bool:
    """A ZeroGPU Space: the GPU is lent per call, in a forked process that ends with the call."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def default_decode(on_cuda: bool) -> str:
    """`static` on a CUDA GPU that stays (its compile is paid once); `dynamic` on a CPU, and on ZeroGPU,
    where every call would compile again."""
    return "static" if on_cuda and not on_zero_gpu() else "dynamic"


def default_profile() -> str:
    return os.environ.get("FORESIGHT_PROFILE") or ("full" if cuda_available() else "tiny")


def cache_dir() -> Path:
    return Path(os.environ.get("FORESIGHT_CACHE", Path.home() / ".cache" / "foresight"))


def make_settings(profile: str | None = None, models_dir: str | Path | None = None, **overrides) -> Settings:
    """Settings for a profile. `tiny` points every loader at the tiny checkpoints it writes."""
    profile = profile or default_profile()
    if profile not in ("full", "tiny", "random-full"):
        raise ValueError(f"unknown profile {profile!r}: use full, tiny or random-full")
    models_dir = models_dir or os.environ.get("FORESIGHT_MODELS_DIR")
    on_cuda = cuda_available()
    settings = Settings(
        profile=profile,
        model_ids=ModelIds(**{k: os.environ[v] for k, v in MODEL_ID_ENV.items() if v in os.environ}),
        models_dir=Path(models_dir) if models_dir else None,
        device="cuda" if on_cuda else "cpu",
        dtype="bfloat16" if on_cuda else "float32",
        text_mode=os.environ.get("FORESIGHT_TEXT_MODE", "1") not in ("0", "false", "no"),
        decode=os.environ.get("FORESIGHT_DECODE") or default_decode(on_cuda),
        schedule=os.environ.get("FORESIGHT_SCHEDULE", "shared"),
    )
    if settings.decode not in DECODES:
        raise ValueError(f"FORESIGHT_DECODE={settings.decode!r}: use one of {', '.join(DECODES)}")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"FORESIGHT_SCHEDULE={settings.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if profile == "tiny":
        from foresight.tiny import ensure_tiny_models

        models_dir, weights_dir = ensure_tiny_models()
        settings = replace(
            settings,
            model_ids=ModelIds(),  # the tiny checkpoints exist under the default ids only
            models_dir=models_dir,
            weights_dir=weights_dir,
            max_new_tokens=48,
            vlm_max_pixels=56 * 56,
            sampling=replace(settings.sampling, num_inference_steps=4),
        )
    return replace(settings, **overrides)


def resolve(settings: Settings, model_id: str) -> str:
    """A hub id, or the matching folder (or file) under `models_dir` when that is set."""
    if settings.models_dir is None or not model_id:
        return model_id
    return str(settings.models_dir / model_id)
