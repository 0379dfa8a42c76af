"""The LTX single file checked against what diffusers made of it, as it loads.

diffusers reads an original-format LTX checkpoint (`from_single_file`) by renaming its keys
(`convert_ltx_*_checkpoint_to_diffusers`) into models built from another repo's configs
(`Lightricks/LTX-Video-0.9.5`). A wrong shape raises; but a key it does not use only logs a
warning, a key it lacks leaves a parameter unloaded, and the file's own config (its metadata, what
LTX's authors' loaders build their models from) is never read. `verify` checks the three and says
what it found; anything that changes the model is refused with what differs. The one setting the
file may carry that diffusers' LTX VAE has no config for, its spatial padding, is applied to the
loaded VAE as the authors' loader would (`apply_padding`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

# The authors' transformer config key -> diffusers' LTXVideoTransformer3DModel config key.
TRANSFORMER_FIELDS = {
    "in_channels": "in_channels", "out_channels": "out_channels", "num_layers": "num_layers",
    "num_attention_heads": "num_attention_heads", "attention_head_dim": "attention_head_dim",
    "cross_attention_dim": "cross_attention_dim", "caption_channels": "caption_channels",
    "activation_fn": "activation_fn", "attention_bias": "attention_bias",
    "norm_elementwise_affine": "norm_elementwise_affine", "norm_eps": "norm_eps",
}
# What diffusers' LTX transformer and LTXConditionPipeline always do, in the authors' terms
# (transformer_ltx.py: RMS norms, q/k RMS-normed across heads, RoPE over (20, 2048, 2048) with theta
# 10000, timesteps x 1000; pipeline_ltx_condition.py `_scale_video_ids`: the causal frame positions).
TRANSFORMER_FIXED = {
    "qk_norm": "rms_norm", "standardization_norm": "rms_norm", "positional_embedding_type": "rope",
    "positional_embedding_theta": 10000.0, "positional_embedding_max_pos": [20, 2048, 2048],
    "timestep_scale_multiplier": 1000, "adaptive_norm": "single_scale_shift", "causal_temporal_positioning": True,
}
# The authors' VAE config key -> diffusers' AutoencoderKLLTXVideo config key.
VAE_FIELDS = {
    "in_channels": "in_channels", "out_channels": "out_channels", "latent_channels": "latent_channels",
    "patch_size": "patch_size", "timestep_conditioning": "timestep_conditioning", "causal_decoder": "decoder_causal",
    "scaling_factor": "scaling_factor",
}
# What diffusers' LTX VAE always is (autoencoder_kl_ltx.py): 3-D, pixel (RMS) norms, one shared log-variance
# channel, no quant conv, no latent normalisation layer.
VAE_FIXED = {"dims": 3, "norm_layer": "pixel_norm", "latent_log_var": "uniform", "use_quant_conv": False,
             "normalize_latent_channels": False}
DEFAULT_PADDING = "zeros"  # the authors' loader's default when the file's config does not say


class CheckpointError(ValueError):
    """The single file does not fit the configs it is loaded with; the message says what differs."""


@dataclass(frozen=True)
class Finding:
    name: str
    value: str
    ok: bool


class _Shape:
    """A tensor's stand-in for diffusers' detection and key renaming, which read keys and shapes only."""

    def __init__(self, shape):
        self.shape = torch.Size(shape)


def read_header(path: str) -> tuple[dict[str, _Shape], dict]:
    """The file's keys with their shapes, and its embedded config ({} when it has none); no tensor is read."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        shapes = {key: _Shape(f.get_slice(key).get_shape()) for key in f.keys()}
        metadata = f.metadata() or {}
    return shapes, json.loads(metadata.get("config", "{}"))


def verify(path: str, header: tuple[dict, dict], config_repo: str, transformer, vae=None) -> list[Finding]:
    """Check the loaded `transformer` (and `vae`, when the file holds one) against the file at `path`,
    whose `read_header` is given; raise CheckpointError on anything that changes the model, else
    return what was found."""
    shapes, file_config = header
    findings = [_model_type(shapes, config_repo), _keys(shapes, transformer, vae)]
    findings.append(_config(file_config, transformer.config, vae.config if vae is not None else None))
    if vae is not None:
        findings.append(Finding("LTX VAE padding", padding_of(file_config) + (
            "" if "spatial_padding_mode" in file_config.get("vae", {}) else " (the file does not say: the "
                                                                            "authors' default)"), True))
    failed = [finding for finding in findings if not finding.ok]
    if failed:
        raise CheckpointError(f"The LTX checkpoint {path} does not fit the configs it is loaded with "
                              f"({config_repo}): " + "; ".join(f"{f.name}: {f.value}" for f in failed))
    return findings


def _model_type(shapes: dict, config_repo: str) -> Finding:
    """diffusers' own detection, and the repo whose configs it would pick for such a file."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    detected = infer_diffusers_model_type(dict(shapes))
    its_repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS.get(detected, {}).get("pretrained_model_name_or_path")
    known = {path["pretrained_model_name_or_path"] for path in DIFFUSERS_DEFAULT_PIPELINE_PATHS.values()}
    ok = its_repo == config_repo or config_repo not in known  # configs of a repo diffusers has no type for: no claim
    return Finding("LTX file type", f"diffusers reads it as {detected} (its configs: {its_repo}; loaded with "
                                    f"{config_repo})", ok)


def _keys(shapes: dict, transformer, vae) -> Finding:
    """Every key the file holds lands in a parameter, and every parameter gets one."""
    from diffusers.loaders.single_file_utils import (
        convert_ltx_transformer_checkpoint_to_diffusers, convert_ltx_vae_checkpoint_to_diffusers,
    )

    parts = [("transformer", convert_ltx_transformer_checkpoint_to_diffusers, transformer)]
    if vae is not None:
        parts.append(("VAE", convert_ltx_vae_checkpoint_to_diffusers, vae))
    problems, counts, renamed_total = [], [], 0
    for label, convert, model in parts:
        renamed, expected = set(convert(dict(shapes))), set(model.state_dict())
        unused, missing = sorted(renamed - expected), sorted(expected - renamed)
        problems += [f"{label} keys unused: {_few(unused)}"] * bool(unused)
        problems += [f"{label} keys missing: {_few(missing)}"] * bool(missing)
        counts.append(f"{len(renamed & expected)} {label}")
        renamed_total += len(renamed)
    dropped = len(shapes) - renamed_total  # removed by diffusers' renaming rules (statistics it does not read)
    value = "; ".join(problems) or (f"{' + '.join(counts)} keys, all used, none missing"
                                    + (f" ({dropped} per-channel statistics diffusers does not read)" if dropped else ""))
    return Finding("LTX file keys", value, not problems)


def _config(file_config: dict, transformer_config, vae_config) -> Finding:
    """The file's own config against what diffusers built: only what the file states is compared."""
    if not file_config:
        return Finding("LTX file config", "the file carries no config to compare", True)
    parts = [("transformer", file_config.get("transformer", {}), transformer_config, TRANSFORMER_FIELDS,
              TRANSFORMER_FIXED)]
    if vae_config is not None:
        parts.append(("VAE", file_config.get("vae", {}), vae_config, VAE_FIELDS, VAE_FIXED))
    differs, agreed = [], 0
    for label, stated, built, fields, fixed in parts:
        expected = {**{key: built[name] for key, name in fields.items()}, **fixed}
        for key, value in expected.items():
            if key not in stated:
                continue
            if _same(stated[key], value):
                agreed += 1
            else:
                differs.append(f"{label} {key} is {stated[key]!r} in the file, {value!r} as loaded")
    if vae_config is not None and padding_of(file_config) not in ("zeros", "reflect", "replicate", "circular"):
        differs.append(f"VAE spatial_padding_mode {padding_of(file_config)!r} is no padding torch has")
    return Finding("LTX file config", "; ".join(differs) or f"{agreed} settings stated in the file agree with "
                                                           "the configs it is loaded with", not differs)


def padding_of(file_config: dict) -> str:
    return file_config.get("vae", {}).get("spatial_padding_mode", DEFAULT_PADDING)


def apply_padding(vae, mode: str) -> None:
    """Pad every causal convolution of diffusers' LTX VAE spatially as `mode` says: the authors'
    CausalConv3d is a Conv3d with the file's `spatial_padding_mode` and the same spatial padding."""
    from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d

    for module in vae.modules():
        if isinstance(module, LTXVideoCausalConv3d):
            module.conv.padding_mode = mode


def _same(stated, value) -> bool:
    if isinstance(value, (list, tuple)):
        return list(stated) == list(value)
    if isinstance(value, float):
        return isinstance(stated, (int, float)) and abs(stated - value) <= 1e-9 * max(1.0, abs(value))
    return stated == value


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
