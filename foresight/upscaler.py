"""LTX's latent spatial upscaler, from the single file its authors publish, checked as it loads.

The authors' file (`ltxv-spatial-upscaler-0.9.8.safetensors`) holds their `LatentUpsampler`'s
weights and its config as metadata; their loader builds the model from that config
(`LatentUpsampler.from_config`, with its own defaults for what is not stated) and assigns every
weight (ltx_video/models/autoencoders/latent_upsampler.py). diffusers' `LTXLatentUpsamplerModel`
is the same network under the same names, but has no single-file loader: the file is read here as
the authors read it, into diffusers' class, and refused with what differs unless every key lands
in a parameter, every parameter gets one, and the model doubles the running VAE's latents in
space alone (what the second pass needs).
"""

from __future__ import annotations

import json

import torch

from foresight.ltx_checkpoint import Finding

# The authors' `LatentUpsampler.from_config` defaults, for what a file's config does not state.
AUTHORS_DEFAULTS = dict(in_channels=4, mid_channels=128, num_blocks_per_stage=4, dims=2, spatial_upsample=True,
                        temporal_upsample=False)


class UpscalerError(ValueError):
    """The upscaler file does not fit the models it is loaded with; the message says what differs."""


def load_upscaler(path: str, latent_channels: int, dtype: torch.dtype, device: str):
    """The upscaler at `path` for a VAE with `latent_channels` -> (LTXLatentUpsamplerModel, what the
    check found); UpscalerError when it does not fit."""
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        stated = json.loads((f.metadata() or {}).get("config", "{}"))
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    config = {key: stated.get(key, default) for key, default in AUTHORS_DEFAULTS.items()}
    model = LTXLatentUpsamplerModel(**config)
    expected = set(model.state_dict())
    unused, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    problems = [f"keys unused: {', '.join(unused[:5])}"] * bool(unused) + \
        [f"keys missing: {', '.join(missing[:5])}"] * bool(missing)
    if config["in_channels"] != latent_channels:
        problems.append(f"it takes {config['in_channels']} latent channels, the VAE makes {latent_channels}")
    if not config["spatial_upsample"] or config["temporal_upsample"]:
        problems.append("it does not double the latents in space alone")
    if problems:
        raise UpscalerError(f"The LTX upscaler {path} does not fit: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=True)
    findings = [Finding("LTX upscaler keys", f"{len(tensors)} keys, all used, none missing", True),
                Finding("LTX upscaler config", f"{config['in_channels']} latent channels, doubled in space, "
                                               f"{config['num_blocks_per_stage']} residual block(s) a stage, "
                                               f"{'stated in the file' if stated else 'the authors defaults'}", True)]
    return model.to(device=device, dtype=dtype).eval(), findings
