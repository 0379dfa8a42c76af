"""Loading the four models. The only loaders: `full` and `tiny` differ in where files are, not in code."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from foresight.bridge import Bridge, find_bridge_checkpoint, load_bridge
from foresight.config import Settings, resolve


@dataclass
class Models:
    processor: Any  # Qwen2_5_VLProcessor
    vlm: Any  # Qwen2_5_VLForConditionalGeneration
    vision_processor: Any  # DINOv2's image processor
    vision: Any  # Dinov2Model
    video: Any  # LTXImageToVideoPipeline (text_encoder None when `text` mode cannot run)
    bridge: Bridge | None  # None: no trained weights for these base models, `fused` mode unavailable
    bridge_note: str  # what was (or was not) loaded, for the page and the logs
    settings: Settings

    @property
    def modes(self) -> list[str]:
        modes = ["fused"] if self.bridge is not None else []
        return modes + (["text"] if self.video.text_encoder is not None else [])


def torch_dtype(settings: Settings) -> torch.dtype:
    return getattr(torch, settings.dtype)


def load_models(settings: Settings, log: Callable[[str], None] = print,
                load_text_encoder: bool | None = None) -> Models:
    """Load every model once, in bf16 on CUDA (float32 on CPU), safetensors only.

    T5-XXL is loaded when `text` mode can be asked for (`settings.text_mode`) or is the only mode
    (no bridge); `load_text_encoder` forces the choice (training's video objective needs no T5).
    """
    if settings.profile == "random-full":
        from foresight.random_full import build_random_full_models

        return build_random_full_models(settings, log, needs_text_encoder(settings, True, load_text_encoder))
    from transformers import AutoImageProcessor, AutoProcessor, Dinov2Model, Qwen2_5_VLForConditionalGeneration

    dtype, device, ids = torch_dtype(settings), settings.device, settings.model_ids
    common = dict(use_safetensors=True)

    def step(what: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        log(f"[foresight] loading {what} ...")
        out = fn()
        log(f"[foresight] loaded {what} in {time.perf_counter() - start:.1f}s")
        return out

    vlm_path = resolve(settings, ids.vlm)
    processor = step(f"processor {ids.vlm}", lambda: AutoProcessor.from_pretrained(vlm_path))
    vlm = step(f"VLM {ids.vlm}", lambda: Qwen2_5_VLForConditionalGeneration.from_pretrained(
        vlm_path, dtype=dtype, **common).to(device).eval())

    vision_path = resolve(settings, ids.vision)
    vision_processor = AutoImageProcessor.from_pretrained(vision_path)
    vision = step(f"vision {ids.vision}", lambda: Dinov2Model.from_pretrained(
        vision_path, dtype=dtype, **common).to(device).eval())

    bridge_folder, bridge_note = find_bridge_checkpoint(settings)
    bridge = None
    if bridge_folder is not None:
        bridge = load_bridge(bridge_folder, expected_base_models=base_models(settings)).to(device, dtype).eval()
    log(f"[foresight] bridge: {bridge_note}")

    load_text_encoder = needs_text_encoder(settings, bridge is not None, load_text_encoder)
    if not load_text_encoder:
        log("[foresight] text mode off: T5-XXL is not loaded")
    video = step(f"video {ids.video}", lambda: load_video_pipeline(settings, load_text_encoder))
    return Models(processor, vlm, vision_processor, vision, video, bridge, bridge_note, settings)


def needs_text_encoder(settings: Settings, bridge_loaded: bool, forced: bool | None = None) -> bool:
    """T5-XXL is needed when `text` mode may be asked for, or is the only mode (no bridge); `forced` decides."""
    return forced if forced is not None else settings.text_mode or not bridge_loaded


def base_models(settings: Settings) -> dict[str, str]:
    ids = settings.model_ids
    return {"vlm": ids.vlm, "vision": ids.vision, "video": ids.video_single_file or ids.video}


def load_video_pipeline(settings: Settings, load_text_encoder: bool = True):
    """LTX image-to-video; a single-file transformer (and VAE, if the file has one) when configured."""
    from diffusers import AutoencoderKLLTXVideo, LTXImageToVideoPipeline, LTXVideoTransformer3DModel

    dtype, ids = torch_dtype(settings), settings.model_ids
    folder = resolve(settings, ids.video)
    parts: dict[str, Any] = {}
    if ids.video_single_file:
        single_file = _local_single_file(settings, ids.video_single_file)
        parts["transformer"] = LTXVideoTransformer3DModel.from_single_file(
            single_file, config=folder, subfolder="transformer", dtype=dtype)
        if _has_vae_weights(single_file):
            parts["vae"] = AutoencoderKLLTXVideo.from_single_file(
                single_file, config=folder, subfolder="vae", dtype=dtype)
    if not load_text_encoder:
        parts.update(text_encoder=None, tokenizer=None)
    pipe = LTXImageToVideoPipeline.from_pretrained(folder, dtype=dtype, use_safetensors=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(settings.device)


def _local_single_file(settings: Settings, spec: str) -> str:
    """`owner/repo/file.safetensors`: the file under `models_dir`, else downloaded from the hub."""
    path = resolve(settings, spec)
    if Path(path).exists():
        return path
    from huggingface_hub import hf_hub_download

    owner, repo, filename = spec.split("/", 2)
    return hf_hub_download(f"{owner}/{repo}", filename)


def _has_vae_weights(path: str) -> bool:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return any(key.startswith("vae.") for key in f.keys())
