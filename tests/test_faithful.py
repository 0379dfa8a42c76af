"""Each model driven as its authors document it, checked through the real code paths on the tiny checkpoints.

These tests break when behaviour breaks: the wrong sampling schedule, the preset's frame shown to
Qwen, another layer (or zeros) fed to the bridge, an empty prompt given to T5, a wrong preview
formula, a tiny checkpoint that stops resembling the real one.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import PRESETS, VideoSampling
from foresight.events import decode_frame
from foresight.pipeline import PREDICTION_MAX_CHARS, ForesightPipeline

from conftest import frames_of, run_events, with_settings

# The LTX-Video authors' first pass for the 2B 0.9.8 distilled checkpoint (configs/ltxv-2b-0.9.8-distilled.yaml), x1000
DOCUMENTED_TIMESTEPS = [1000, 993.7, 987.5, 981.2, 975, 909.4, 725]


def transformer_calls(models):
    """Record the LTX transformer's keyword inputs at every call."""
    calls = []

    def keep(module, args, kwargs):
        calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    return calls, models.video_pipeline.transformer.register_forward_pre_hook(keep, with_kwargs=True)


# --- sampling ---------------------------------------------------------------------------------


def test_the_distilled_checkpoints_are_sampled_with_their_own_timesteps(models, pipe, photo, tmp_path):
    calls, hook = transformer_calls(models)
    try:
        events = run_events(pipe, photo, mode="fused", seed=1, out_dir=tmp_path)
    finally:
        hook.remove()
    assert "video_complete" in [ev["type"] for ev in events]
    assert list(VideoSampling().timesteps) == DOCUMENTED_TIMESTEPS
    per_step = [call["timestep"] for call in calls]
    assert [round(float(t.max()), 4) for t in per_step] == DOCUMENTED_TIMESTEPS  # used as given, not shifted
    assert all(t.shape[0] == 1 for t in per_step), "guidance 1: no unconditional batch"
    latent_frames = (PRESETS["fast"].num_frames - 1) // 8 + 1
    first_frame_tokens = per_step[0].shape[1] // latent_frames  # the first latent frame is the image
    assert all(float(t[0, :first_frame_tokens].max()) == 0 for t in per_step), "frame 0 is the clean condition"
    assert all(float(t[0, first_frame_tokens:].min()) == float(t.max()) for t in per_step)
    # the authors' condition noise (image_cond_noise_scale 0.15): the clean frame's latents, noised anew each step
    assert (VideoSampling().image_cond_noise_scale, VideoSampling().condition_crf) == (0.15, 29)
    frame_0 = [call["hidden_states"][0, :first_frame_tokens] for call in calls]
    assert all(not torch.equal(a, b) for a, b in zip(frame_0, frame_0[1:]))
    sigmas = models.video_pipeline.scheduler.sigmas.tolist()
    assert sigmas == pytest.approx([t / 1000 for t in DOCUMENTED_TIMESTEPS] + [0.0])


def test_guidance_above_one_runs_with_an_empty_prompt_or_zeros_as_the_unconditional(models, photo, tmp_path):
    from foresight.models import Models

    guided = with_settings(models, sampling=VideoSampling(guidance_scale=3.0))
    without_t5 = Models(**{**guided.__dict__, "video_pipeline": models.video_pipeline})
    for label, the_models in (("T5", guided), ("no T5", without_t5)):
        pipeline = the_models.video_pipeline
        encoder, tokenizer = pipeline.text_encoder, pipeline.tokenizer
        if label == "no T5":
            pipeline.text_encoder = pipeline.tokenizer = None
        calls, hook = transformer_calls(the_models)
        try:
            events = run_events(ForesightPipeline(the_models), photo, mode="fused", seed=1, out_dir=tmp_path)
        finally:
            hook.remove()
            pipeline.text_encoder, pipeline.tokenizer = encoder, tokenizer
        assert "video_complete" in [ev["type"] for ev in events], (label, events)
        context = calls[0]["encoder_hidden_states"]
        assert context.shape[0] == 2 and not torch.equal(context[0], context[1])
        if label == "no T5":
            assert not context[0].any(), "no T5 to encode an empty prompt: zeros"
        else:
            empty, _ = video_stage.text_conditioning(models, "", max_sequence_length=context.shape[1])
            assert torch.allclose(context[0], empty[0].to(context.dtype))


# --- what each model sees -----------------------------------------------------------------------


class VlmInputs:
    """What Qwen is given per run: the pixels and grid its vision tower sees, and the prompt's token ids."""

    def __init__(self, models):
        self.vision, self.prompts = [], []
        self.hooks = [models.vlm.model.visual.register_forward_pre_hook(self._vision, with_kwargs=True),
                      models.vlm.register_forward_pre_hook(self._prompt, with_kwargs=True)]

    def _vision(self, module, args, kwargs):
        self.vision.append({"pixel_values": args[0].detach().clone(), "image_grid_thw": kwargs["grid_thw"].clone()})

    def _prompt(self, module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # the prefill, not a decode step
            self.prompts.append(kwargs["input_ids"].detach().clone())

    def runs(self) -> list[dict]:
        return [{**vision, "input_ids": prompt} for vision, prompt in zip(self.vision, self.prompts, strict=True)]

    def remove(self):
        for hook in self.hooks:
            hook.remove()


def test_qwen_sees_the_upload_at_its_own_budget_whatever_the_preset(models, pipe, tmp_path):
    wide = Image.fromarray((np.random.default_rng(0).random((300, 700, 3)) * 255).astype(np.uint8))
    seen = VlmInputs(models)
    try:
        for preset in ("fast", "default"):
            run_events(pipe, wide, preset=preset, seed=1, out_dir=tmp_path, video=False)
    finally:
        seen.remove()
    fast, default = seen.runs()
    assert all(torch.equal(fast[k], default[k]) for k in fast)
    height, width = vlm_stage_view_size(models, wide)
    assert fast["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    assert height * width <= models.settings.vlm_max_pixels and width > height  # its own budget, its aspect


def test_qwen_vision_tower_run_outside_generate_gives_generates_own_result(models, photo):
    """`encode_image` lays out the tower's windows on the CPU: the states, the tokens and the text
    must be exactly those of `generate` given the pixels, on an image of many windows."""
    import threading

    wide = with_settings(models, vlm_max_pixels=448 * 448)
    inputs = vlm_stage.build_inputs(wide, photo.resize((640, 480)), "")
    vision = models.vlm.config.vision_config
    window = vision.window_size // vision.patch_size
    assert inputs["image_grid_thw"][0, 1:].prod() // window**2 >= 16, "many windows"
    with torch.inference_mode():
        own = models.vlm(**inputs, output_hidden_states=True).hidden_states
        ours = models.vlm(**vlm_stage.encode_image(wide, inputs), output_hidden_states=True).hidden_states
        ids = models.vlm.generate(**inputs, max_new_tokens=16)[0, inputs["input_ids"].shape[1]:]
    assert len(own) == len(ours) and all(torch.equal(a, b) for a, b in zip(own, ours))
    texts = []
    vlm_stage.stream_reasoning(wide, inputs, texts.append, threading.Event(), max_new_tokens=16)
    assert "".join(texts) == models.vlm_processor.tokenizer.decode(ids, skip_special_tokens=True) != ""


def test_qwen_vision_tower_uses_the_layout_handed_in_instead_of_working_it_out(models, photo, monkeypatch):
    """Unknown `image_*` names would be passed on and ignored, the tower silently working out its
    own layout (on a GPU, with its syncs): every layout function must find its value handed in."""
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

    worked_out = []
    for name, keys in (("get_vision_position_ids", ["position_ids"]), ("get_vision_attention_seqlens", ["cu_seqlens"]),
                       ("get_vision_window_index", ["window_index", "cu_window_seqlens"])):
        def probe(*args, _layout=getattr(qwen, name), _name=name, _keys=keys, **kwargs):
            if not all(key in kwargs["kwargs"] for key in _keys):
                worked_out.append(_name)
            return _layout(*args, **kwargs)
        monkeypatch.setattr(qwen, name, probe)
    inputs = vlm_stage.build_inputs(models, photo, "")
    with torch.inference_mode():
        models.vlm(**inputs)
        assert len(worked_out) == 3, "the probe sees the tower work its layout out when given pixels"
        worked_out.clear()
        models.vlm(**vlm_stage.encode_image(models, inputs))
    assert worked_out == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device syncs exist only on a GPU")
def test_qwen_vision_tower_waits_for_the_gpu_once_not_at_every_layer(models, photo):
    from foresight.syncs import device_syncs

    if not models.settings.device.startswith("cuda"):
        pytest.skip("the models are on the CPU")
    inputs = vlm_stage.build_inputs(with_settings(models, vlm_max_pixels=448 * 448), photo, "")
    with torch.inference_mode():
        ours = sum(device_syncs(lambda: vlm_stage.encode_image(models, inputs)).values())
        own = sum(device_syncs(lambda: models.vlm.model.get_image_features(inputs["pixel_values"],
                                                                           inputs["image_grid_thw"])).values())
    assert ours <= 1 and own >= 3 * models.vlm.config.vision_config.depth, (ours, own)


def vlm_stage_view_size(models, image):
    view = vlm_stage.vlm_view(image, models.settings.vlm_min_pixels, models.settings.vlm_max_pixels)
    return view.height, view.width


def test_serving_and_training_give_qwen_the_same_inputs(models, pipe, photo, tmp_path):
    from foresight.data import Item, item_features

    photo.save(tmp_path / "one.png")
    seen = VlmInputs(models)
    try:
        run_events(pipe, tmp_path / "one.png", preset="default", seed=1, out_dir=tmp_path, video=False)
        item_features(models, Item(tmp_path / "one.png", caption="the red square slides right"), "distill",
                      models_preset(), num_tokens=8)
    finally:
        seen.remove()
    serving, training = seen.runs()
    assert all(torch.equal(serving[k], training[k]) for k in serving)


def models_preset():
    from foresight.config import PRESETS

    return PRESETS["fast"]


@pytest.mark.parametrize("layer", [-3, -2])
def test_the_bridge_reads_the_configured_layer_of_this_runs_prefill_and_dinov2(models, photo, tmp_path, layer):
    the_models = with_settings(models, hidden_layer=layer)
    got = {}

    def keep(module, args):
        got["vision"], got["states"] = args[0].detach().clone(), args[1].detach().clone()

    hook = models.bridge.register_forward_pre_hook(keep)
    try:
        events = run_events(ForesightPipeline(the_models), photo, mode="fused", seed=1, out_dir=tmp_path)
    finally:
        hook.remove()
    assert events[-1]["video_url"]
    inputs = vlm_stage.build_inputs(models, photo, "")
    with torch.inference_mode():
        hidden = models.vlm(**inputs, output_hidden_states=True).hidden_states[layer]
        patches = video_stage.vision_tokens(models, photo)
    assert got["states"].shape == hidden.shape and torch.allclose(got["states"], hidden.float(), atol=1e-5)
    assert torch.allclose(got["vision"], patches.float(), atol=1e-5)


def test_fused_conditioning_changes_with_the_vlm_states_and_with_the_image(models, photo):
    inputs = vlm_stage.build_inputs(models, photo, "")
    states = vlm_stage.prefill_states(models, inputs)
    patches = video_stage.vision_tokens(models, photo)
    base, _ = video_stage.fused_conditioning(models, patches, states)
    other_states, _ = video_stage.fused_conditioning(models, patches, states + torch.randn_like(states))
    turned = video_stage.vision_tokens(models, photo.rotate(90, expand=True))
    other_image, _ = video_stage.fused_conditioning(models, turned, states)
    assert not torch.allclose(base, other_states, atol=1e-4)
    assert not torch.allclose(base, other_image, atol=1e-4)


def t5_inputs(models):
    seen = []

    def keep(module, args, kwargs):
        seen.append((args[0] if args else kwargs["input_ids"]).detach().clone())

    return seen, models.video_pipeline.text_encoder.register_forward_pre_hook(keep, with_kwargs=True)


def tokens_of(models, text):
    tokenizer = models.video_pipeline.tokenizer
    return tokenizer(text, padding="max_length", max_length=models.settings.sampling.max_sequence_length,
                     truncation=True, add_special_tokens=True, return_tensors="pt").input_ids


def test_text_mode_hands_the_prediction_line_to_t5(models, pipe, photo, tmp_path):
    text = "Next: the red square slides to the right.\nBecause it sits on a slope."
    seen, hook = t5_inputs(models)
    try:
        retry = run_events(pipe, photo, mode="text", seed=1, out_dir=tmp_path, reasoning=text)
        live = run_events(pipe, photo, mode="text", seed=1, out_dir=tmp_path)
    finally:
        hook.remove()
    assert retry[-1]["prediction"] == "the red square slides to the right."
    assert torch.equal(seen[0], tokens_of(models, "the red square slides to the right."))
    prediction = live[-1]["prediction"]
    expected = (vlm_stage.prediction_line(live[-1]["text"] + "\n") or live[-1]["text"].strip())[:PREDICTION_MAX_CHARS]
    assert prediction and prediction == expected
    assert torch.equal(seen[1], tokens_of(models, prediction))
    assert not torch.equal(seen[1], tokens_of(models, ""))


# --- previews -----------------------------------------------------------------------------------


def test_the_denoising_estimate_is_what_the_scheduler_steps_towards(models, photo):
    """x0 = x_t - sigma * v, checked against the scheduler's own Euler step at every step."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    pipeline = models.video_pipeline
    estimate = video_stage.DenoisingEstimate(pipeline, guidance_scale=1.0)
    inputs, steps = [], []
    hook = pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append((kwargs["hidden_states"].float(), kwargs["timestep"].float())),
        with_kwargs=True)

    def on_step_end(pipe, step, timestep, callback_kwargs):
        steps.append((estimate.x0.clone(), callback_kwargs["latents"].float().clone()))
        return {}

    embeds, mask = video_stage.text_conditioning(models, "a square slides")
    image = photo.resize((256, 192))
    try:
        pipeline(conditions=[LTXVideoCondition(image=image, frame_index=0)], width=256, height=192, num_frames=17,
                 timesteps=DOCUMENTED_TIMESTEPS, guidance_scale=1.0, image_cond_noise_scale=0.0,
                 prompt_embeds=embeds, prompt_attention_mask=mask, output_type="latent",
                 generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step_end)
    finally:
        hook.remove()
        estimate.remove()
    sigmas = [t / 1000 for t in DOCUMENTED_TIMESTEPS] + [0.0]
    for k, ((x0, after), (x_t, timestep)) in enumerate(zip(steps, inputs)):
        noised = timestep[0] > 0  # the condition frame's tokens stay as they are
        velocity = (after - x_t)[:, noised] / (sigmas[k + 1] - sigmas[k])
        assert torch.allclose(x0[:, noised], x_t[:, noised] - sigmas[k] * velocity, atol=1e-3), k
        assert torch.equal(x0[:, ~noised], x_t[:, ~noised])


@pytest.mark.parametrize("timesteps", [DOCUMENTED_TIMESTEPS, [1000, 909, 725]], ids=["documented", "ends-at-725"])
def test_the_last_preview_matches_the_final_frame(models, photo, tmp_path, timesteps):
    """The whole estimate at the last step is the final latents: its preview is the video's last
    frame, up to the decode noise LTX adds to the final decode. On a schedule that ends at
    sigma 0.725 a wrong estimate (say x_t + sigma * v) would show."""
    exact = with_settings(models, preview_decode="whole",
                          sampling=VideoSampling(timesteps=tuple(timesteps)))
    events = run_events(ForesightPipeline(exact), photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True)
    previews = [ev for ev in events if ev["type"] == "video_frame" and ev["kind"] == "preview"]
    assert previews[-1]["step"] == len(timesteps) - 1, "the cadence keeps the last step"
    last_preview = np.asarray(decode_frame(previews[-1]), dtype=np.int16)
    final, first = frames_of(events)[-1], frames_of(events)[0]
    assert np.abs(last_preview - final).mean() < 0.25 * np.abs(first - final).mean()
    assert np.abs(last_preview - final).mean() < 6  # the decode noise, scaled per channel as the authors scale it


@pytest.mark.parametrize("whole", [False, True], ids=["ends", "whole"])
def test_a_preview_decodes_the_estimate_in_a_layout_the_vae_was_trained_on(models, whole):
    """The causal VAE reads a first latent frame as one picture and each later one as eight: a
    preview decodes the estimate's first and last latent frames together ("ends"), or all of them,
    and shows the last picture; never a later latent frame alone."""
    pipeline = models.video_pipeline
    latents = torch.randn(1, 16, 5, 6, 8)  # 33 frames, 192x256
    packed = pipeline._pack_latents(latents, 1, 1)
    preview = video_stage.decode_estimate(pipeline, packed, (5, 6, 8), 0.05, whole=whole)
    vae = pipeline.vae
    chosen = latents if whole else latents[:, :, [0, 4]]
    with torch.inference_mode():
        pixels = vae.decode(pipeline._denormalize_latents(chosen, vae.latents_mean, vae.latents_std),
                            torch.tensor([0.05]), return_dict=False)[0]
    assert pixels.shape[2] == (33 if whole else 9)
    expected = video_stage.to_uint8((pixels[0, :, -1] + 1) / 2).permute(1, 2, 0)
    assert preview.shape == (192, 256, 3) and torch.equal(preview, expected)


def test_a_preview_shows_the_clips_last_frame_at_the_videos_size(pipe, photo, tmp_path):
    events = run_events(pipe, photo, seed=2, out_dir=tmp_path)
    start = events[0]
    previews = [ev for ev in events if ev["type"] == "video_frame" and ev["kind"] == "preview"]
    assert all(decode_frame(ev).size == (start["width"], start["height"]) for ev in previews)
    assert all(ev["frame_index"] == start["num_frames"] - 1 for ev in previews)
    assert len({Path(ev["path"]).read_bytes() for ev in previews}) > 1, "the estimate changes step by step"


def test_previews_follow_the_cadence_and_keep_the_last_step(models, photo, tmp_path):
    events = run_events(ForesightPipeline(with_settings(models, preview_every=3)), photo, seed=2, out_dir=tmp_path)
    assert [ev["step"] for ev in events if ev["type"] == "video_frame"] == [0, 3, 6]
    events = run_events(ForesightPipeline(with_settings(models, preview_every=0)), photo, seed=2, out_dir=tmp_path)
    assert "video_frame" not in [ev["type"] for ev in events] and events[-1]["video_url"]


# --- the tiny checkpoints resemble the real ones ---------------------------------------------------


def test_the_tiny_qwen_ships_the_real_chat_template_and_generation_config(models):
    folder = models.settings.models_dir / models.settings.model_ids.vlm
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    # Qwen2.5-VL-7B-Instruct's chat_template.json, as published on the hub
    assert hashlib.sha256(template.encode()).hexdigest() == \
        "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"
    assert models.vlm_processor.chat_template == template
    config = models.vlm.generation_config
    assert (config.do_sample, config.top_k, config.top_p, config.temperature, config.repetition_penalty) == \
        (True, 1, 0.001, 0.1, 1.05)
    text = models.vlm_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n")


def test_the_transformer_and_the_vae_come_from_the_single_file(models):
    from diffusers.loaders.single_file_utils import (
        convert_ltx_transformer_checkpoint_to_diffusers, convert_ltx_vae_checkpoint_to_diffusers,
    )
    from safetensors.torch import load_file

    settings = models.settings
    single_file = load_file(str(settings.models_dir / settings.model_ids.video_single_file))
    assert any(k.startswith("vae.decoder.up_blocks.") for k in single_file)  # LTX's own key names
    vae = convert_ltx_vae_checkpoint_to_diffusers(dict(single_file))
    transformer = convert_ltx_transformer_checkpoint_to_diffusers(
        {k: v for k, v in single_file.items() if not k.startswith("vae.")})
    pipeline = models.video_pipeline
    loaded_vae, loaded_transformer = pipeline.vae.state_dict(), pipeline.transformer.state_dict()
    assert set(vae) == set(loaded_vae) and all(torch.equal(vae[k], loaded_vae[k].float()) for k in vae)
    assert all(torch.equal(transformer[k], loaded_transformer[k].float()) for k in transformer)
    folder_vae = load_file(str(settings.models_dir / settings.model_ids.video / "vae" /
                               "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(folder_vae["decoder.conv_in.conv.weight"], vae["decoder.conv_in.conv.weight"])


# --- diffusers' private helpers this project relies on ----------------------------------------------


def test_the_private_diffusers_helpers_we_use_still_behave(models, photo, tmp_path):
    """video.py and train.py call LTXConditionPipeline's static helpers; they must keep doing this."""
    pipeline = models.video_pipeline
    latents = torch.randn(1, 16, 3, 6, 8)
    packed = pipeline._pack_latents(latents, 1, 1)
    assert packed.shape == (1, 3 * 6 * 8, 16)
    assert torch.equal(pipeline._unpack_latents(packed, 3, 6, 8, 1, 1), latents)
    vae = pipeline.vae
    normal = pipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std)
    assert torch.allclose(pipeline._denormalize_latents(normal, vae.latents_mean, vae.latents_std), latents, atol=1e-5)
    calls, hook = transformer_calls(models)
    try:
        events = run_events(ForesightPipeline(models), photo, mode="fused", seed=1, out_dir=tmp_path)
    finally:
        hook.remove()
    start = events[0]
    shape = video_stage.latent_shape(pipeline, start["num_frames"], start["height"], start["width"])
    assert torch.equal(calls[0]["video_coords"], video_stage.transformer_coords(pipeline, 1, shape, start["fps"]))
