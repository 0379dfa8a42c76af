"""Settings: presets, model ids, sampling and every other knob the pipeline reads, in one place.

This module knows nothing of profiles (`foresight/profiles/` turns a profile name into Settings)
and imports nothing else from the package.
"""

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
    # "And then?": a continuation is conditioned on the story's last frames, 8k+1 of them (LTX
    # encodes the first frame alone, then 8 per latent frame). 9, the fewest that carry motion,
    # is LTX's authors' default for conditioning on a video (their distilled Space,
    # Lightricks/ltx-video-distilled app.py: "Frames to use from input video", 9, step 8); `high`
    # has room for 17 and still adds 48 new frames (2 s). docs/DESIGN.md, "And then?".
    condition_frames: int = 9

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


# Rendered at 24 fps, a rate LTX's authors run the model at: it is told the rate (`frame_rate`,
# which scales the time axis of its positions into seconds, as the authors' `ltx_video` pipeline
# does: pipeline_ltx_video.py, `fractional_coords[:, 0] * (1.0 / frame_rate)`), and the mp4 plays
# at the same. Sources: their `ltx_video/inference.py` defaults to 30; their distilled Space
# (Lightricks/ltx-video-distilled, app.py) wrote 24 at first and runs 30 now; diffusers' 0.9.8
# distilled example writes 24; training "was actually done in various frame rates"
# (Lightricks/LTX-Video issue 149), and users found 24 and 30 stable where low rates are not
# (LTX-Video-Trainer issue 27). Of the two, 24 costs fewer latent tokens for the same seconds.
# The frame counts (8k+1) keep each preset's clip length (docs/DESIGN.md, Presets).
PRESETS = {
    "fast": Preset("fast", 256, 256, 25, 24),  # 1.04 s; 4 latent frames x 64 = 256 tokens (was 17 at 16 fps: 192)
    "default": Preset("default", 512, 512, 49, 24),  # 2.04 s; 7 x 256 = 1,792 tokens (was 33 at 16 fps: 1,280)
    "high": Preset("high", 768, 768, 65, 24, condition_frames=17),  # 2.71 s; 9 x 576 = 5,184 tokens (unchanged)
}
# A story ("And then?") has at most this many segments: each continuation conditions on generated
# frames, so errors compound (drift), and each is one more turn in the shared GPU's queue. Four
# make at most 2.0 + 3 x 1.67 = 7.0 s at `default`, and a visitor's story holds the queue four times.
MAX_SEGMENTS = 4
# A CUDA out-of-memory retries at the next smaller preset, down to the smallest.
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
    # The latent spatial upscaler between the two passes (the authors' configs/ltxv-2b-0.9.8-distilled.yaml,
    # `spatial_upscaler_model_path`, downloaded from Lightricks/LTX-Video by their inference.py).
    # Empty string: no second pass.
    video_upscaler: str = "Lightricks/LTX-Video/ltxv-spatial-upscaler-0.9.8.safetensors"


@dataclass(frozen=True)
class VideoSampling:
    """How the distilled LTX checkpoints are sampled, as their authors run them.

    Sources: the LTX-Video authors' `configs/ltxv-2b-0.9.8-distilled.yaml` (first pass: these seven
    timesteps as sigmas x 1000, guidance 1, `decode_timestep` 0.05, `decode_noise_scale` 0.025) and
    `ltx_video/inference.py` (`image_cond_noise_scale` 0.15, and the condition image blurred and
    passed once through H.264 "for getting more motion in image-to-video": `condition_crf`).
    diffusers' LTX-Video docs give the same first pass with an eighth step from 0.03 to 0, which
    moves the latents by 0.00003 of a velocity (docs/BENCHMARKS.md) for a whole transformer pass,
    and `image_cond_noise_scale` 0; where the two differ, the authors' values are used. A run asks
    for one pass or two (`passes`): the second, its upscaler and its three steps, as the authors
    run it (`foresight/passes.py`). The timesteps are used as given: the scheduler runs without
    shifting (`models.prepare_video_pipeline`).
    """

    timesteps: tuple[float, ...] = (1000.0, 993.7, 987.5, 981.2, 975.0, 909.4, 725.0)
    # The authors' second pass ("multi-scale"; their Space's "Improve Texture", checked by default):
    # the first pass at `downscale_factor` of the size (sides rounded down to 32), its latents
    # doubled by the spatial upscaler and AdaIN-filtered toward it, then these three steps at
    # twice the first pass's size, the frames resized to the size asked for (configs/
    # ltxv-2b-0.9.8-distilled.yaml: `downscale_factor`, `second_pass.timesteps`).
    second_pass_timesteps: tuple[float, ...] = (909.4, 725.0, 421.9)
    downscale_factor: float = 0.6666666
    guidance_scale: float = 1.0
    decode_timestep: float = 0.05
    decode_noise_scale: float = 0.025
    # Noise on the condition frame's latents at every step, times sigma^2 ("helps with motion
    # continuity, especially when conditioned on a single frame": the authors' pipeline docstring).
    image_cond_noise_scale: float = 0.15
    # The condition image is blurred (3x3 Gaussian, sigma 1) and round-tripped through one H.264
    # frame at this CRF before it is encoded (the authors' `crf_compressor.compress`); 0: neither.
    condition_crf: int = 29
    max_sequence_length: int = 128  # T5 tokens for `text` mode's prompt

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def pass_steps(self, passes: int) -> tuple[int, ...]:
        """The steps of each pass: (7,), or (7, 3) in two passes."""
        return (self.num_steps, len(self.second_pass_timesteps))[:passes]


@dataclass(frozen=True)
class Settings:
    profile: str = "full"  # which profile made these settings; the loaders do not read it
    model_ids: ModelIds = field(default_factory=ModelIds)
    models_dir: Path | None = None  # local folders named like the hub ids, instead of the hub
    weights_dir: Path = Path(__file__).resolve().parent.parent / "weights"  # bridge checkpoints to pick from
    weights: Path | None = None  # one bridge checkpoint, chosen explicitly (refused if it does not fit)
    device: str = "cpu"
    dtype: str = "bfloat16"
    sampling: VideoSampling = field(default_factory=VideoSampling)
    max_new_tokens: int = 256
    # Qwen's view of the upload, the same for every preset: its area is capped here (multiples of
    # 28x28; 512x512 gives 324 vision tokens), whatever size the video is rendered at.
    vlm_max_pixels: int = 512 * 512
    vlm_min_pixels: int = 28 * 28 * 4
    hidden_layer: int = -3  # the decoder layer whose prefill output feeds the bridge (HunyuanVideo's choice)
    bridge_layout: dict = field(default_factory=dict)  # BridgeConfig sizes for new bridges; {} = full size
    # `text` mode: the video waits for the prediction line (at most `vlm.PREDICTION_WORDS` words, about
    # 40 tokens); past this many tokens without one, the text so far is the prediction.
    prediction_max_tokens: int = 60
    # Load T5-XXL (9.5 GB) for `text` mode. Off, it is skipped whenever a bridge can run `fused` mode.
    text_mode: bool = True
    # "static": a fixed-size KV cache; transformers then compiles the decode step on CUDA (CUDA graphs,
    # "reduce-overhead"), paid once by the warm-up. The default on a CUDA GPU that stays; numbers in
    # docs/BENCHMARKS.md. "dynamic": the plain growing cache, not compiled.
    decode: str = "dynamic"
    static_cache_len: int = 2048  # one size for every call, so the compiled step is reused
    # How the two workers share the GPU: "shared" (one stream) or "streams" (the text on its own
    # high-priority stream); see foresight/scheduling.py. `streams` on CUDA (docs/BENCHMARKS.md).
    schedule: str = "shared"
    # Fused mode: DINOv2 reads the image beside the prefill (it needs none) instead of after it.
    # Off until measured on a GPU: it shortens the video's path by DINOv2's time, if the prefill
    # leaves the GPU room; on the 2-core CPU it delayed the first text (docs/BENCHMARKS.md). Meant
    # for the `streams` schedule: on one shared stream its kernels queue ahead of the prefill's.
    vision_early: bool = False
    # While the video renders, the text is held to this many tokens a second (0: not held), so the
    # video gets the GPU; it runs at full speed before and after. 45 on CUDA: well ahead of any
    # reader, and measured to give the video the most (docs/BENCHMARKS.md).
    text_pace: float = 0.0
    # Previews: decode the denoising estimate every `preview_every` steps and at the last (0: no
    # previews), as its first and last latent frames ("ends", cheap) or the whole clip ("whole",
    # exact). Every 2nd step: on a GPU an eager preview decode costs about a denoising step
    # (docs/BENCHMARKS.md), on a CPU more.
    preview_every: int = 2
    preview_decode: str = "ends"
    compile_video: bool = False  # torch.compile LTX's transformer blocks (the warm-up pays it); not yet measured alone
    # The transformer's forward and the preview decode on static buffers, captured as one CUDA graph
    # per shape (`foresight/graphs.py`; the warm-up captures the common ones). Off until a GPU run
    # measures it: on a CPU the same buffers run eagerly, for the tests.
    video_graphs: bool = False
    # A whole run's deadline in seconds (FORESIGHT_RUN_TIMEOUT); None: `run_timeout` derives it from the
    # preset and the device. Past it the run ends in words and whatever does not stop is abandoned.
    run_timeout_s: float | None = None
    # After Stop (or the deadline), how long a run waits for its workers to end before it abandons them.
    stop_grace_s: float = 10.0


# The run deadline's default on a GPU, per preset. A default run on an H100 takes about 10 s: 256
# tokens of text at >= 40 tokens/s (paced) and the mp4 at about 2 s (docs/BENCHMARKS.md); an
# A100-40GB is about 2-3x slower. The defaults give a default run 9x the H100's time and >= 3x the
# A100's; `high` (4x the latent tokens of `default`, not yet measured) twice that.
CUDA_RUN_TIMEOUT_S = {"fast": 60.0, "default": 90.0, "high": 180.0}
CPU_RUN_TIMEOUT_S = 300.0  # a CPU runs the tiny models (seconds a run); the full ones are not a product path
# ZeroGPU lends the GPU for at most this long per call (`spaces.GPU(duration=...)` in app.py) and then
# aborts the call; the run's own deadline ends it in words first.
ZERO_GPU_DURATION_S = 120
# After the deadline a run still waits `stop_grace_s` for its workers, then up to PROBE_TIMEOUT_S for
# the GPU's answer (`health.py`): the lease must hold all of it.
PROBE_TIMEOUT_S = 10.0  # a one-element kernel and a sync take microseconds on a GPU that answers
ZERO_GPU_SLACK_S = 5.0


def run_timeout(settings: Settings, preset: Preset) -> float:
    """A run's deadline: `settings.run_timeout_s`, else the device's default for the preset; on
    ZeroGPU, either within the lease, with room for what comes after the deadline."""
    if settings.run_timeout_s:
        timeout = settings.run_timeout_s
    elif not settings.device.startswith("cuda"):
        timeout = CPU_RUN_TIMEOUT_S
    else:
        timeout = CUDA_RUN_TIMEOUT_S.get(preset.name, max(CUDA_RUN_TIMEOUT_S.values()))
    if on_zero_gpu():
        timeout = min(timeout, ZERO_GPU_DURATION_S - settings.stop_grace_s - PROBE_TIMEOUT_S - ZERO_GPU_SLACK_S)
    return timeout


CUDA_TEXT_PACE = 45.0  # tokens/s while the video renders, on a GPU (Settings.text_pace)
DECODES = ("dynamic", "static")
SCHEDULES = ("shared", "streams")  # foresight/scheduling.py
PREVIEW_DECODES = ("ends", "whole")

# Environment overrides of the model ids. For the 13B distilled model:
# FORESIGHT_VIDEO_ID=Lightricks/LTX-Video-0.9.8-13B-distilled FORESIGHT_VIDEO_SINGLE_FILE=
MODEL_ID_ENV = {"vlm": "FORESIGHT_VLM_ID", "vision": "FORESIGHT_VISION_ID", "video": "FORESIGHT_VIDEO_ID",
                "video_single_file": "FORESIGHT_VIDEO_SINGLE_FILE", "video_upscaler": "FORESIGHT_VIDEO_UPSCALER"}


def base_models(settings: Settings) -> dict[str, str]:
    """The base models a bridge is trained against, as its checkpoint records them."""
    ids = settings.model_ids
    return {"vlm": ids.vlm, "vision": ids.vision, "video": ids.video_single_file or ids.video}


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


def cache_dir() -> Path:
    return Path(os.environ.get("FORESIGHT_CACHE", Path.home() / ".cache" / "foresight"))


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.lower() not in ("0", "false", "no", "off", "")


def settings_from_env(**overrides) -> Settings:
    """Settings for this machine (CUDA or not) with the FORESIGHT_* environment applied, then `overrides`."""
    on_cuda = cuda_available()
    env = os.environ.get
    settings = Settings(
        model_ids=ModelIds(**{k: os.environ[v] for k, v in MODEL_ID_ENV.items() if v in os.environ}),
        models_dir=Path(env("FORESIGHT_MODELS_DIR")) if env("FORESIGHT_MODELS_DIR") else None,
        weights=Path(env("FORESIGHT_WEIGHTS")) if env("FORESIGHT_WEIGHTS") else None,
        device="cuda" if on_cuda else "cpu",
        dtype="bfloat16" if on_cuda else "float32",
        text_mode=_flag("FORESIGHT_TEXT_MODE", True),
        # How the GPU is shared is the device's, not the operator's: the variants are `bench` options
        # (`python -m foresight bench --variant ...`), decided by the numbers in docs/BENCHMARKS.md.
        decode=default_decode(on_cuda),
        schedule="streams" if on_cuda else "shared",
        text_pace=CUDA_TEXT_PACE if on_cuda else 0.0,
        run_timeout_s=float(env("FORESIGHT_RUN_TIMEOUT")) if env("FORESIGHT_RUN_TIMEOUT") else None,
    )
    return check(replace(settings, **overrides))


def check(settings: Settings) -> Settings:
    """Refuse settings the pipeline cannot run, with the variable or argument to change."""
    if settings.decode not in DECODES:
        raise ValueError(f"decode {settings.decode!r}: use one of {', '.join(DECODES)}")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"schedule {settings.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if settings.compile_video and settings.video_graphs:
        raise ValueError("compile_video and video_graphs: choose one")
    if settings.preview_decode not in PREVIEW_DECODES:
        raise ValueError(f"preview decode {settings.preview_decode!r}: use one of {', '.join(PREVIEW_DECODES)}")
    return settings


# What each loader reads of its repository, as fnmatch patterns that hold for the real repos' file
# names and for the tiny profile's: the only files the full profile downloads (`models.fetch`),
# each part only when it runs (T5 and its tokenizer with text mode, DINOv2 with a bridge), and what
# README's `preload_from_hub` lists by name (tests/test_hub_files.py holds the two together, and
# fails when a loader reads a file that is not here).
HUB_FILES = {
    "vlm": ("config.json", "generation_config.json", "chat_template.json", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json", "model*.safetensors*"),
    "vision": ("config.json", "preprocessor_config.json", "model.safetensors"),
    "video": ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json"),
    "text_encoder": ("text_encoder/config.json", "text_encoder/model*.safetensors*", "tokenizer/*"),
    # only without a single file (the 13B distilled diffusers repo): the weights from the folder
    "video_weights": ("transformer/*", "vae/*"),
}


def resolve(settings: Settings, model_id: str) -> str:
    """A hub id, or the matching folder (or file) under `models_dir` when that is set."""
    if settings.models_dir is None or not model_id:
        return model_id
    return str(settings.models_dir / model_id)
