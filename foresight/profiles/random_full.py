"""The `random-full` profile: the real architectures at full size with random weights, for timing.

Timing does not depend on weight values, and 30 GB of random checkpoints would take longer to
write than a benchmark takes to run, so the models are built in memory from their real configs.
The small files (tokenizers, processors, scheduler) come from the tiny profile's folders, which
have the real layouts. The VLM stands in with the tiny tokenizer, and must decode exactly
`max_new_tokens` tokens it can show (`build_vlm` says how).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable

import torch

from foresight.bridge import Bridge, BridgeConfig
from foresight.config import Settings, base_models
from foresight.models import Models, needs_text_encoder, prepare_video_pipeline, torch_dtype
from foresight.profiles.tiny import IDS, QWEN_GENERATION, ensure_tiny_models

# Qwen2.5-VL-7B-Instruct's config.json
QWEN_7B_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
)
QWEN_7B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
# facebook/dinov2-large
DINOV2_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=518,
                    patch_size=14)
# google/t5-v1_1-xxl encoder, LTX's text encoder
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
# LTX-Video 0.9.5 VAE (shared by the 2B 0.9.5+ checkpoints); the transformer's defaults are the 2B model.
LTX_095_VAE = dict(
    latent_channels=128, block_out_channels=(128, 256, 512, 1024, 2048),
    down_block_types=("LTXVideo095DownBlock3D",) * 4,
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    layers_per_block=(4, 6, 6, 2, 2), spatio_temporal_scaling=(True, True, True, True),
    decoder_block_out_channels=(256, 512, 1024), decoder_layers_per_block=(5, 5, 5, 5),
    decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False, False, False, False),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
    patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    spatial_compression_ratio=32, temporal_compression_ratio=8,
)


@contextlib.contextmanager
def _building(device: str, dtype: torch.dtype):
    """Create parameters directly on `device` in `dtype` (no float32 copy of 14B parameters first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_vlm(tokenizer, device: str, dtype: torch.dtype, text: dict = QWEN_7B_TEXT, vision: dict = QWEN_7B_VISION):
    """Qwen2.5-VL at `text`/`vision` sizes with random weights and the real checkpoint's generation config.

    The stand-in tokenizer knows a few hundred of the 152k ids, so the lm_head rows of every other
    id, and of the end tokens, are zeroed: their logits are exactly 0 while the known ids' random
    logits have a positive maximum, so greedy-in-effect decoding never picks them. (Not
    `suppress_tokens`: a 150k-id list there costs every `generate` call a deep copy and every token
    a vocabulary-wide `isin`, time the real checkpoint never spends; docs/PITFALLS.md.)
    """
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    token_id = tokenizer.convert_tokens_to_ids
    ends = [token_id("<|im_end|>"), token_id("<|endoftext|>")]
    config = Qwen2_5_VLConfig(
        text_config=dict(text, eos_token_id=ends[0], pad_token_id=ends[1]),
        vision_config=vision,
        image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"),
    )
    with _building(device, dtype):
        vlm = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    if device != "meta":
        unshowable = torch.ones(text["vocab_size"], dtype=torch.bool, device=device)
        unshowable[:len(tokenizer)] = False
        unshowable[ends] = True
        with torch.no_grad():
            vlm.lm_head.weight[unshowable] = 0
    vlm.generation_config = GenerationConfig(bos_token_id=ends[1], pad_token_id=ends[1], eos_token_id=ends,
                                             **QWEN_GENERATION)
    return vlm


def settings(base: Settings) -> Settings:
    """A random VLM never writes a prediction line: in `text` mode the video starts after 42 tokens,
    about the length of a real first line (`vlm.PREDICTION_WORDS` words and 'Next:'), so that mode's
    timeline is realistic."""
    return replace(base, prediction_max_tokens=42)


def build_video_pipeline(tiny_folder, settings: Settings, load_text_encoder: bool):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXConditionPipeline, \
        LTXVideoTransformer3DModel
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    with _building(settings.device, torch_dtype(settings)):
        transformer = LTXVideoTransformer3DModel().eval()
        vae = AutoencoderKLLTXVideo(**LTX_095_VAE).eval()
        text_encoder = T5EncoderModel(T5Config(**T5_XXL)).eval() if load_text_encoder else None
    pipeline = LTXConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_folder, subfolder="scheduler"),
        vae=vae, transformer=transformer, text_encoder=text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(tiny_folder, subfolder="tokenizer") if load_text_encoder else None,
    )
    return prepare_video_pipeline(pipeline)


def build_models(settings: Settings, log: Callable[[str], None] = print, load_text_encoder: bool | None = None):
    """Every model at full size with random weights (the bridge too), on the settings' device."""
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import AutoImageProcessor, AutoProcessor, Dinov2Config, Dinov2Model

    folder, _ = ensure_tiny_models()
    ids = IDS  # the small files live under the tiny profile's (default) ids, whatever ids are configured
    device, dtype = settings.device, torch_dtype(settings)
    log("[foresight] random-full: building the full-size architectures with random weights")
    vlm_processor = AutoProcessor.from_pretrained(folder / ids.vlm)
    vlm = build_vlm(vlm_processor.tokenizer, device, dtype)
    with _building(device, dtype):
        vision = Dinov2Model(Dinov2Config(**DINOV2_LARGE)).eval()
        bridge = Bridge(BridgeConfig(base_models=base_models(settings))).eval()
    video_pipeline = build_video_pipeline(folder / ids.video, settings,
                                          needs_text_encoder(settings, True, load_text_encoder))
    with _building(device, dtype):  # the authors' 0.9.8 upscaler: 128 latent channels, 512 wide, 4 blocks a stage
        upscaler = LTXLatentUpsamplerModel(in_channels=128, mid_channels=512, num_blocks_per_stage=4, dims=3).eval()
    return Models(vlm_processor, vlm, AutoImageProcessor.from_pretrained(folder / ids.vision), vision,
                  video_pipeline, bridge, "random full-size bridge (random-full profile)", settings, upscaler=upscaler)
