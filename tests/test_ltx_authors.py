"""LTX-Video as its authors run it, checked against their own code (the `ltx-video` package, which
the README's test command installs without its dependencies; the app never imports it).

The tiny single file is written by the authors' model classes; their loaders and diffusers' read the
same file, and must compute the same thing. Their condition-image preparation is the reference
for ours. The load check refuses files that do not fit the configs they are loaded with.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from foresight import video as video_stage
from foresight.config import PRESETS, VideoSampling
from foresight.inputs import video_view
from foresight.ltx_checkpoint import CheckpointError
from foresight.models import load_video_pipeline
from foresight.profiles import tiny

from conftest import run_events


def single_file(models) -> str:
    return str(models.settings.models_dir / models.settings.model_ids.video_single_file)


def authors_models(path):
    """The transformer and VAE as the authors' inference.py loads them: from the file, built from its own config."""
    from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder
    from ltx_video.models.transformers.transformer3d import Transformer3DModel

    return Transformer3DModel.from_pretrained(path).eval(), CausalVideoAutoencoder.from_pretrained(path).eval()


# --- the tiny single file is the authors' ----------------------------------------------------------


def test_the_tiny_single_file_is_written_by_the_authors_classes_and_the_fallback_matches_it(models):
    with safe_open(single_file(models), framework="pt") as f:
        assert f.metadata()["tiny_writer"] == "ltx_video", "the suite's tiny file comes from the authors' classes"
        written = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        assert json.loads(f.metadata()["config"]) == {"transformer": tiny.AUTHORS_TRANSFORMER, "vae": tiny.AUTHORS_VAE}
    translated = tiny.translated_single_file(caption_channels=32)  # what the app writes without the package
    assert {key: tuple(value.shape) for key, value in translated.items()} == written


def test_the_authors_transformer_and_diffusers_give_the_same_velocity(models, photo):
    """On the same random weights, the inputs LTXConditionPipeline gives: the same output."""
    pipeline = models.video_pipeline
    transformer, _ = authors_models(single_file(models))
    shape = (3, 6, 8)  # latent frames, height, width: 17 frames at 192x256
    tokens = shape[0] * shape[1] * shape[2]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, tokens, 16, generator=generator)
    context, mask = video_stage.text_conditioning(models, "a red square slides to the right")
    sigma = torch.full((1, tokens), 0.9094)
    sigma[:, :shape[1] * shape[2]] = 0  # the condition frame
    coords = video_stage.transformer_coords(pipeline, 1, shape, fps=16)
    with torch.inference_mode():
        theirs = transformer(latents, indices_grid=coords, encoder_hidden_states=context, timestep=sigma,
                             encoder_attention_mask=mask, return_dict=False)[0]
        ours = pipeline.transformer(hidden_states=latents, encoder_hidden_states=context, timestep=sigma * 1000,
                                    encoder_attention_mask=mask, video_coords=coords, return_dict=False)[0]
    assert theirs.abs().mean() > 0.1
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=1e-5), (theirs - ours).abs().max()


def test_the_authors_vae_and_diffusers_encode_and_decode_alike(models):
    pipeline = models.video_pipeline
    _, vae = authors_models(single_file(models))
    latents = torch.randn(1, 16, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    clip = torch.rand(1, 3, 17, 192, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1
    timestep = torch.tensor([0.05])
    with torch.inference_mode():
        theirs = vae.decode(latents, return_dict=False, target_shape=(1, 3, 17, 192, 256), timestep=timestep)[0]
        ours = pipeline.vae.decode(latents, timestep, return_dict=False)[0]
        encoded_theirs = vae.encode(clip).latent_dist.mode()
        encoded_ours = pipeline.vae.encode(clip).latent_dist.mode()
    assert theirs.shape == ours.shape == (1, 3, 17, 192, 256) and theirs.abs().mean() > 0.1
    assert (theirs - ours).abs().max() < 1e-4
    assert (encoded_theirs - encoded_ours).abs().max() < 1e-3 * encoded_theirs.abs().max()


def test_the_final_decode_mixes_its_noise_in_as_the_authors_do(models):
    """Their pipeline mixes `decode_noise_scale` of noise into the normalized latents, then
    un-normalizes and decodes (`vae_decode`); diffusers' LTXConditionPipeline mixes it in after
    un-normalizing, which scales the noise by each channel's statistics. Ours, on the same noise."""
    from ltx_video.models.autoencoders.vae_encode import vae_decode

    pipeline, sampling = models.video_pipeline, VideoSampling()
    _, vae = authors_models(single_file(models))
    latents = torch.randn(1, 16, 3, 6, 8, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    scale, timestep = sampling.decode_noise_scale, torch.tensor([sampling.decode_timestep])
    with torch.inference_mode():
        ours = video_stage.decode_video(pipeline, latents, torch.Generator().manual_seed(5), sampling.decode_timestep,
                                        scale)
        theirs = vae_decode(latents * (1 - scale) + noise * scale, vae, is_video=True, vae_per_channel_normalize=True,
                            timestep=timestep)
        denormalized = pipeline._denormalize_latents(latents, pipeline.vae.latents_mean, pipeline.vae.latents_std)
        diffusers_way = pipeline.vae.decode(denormalized * (1 - scale) + noise * scale, timestep, return_dict=False)[0]
    theirs, diffusers_way = (((x[0] + 1) / 2).clamp(0, 1).permute(1, 0, 2, 3) for x in (theirs, diffusers_way))
    assert ours.shape == theirs.shape == (17, 3, 192, 256)
    assert (ours - theirs).abs().max() < 1e-4
    assert (diffusers_way - theirs).abs().max() > 1e-2, "the order shows in the frames"


def test_a_vae_padded_as_its_file_says_decodes_as_the_authors_vae_does(models, tmp_path):
    """diffusers' LTX VAE has no padding setting; the authors' loader pads as the file's config says."""
    path = tmp_path / "reflect.safetensors"
    rewrite(models, path, vae_config={"spatial_padding_mode": "reflect"})
    pipeline, checks = load_video_pipeline(settings_for(models, path), load_text_encoder=False)
    _, vae = authors_models(str(path))
    latents = torch.randn(1, 16, 2, 6, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        theirs = vae.decode(latents, return_dict=False, target_shape=(1, 3, 9, 192, 256),
                            timestep=torch.tensor([0.05]))[0]
        ours = pipeline.vae.decode(latents, torch.tensor([0.05]), return_dict=False)[0]
        zero_padded = models.video_pipeline.vae.decode(latents, torch.tensor([0.05]), return_dict=False)[0]
    assert (theirs - ours).abs().max() < 1e-4
    assert (theirs - zero_padded).abs().max() > 1e-2, "the padding changes the frames: the check would see a miss"
    assert {c.name: c.value for c in checks}["LTX VAE padding"] == "reflect"


# --- the load check -----------------------------------------------------------------------------


def settings_for(models, path):
    ids = dataclasses.replace(models.settings.model_ids, video_single_file=str(path))
    return dataclasses.replace(models.settings, model_ids=ids)


def rewrite(models, path, drop=(), add=None, transformer_config=None, vae_config=None):
    """A copy of the tiny single file with keys dropped or added, or its embedded config changed."""
    tensors = load_file(single_file(models))
    with safe_open(single_file(models), framework="pt") as f:
        metadata = dict(f.metadata())
    config = json.loads(metadata["config"])
    config["transformer"].update(transformer_config or {})
    config["vae"].update(vae_config or {})
    tensors = {k: v for k, v in tensors.items() if k not in drop} | (add or {})
    save_file(tensors, str(path), metadata={**metadata, "config": json.dumps(config)})


def test_the_shipped_file_passes_every_load_check(models):
    checks = {c.name: c for c in models.video_checks}
    assert list(checks) == ["LTX file type", "LTX file keys", "LTX file config", "LTX VAE padding", "LTX upscaler keys",
                           "LTX upscaler config"]
    assert all(c.ok for c in checks.values())
    assert "ltx-video-0.9.5" in checks["LTX file type"].value
    assert "all used, none missing" in checks["LTX file keys"].value


@pytest.mark.parametrize("change, message", [
    (dict(add={"model.diffusion_model.extra_block.weight": torch.zeros(4)}),
     "transformer keys unused: extra_block.weight"),
    (dict(drop=("vae.decoder.conv_in.conv.weight",)), "VAE keys missing: decoder.conv_in.conv.weight"),
    (dict(vae_config={"timestep_conditioning": False}), "VAE timestep_conditioning is False in the file, True as loaded"),
    (dict(transformer_config={"num_attention_heads": 4, "attention_head_dim": 4}),
     "transformer num_attention_heads is 4 in the file, 2 as loaded"),
    (dict(transformer_config={"causal_temporal_positioning": False}), "causal_temporal_positioning is False"),
], ids=["unused key", "missing key", "timestep conditioning", "head layout", "frame positions"])
def test_a_file_that_does_not_fit_its_configs_is_refused_with_what_differs(models, tmp_path, change, message):
    path = tmp_path / "changed.safetensors"
    rewrite(models, path, **change)
    with pytest.raises(CheckpointError, match="does not fit the configs") as refused:
        load_video_pipeline(settings_for(models, path), load_text_encoder=False)
    assert message in str(refused.value)


def test_a_file_of_another_family_is_refused(models, tmp_path):
    """diffusers tells a 0.9.7/0.9.8 13B file by its 48th block; its configs are another repo's."""
    path = tmp_path / "other.safetensors"
    rewrite(models, path, add={"model.diffusion_model.transformer_blocks.47.scale_shift_table": torch.zeros(6, 16)})
    with pytest.raises(CheckpointError, match="reads it as ltx-video-0.9.7"):
        load_video_pipeline(settings_for(models, path), load_text_encoder=False)


# --- the condition image --------------------------------------------------------------------------


@pytest.mark.parametrize("size, preset", [((320, 240), "fast"), ((700, 300), "default"), ((1000, 250), "fast")])
def test_the_condition_image_is_prepared_as_the_authors_prepare_it(photo, size, preset):
    """Crop, bicubic resize, blur and one H.264 frame at CRF 29: pixel for pixel what the authors'
    `load_image_to_tensor_with_resize_and_crop` hands their VAE (tolerance: none)."""
    from ltx_video.inference import load_image_to_tensor_with_resize_and_crop

    image = photo.resize(size)
    view = video_view(image, PRESETS[preset])
    ours = np.asarray(video_stage.prepare_condition(view, VideoSampling().condition_crf))
    theirs = load_image_to_tensor_with_resize_and_crop(image, view.height, view.width)[0, :, 0]
    theirs = ((theirs + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    assert np.abs(ours.astype(int) - np.asarray(view, dtype=int)).mean() > 1, "it is not the clean view"
    assert video_stage.prepare_condition(view, 0) is view


def test_the_pipeline_encodes_the_prepared_condition_not_the_clean_one(models, pipe, photo, tmp_path):
    seen = []
    hook = models.video_pipeline.vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        events = run_events(pipe, photo, mode="fused", seed=1, out_dir=tmp_path)
    finally:
        hook.remove()
    view = video_view(photo, PRESETS["fast"])
    prepared = np.asarray(video_stage.prepare_condition(view, VideoSampling().condition_crf))
    encoded = ((seen[0][0, :, 0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert events[-1]["video_url"] and len(seen) == 1
    assert np.abs(encoded.astype(int) - prepared).max() <= 1  # diffusers' own [-1, 1] scaling
    assert np.abs(encoded.astype(int) - np.asarray(view, dtype=int)).mean() > 1


# --- the authors' seven steps ------------------------------------------------------------------------


def test_the_eighth_step_of_diffusers_example_changes_the_video_negligibly(models, photo):
    """diffusers' example list ends with a step from 0.03 to 0 after the authors' seven. Added to the
    authors' seven, without condition noise (so that only the step differs), it moves the final
    latents by less than 1e-4 of their spread (3e-5 measured: docs/BENCHMARKS.md)."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    pipeline = models.video_pipeline
    embeds, mask = video_stage.text_conditioning(models, "a square slides")
    condition = video_stage.prepare_condition(video_view(photo, PRESETS["fast"]), 29)
    seven = VideoSampling().timesteps
    seven_latents, eight_latents = (pipeline(
        conditions=[LTXVideoCondition(image=condition, frame_index=0)], width=condition.width,
        height=condition.height, num_frames=17, timesteps=list(timesteps), guidance_scale=1.0,
        image_cond_noise_scale=0.0, prompt_embeds=embeds, prompt_attention_mask=mask, output_type="latent",
        generator=torch.Generator().manual_seed(0)).frames for timesteps in (seven, seven + (0.03,)))
    assert len(seven) == 7 and seven_latents.shape == eight_latents.shape and seven_latents.std() > 0.1
    assert 0 < (seven_latents - eight_latents).abs().max() < 1e-4 * seven_latents.std()


# --- the authors' two passes ---------------------------------------------------------------------------


def upscaler_file(models) -> str:
    return str(models.settings.models_dir / models.settings.model_ids.video_upscaler)


def test_the_tiny_upscaler_is_the_authors_file_and_diffusers_model_computes_what_theirs_does(models):
    """Their `LatentUpsampler.from_pretrained` and our load of the same file into diffusers'
    `LTXLatentUpsamplerModel`: the same output on the same latents."""
    from ltx_video.models.autoencoders.latent_upsampler import LatentUpsampler

    with safe_open(upscaler_file(models), framework="pt") as f:
        assert f.metadata()["tiny_writer"] == "ltx_video" and json.loads(f.metadata()["config"]) == tiny.AUTHORS_UPSCALER
    theirs = LatentUpsampler.from_pretrained(upscaler_file(models)).eval()
    latents = torch.randn(1, 16, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected, ours = theirs(latents), models.upscaler(latents)
    assert ours.shape == (1, 16, 3, 8, 10) and expected.abs().mean() > 0.1
    assert torch.allclose(expected, ours, atol=1e-5), (expected - ours).abs().max()
    checks = {c.name: c for c in models.video_checks}
    assert checks["LTX upscaler keys"].ok and "none missing" in checks["LTX upscaler keys"].value


def test_an_upscaler_that_does_not_fit_is_refused_with_what_differs(models, tmp_path):
    from foresight.upscaler import UpscalerError, load_upscaler

    tensors = load_file(upscaler_file(models))
    with safe_open(upscaler_file(models), framework="pt") as f:
        metadata = dict(f.metadata())
    path = tmp_path / "other.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("final_conv")}, str(path), metadata=metadata)
    with pytest.raises(UpscalerError, match="keys missing: final_conv"):
        load_upscaler(str(path), 16, torch.float32, "cpu")
    with pytest.raises(UpscalerError, match="takes 16 latent channels, the VAE makes 128"):
        load_upscaler(upscaler_file(models), 128, torch.float32, "cpu")


class RecordedPass:
    """The authors' `LTXVideoPipeline` as their two-pass pipeline calls it, recorded, not sampled:
    each call's arguments, and what it returns (random latents, or random frames)."""

    vae_scale_factor = 32

    def __init__(self, vae):
        self.vae, self.calls, self.made = vae, [], []

    def __call__(self, **kwargs):
        generator = torch.Generator().manual_seed(len(self.calls))
        height, width = kwargs["height"], kwargs["width"]
        made = torch.randn(1, 16, 4, height // 32, width // 32, generator=generator) * 0.7 + 0.2 \
            if kwargs["output_type"] == "latent" else torch.rand(1, 3, 25, height, width, generator=generator)
        self.calls.append(kwargs)
        self.made.append(made)
        from types import SimpleNamespace

        return SimpleNamespace(images=made.clone())


@pytest.mark.parametrize("width, height", [(288, 192), (512, 512), (736, 416)])
def test_the_two_passes_sizes_the_second_pass_start_and_the_frames_are_the_authors(models, width, height):
    """Their `LTXMultiScalePipeline.__call__`, its two video passes recorded: the size it asks of each
    pass, the latents it hands the second (their `_upsample_latents` with their VAE's statistics,
    then `adain_filter_latent`) and the frames it returns (resized with `F.interpolate`), against
    ours on the same first-pass latents and second-pass frames."""
    from ltx_video.models.autoencoders.latent_upsampler import LatentUpsampler
    from ltx_video.pipelines.pipeline_ltx_video import LTXMultiScalePipeline

    from foresight import passes

    _, vae = authors_models(single_file(models))
    recorded, sampling = RecordedPass(vae), VideoSampling()
    theirs = LTXMultiScalePipeline(recorded, LatentUpsampler.from_pretrained(upscaler_file(models)).eval())
    with torch.inference_mode():
        result = theirs(downscale_factor=sampling.downscale_factor, first_pass={"timesteps": list(sampling.timesteps)},
                        second_pass={"timesteps": list(sampling.second_pass_timesteps)}, width=width, height=height,
                        output_type="pt", generator=torch.Generator().manual_seed(0))
        ours = passes.upsample(models.video_pipeline, models.upscaler, recorded.made[0])
    first, second = recorded.calls
    assert [(c["width"], c["height"]) for c in recorded.calls] == list(passes.pass_sizes(width, height,
                                                                                        sampling.downscale_factor))
    assert second["timesteps"] == list(sampling.second_pass_timesteps) and first["output_type"] == "latent"
    assert second["generator"] is first["generator"], "one generator drawn on by both passes (tests/test_passes.py)"
    assert torch.allclose(second["latents"], ours, atol=1e-4), (second["latents"] - ours).abs().max()
    assert torch.allclose(ours.mean(dim=(2, 3, 4)), recorded.made[0].mean(dim=(2, 3, 4)), atol=1e-4), \
        "filtered toward the first pass's statistics"
    frames = passes.resized(recorded.made[1][0].permute(1, 0, 2, 3), (width, height)).permute(1, 0, 2, 3)[None]
    assert result.images.shape == frames.shape and torch.allclose(result.images, frames, atol=1e-6)


def test_a_pass_condition_is_resized_as_the_authors_resize_its_media(photo):
    from ltx_video.pipelines.pipeline_ltx_video import LTXVideoPipeline

    from foresight import passes

    view = video_view(photo, PRESETS["fast"])
    media = torch.from_numpy(np.array(view)).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
    expected = LTXVideoPipeline.resize_tensor(media, 96, 160)[0, :, 0]
    ours = torch.from_numpy(np.array(passes.condition_at((view,), (160, 96))[0])).permute(2, 0, 1).float() / 127.5 - 1
    assert (ours - expected).abs().max() <= 1 / 127.5, "within half a level of 8 bits"
    assert passes.condition_at((view,), view.size)[0] is view
