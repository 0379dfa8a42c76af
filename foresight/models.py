"""Loading the four models from the hub or from local folders. The only loaders; they know no profiles.

Everything loads in the settings' dtype (bf16 on CUDA), safetensors only, no remote code.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from foresight.bridge import Bridge, find_bridge_checkpoint, load_bridge
from foresight.config import HUB_FILES, Settings, base_models, resolve
from foresight.ltx_checkpoint import Finding, apply_padding, padding_of, read_header, verify
from foresight.upscaler import load_upscaler


@dataclass
class Models:
    vlm_processor: Any  # Qwen2_5_VLProcessor
    vlm: Any  # Qwen2_5_VLForConditionalGeneration
    vision_processor: Any  # DINOv2's image processor (None when no bridge would read it)
    vision: Any  # Dinov2Model (None likewise)
    video_pipeline: Any  # LTXConditionPipeline (text_encoder None when `text` mode cannot run)
    bridge: Bridge | None  # None: no trained weights for these base models, `fused` mode unavailable
    bridge_note: str  # what was (or was not) loaded, for the page and the logs
    settings: Settings
    video_checks: list[Finding] = field(default_factory=list)  # the LTX files, checked as they loaded
    upscaler: Any = None  # LTXLatentUpsamplerModel: the second pass between LTX's two (None: one pass only)

    @property
    def passes(self) -> tuple[int, ...]:
        """How many passes a run may ask LTX for: one, or also two (with the upscaler)."""
        return (1, 2) if self.upscaler is not None else (1,)

    @property
    def modes(self) -> list[str]:
        modes = ["fused"] if self.bridge is not None else []
        return modes + (["text"] if self.video_pipeline.text_encoder is not None else [])


def torch_dtype(settings: Settings) -> torch.dtype:
    return getattr(torch, settings.dtype)


def load_models(settings: Settings, log: Callable[[str], None] = print,
                load_text_encoder: bool | None = None, describe: Callable[[str], str] = str,
                load_vision: bool | None = None) -> Models:
    """Load every model once, in the settings' dtype and device, safetensors only.

    T5-XXL is loaded when `text` mode can be asked for (`settings.text_mode`) or is the only mode
    (no bridge); `load_text_encoder` forces the choice (training's video objective needs no T5).
    DINOv2 is loaded only for a bridge, which alone reads it; `load_vision` forces the choice
    (training and evaluation read it to make a bridge). Without a bridge it would cost a 1.2 GB
    download, its load time and 0.6 GB of GPU memory in bf16 for nothing.
    `describe(model_id)` names a model in the console lines (a profile's stand-ins say what they are).
    Raises BridgeError when `settings.weights` names a checkpoint that does not fit these models.
    """
    from transformers import AutoImageProcessor, AutoProcessor, Dinov2Model, Qwen2_5_VLForConditionalGeneration

    dtype, device, ids = torch_dtype(settings), settings.device, settings.model_ids

    def step(what: str, model_id: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        log(f"[foresight] {what}: {describe(model_id)}, loaded in {time.perf_counter() - start:.1f}s")
        return out

    bridge, bridge_note = load_bridge_for(settings)  # first: a refused --weights costs no model loading
    vlm_path = fetch(settings, ids.vlm, "vlm")
    vlm_processor = AutoProcessor.from_pretrained(vlm_path)
    vlm = step("VLM", ids.vlm, lambda: Qwen2_5_VLForConditionalGeneration.from_pretrained(  # sdpa: vlm.encode_image
        vlm_path, dtype=dtype, use_safetensors=True, attn_implementation="sdpa").to(device).eval())
    vision_processor = vision = None
    if load_vision or (load_vision is None and bridge is not None):
        vision_path = fetch(settings, ids.vision, "vision")
        vision_processor = AutoImageProcessor.from_pretrained(vision_path)
        vision = step("vision model", ids.vision, lambda: Dinov2Model.from_pretrained(
            vision_path, dtype=dtype, use_safetensors=True).to(device).eval())
    else:
        log(f"[foresight] vision model: {ids.vision} not loaded, as no bridge would read it")
    if bridge is not None:
        bridge = bridge.to(device, dtype).eval()
    log(f"[foresight] bridge: {bridge_note}")
    with_t5 = needs_text_encoder(settings, bridge is not None, load_text_encoder)
    if not with_t5:
        log("[foresight] text mode off: T5-XXL is not loaded")
    video_pipeline, video_checks = step("video model", ids.video_single_file or ids.video,
                                        lambda: load_video_pipeline(settings, with_t5))
    upscaler = None
    if ids.video_upscaler:
        upscaler, upscaler_checks = step("video upscaler", ids.video_upscaler, lambda: load_upscaler(
            _local_single_file(settings, ids.video_upscaler), video_pipeline.vae.config.latent_channels, dtype,
            device))
        video_checks = [*video_checks, *upscaler_checks]
    return Models(vlm_processor, vlm, vision_processor, vision, video_pipeline, bridge, bridge_note, settings,
                  video_checks, upscaler)


class _NothingKeptInFloat32(logging.Filter):
    """diffusers 0.42 warns at every `.to(dtype)` of a model whose list of modules to keep in float32
    is empty (`from_single_file` makes one such call per model): nothing to warn about."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kept in float32: []" not in record.getMessage()


@functools.cache  # once a process
def quiet_loaders() -> None:
    """The console at start-up: one line per model, none of the loaders' own progress bars
    (FORESIGHT_PROGRESS=1 keeps them) or empty warnings. The hub's download bars stay."""
    import diffusers
    import transformers

    logging.getLogger("diffusers.models.modeling_utils").addFilter(_NothingKeptInFloat32())
    if os.environ.get("FORESIGHT_PROGRESS", "") not in ("1", "true"):
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()


def load_bridge_for(settings: Settings) -> tuple[Bridge | None, str]:
    """The bridge `settings.weights` names (refused if it does not fit), else the first fitting one in `weights_dir`."""
    if settings.weights is not None:
        folder = Path(settings.weights)
        bridge = load_bridge(folder, expected_base_models=base_models(settings))
        return bridge, f"fused weights {folder.name} loaded"
    folder, note = find_bridge_checkpoint(settings.weights_dir, base_models(settings))
    return (load_bridge(folder) if folder is not None else None), note


def needs_text_encoder(settings: Settings, bridge_loaded: bool, forced: bool | None = None) -> bool:
    """T5-XXL is needed when `text` mode may be asked for, or is the only mode (no bridge); `forced` decides."""
    return forced if forced is not None else settings.text_mode or not bridge_loaded


def load_video_pipeline(settings: Settings, load_text_encoder: bool = True) -> tuple[Any, list[Finding]]:
    """LTX image-to-video (LTXConditionPipeline); a single-file transformer (and VAE, if the file has
    one), checked against the file as loaded (`ltx_checkpoint.verify`, CheckpointError when it does
    not fit) -> (the pipeline, what the check found)."""
    from diffusers import LTXConditionPipeline

    dtype, ids = torch_dtype(settings), settings.model_ids
    folder = fetch(settings, ids.video, "video", *([] if ids.video_single_file else ["video_weights"]),
                   *(["text_encoder"] if load_text_encoder else []))
    parts, checks = (_load_single_file(settings, folder, dtype) if ids.video_single_file else ({}, []))
    if not load_text_encoder:
        parts.update(text_encoder=None, tokenizer=None)
    pipeline = LTXConditionPipeline.from_pretrained(folder, dtype=dtype, use_safetensors=True, **parts)
    return prepare_video_pipeline(pipeline.to(settings.device)), checks


def _load_single_file(settings: Settings, folder: str, dtype: torch.dtype) -> tuple[dict[str, Any], list[Finding]]:
    """The transformer (and the VAE, when the file holds one) from the original-format single file,
    with the configs of `folder`: checked before any weight is read, against the models those
    configs build, then loaded, the VAE padded as the file's own config says."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

    single_file = _local_single_file(settings, settings.model_ids.video_single_file)
    header = read_header(single_file)
    classes = {"transformer": LTXVideoTransformer3DModel}
    if any(key.startswith("vae.") for key in header[0]):
        classes["vae"] = AutoencoderKLLTXVideo
    empty = {name: _empty_model(cls, folder, name) for name, cls in classes.items()}
    checks = verify(single_file, header, settings.model_ids.video, empty["transformer"], empty.get("vae"))
    parts = {name: cls.from_single_file(single_file, config=folder, subfolder=name, dtype=dtype)
             for name, cls in classes.items()}
    if "vae" in parts:
        apply_padding(parts["vae"], padding_of(header[1]))
    return parts, checks


def _empty_model(cls, folder: str, subfolder: str):
    """The model `folder`'s config builds, without weights (for its parameter names and config)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls.from_config(cls.load_config(folder, subfolder=subfolder))


def prepare_video_pipeline(pipeline):
    """Ready to sample the distilled checkpoints as documented (config.VideoSampling).

    Their timesteps are used as given: a scheduler without dynamic or terminal shifting, which
    would otherwise bend them (and with dynamic shifting on, as in the 0.9.5 repo's scheduler
    config, LTXConditionPipeline's call, which passes no `mu`, fails); and one that starts at the
    first of them without looking it up (`FromFirstTimestep`).
    """
    from foresight.scheduler import FromFirstTimestep

    # Without shifting the timesteps and sigmas agree; its per-call warning that they may not is noise.
    logging.getLogger("diffusers.schedulers.scheduling_flow_match_euler_discrete").setLevel(logging.ERROR)
    pipeline.scheduler = FromFirstTimestep.from_config(
        pipeline.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class MissingHubFiles(RuntimeError):
    """The hub's repository has no file for a pattern a loader reads; the message says which, in words."""


def fetch(settings: Settings, model_id: str, *parts: str) -> str:
    """The folder to load `model_id` from: under `models_dir` (or a local path) as it is, else a
    snapshot of only the files `config.HUB_FILES` names for these parts, by pattern, downloaded once
    (what a Space preloaded is already there; the rest comes now, whatever the repository names
    it). A pattern no file matches is said in words (MissingHubFiles), before any loader fails on it."""
    path = resolve(settings, model_id)
    if settings.models_dir is not None or Path(path).exists():
        return path
    from huggingface_hub import snapshot_download

    patterns = [pattern for part in parts for pattern in HUB_FILES[part]]
    folder = snapshot_download(model_id, allow_patterns=patterns)
    names = [file.relative_to(folder).as_posix() for file in Path(folder).rglob("*") if file.is_file()]
    missing = [pattern for pattern in patterns if not fnmatch.filter(names, pattern)]
    if missing:
        raise MissingHubFiles(f"{model_id} on the Hugging Face hub has no file matching {', '.join(missing)}, "
                              f"which the loader reads; it has {len(names)} of the files asked for. Check the "
                              "repository's files, or point FORESIGHT_MODELS_DIR at a local copy.")
    return folder


def _local_single_file(settings: Settings, spec: str) -> str:
    """`owner/repo/file.safetensors`: the file under `models_dir`, else downloaded from the hub."""
    path = resolve(settings, spec)
    if Path(path).exists():
        return path
    from huggingface_hub import hf_hub_download

    from huggingface_hub.errors import RemoteEntryNotFoundError

    owner, repo, filename = spec.split("/", 2)
    try:
        return hf_hub_download(f"{owner}/{repo}", filename)
    except RemoteEntryNotFoundError as exc:  # the hub answered: no such file (not: the hub could not be reached)
        raise MissingHubFiles(f"{owner}/{repo} on the Hugging Face hub has no file {filename}, which the video "
                              "model (or its upscaler) is loaded from.") from exc
