"""The `tiny` profile: tiny random-weight checkpoints in the real repos' on-disk layouts.

Nothing can be downloaded where the tests run, so this module *writes* miniature versions of
the four models (config, safetensors, tokenizer trained offline, processor files, a diffusers
pipeline folder, and LTX's single-file transformer checkpoint) under folders named like the hub
ids. The app then loads them through exactly the loaders it uses for the real models.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from foresight.config import ModelIds, Settings, base_models, cache_dir

TINY_VERSION = 10  # bump when the layouts below change, so stale caches are rebuilt
IDS = ModelIds()

# Qwen's special tokens, in the real tokenizer's order.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2.5-VL-7B-Instruct's chat template, as its hub repo ships it in chat_template.json (the one
# the processor reads; tokenizer_config.json holds the text-only tool-calling template instead).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# Its generation_config.json: sampling with top_k 1 (greedy in effect) and a repetition penalty.
QWEN_GENERATION = dict(do_sample=True, top_k=1, top_p=0.001, temperature=0.1, repetition_penalty=1.05)

_CORPUS = [
    "Next: the ball rolls off the table and falls to the floor.",
    "The person will turn around and walk toward the door while the light changes.",
    "Look at the image and predict what happens in the next few seconds.",
    "The waves move toward the shore; a bird flies across the sky; the car drives away.",
    "First, the cup tips over. Then water spreads over the wooden surface.",
]


TINY_BRIDGE = dict(vision_dim=32, vlm_dim=64, caption_dim=32, fusion_dim=32, fusion_layers=1, fusion_heads=2,
                   adapter_dim=32, adapter_layers=1, adapter_heads=2, num_tokens=8)


def settings(base: Settings) -> Settings:
    """Every loader pointed at the tiny checkpoints (written on first use), with small budgets."""
    models_dir, weights_dir = ensure_tiny_models()
    return replace(
        base,
        model_ids=ModelIds(),  # the tiny checkpoints exist under the default ids only
        models_dir=models_dir,
        weights_dir=weights_dir,
        bridge_layout=TINY_BRIDGE,
        max_new_tokens=48,
        vlm_max_pixels=56 * 56,
        vlm_min_pixels=28 * 28,
    )


def tiny_models_dir() -> Path:
    """One folder per layout version and per writer of the LTX single file (the authors' classes, when
    their package is installed, or the translation): a cache written without them is not reused with them."""
    writer = "authors" if importlib.util.find_spec("ltx_video") is not None else "translated"
    return cache_dir() / "tiny" / f"models-v{TINY_VERSION}-{writer}"


def ensure_tiny_models() -> tuple[Path, Path]:
    """Write the tiny checkpoints once per cache. -> (folder that mirrors the hub, bridge weights folder)."""
    root = tiny_models_dir()
    if (root / "COMPLETE").exists():
        return root, root / "weights"
    tmp = root.with_name(f"{root.name}.partial-{os.getpid()}")  # two processes may write at once (the tests)
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    write_tiny_qwen(tmp / IDS.vlm)
    write_tiny_dinov2(tmp / IDS.vision)
    write_tiny_ltx(tmp / IDS.video, tmp / IDS.video_single_file)
    write_tiny_upscaler(tmp / IDS.video_upscaler)
    write_tiny_bridge(tmp / "weights" / "tiny-random")
    (tmp / "COMPLETE").write_text("ok\n")
    try:
        tmp.rename(root)  # atomic: `root` exists only complete
    except OSError:
        if not (root / "COMPLETE").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    return root, root / "weights"


def _qwen_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=QWEN_SPECIAL_TOKENS, show_progress=False,
    )  # only the corpus's bytes: whatever random weights pick decodes to readable ASCII
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )
    return tokenizer


def write_tiny_qwen(path: Path) -> None:
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=token_id("<|endoftext|>"), eos_token_id=token_id("<|im_end|>"),
            pad_token_id=token_id("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"),
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=token_id("<|endoftext|>"), pad_token_id=token_id("<|endoftext|>"),
        eos_token_id=[token_id("<|im_end|>"), token_id("<|endoftext|>")], **QWEN_GENERATION)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    # The hub repo's older processor layout: a preprocessor_config.json whose min/max_pixels
    # override any `size` given to from_pretrained (so the app caps pixels per call instead).
    (path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))


def write_tiny_dinov2(path: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
        image_size=224, patch_size=14,
    )
    Dinov2Model(config).eval().save_pretrained(path, safe_serialization=True)
    # DINOv2's real preprocessing: shortest edge 256, centre crop 224, ImageNet statistics.
    BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
        resample=3,
    ).save_pretrained(path)


def _t5(path_tokenizer_words=_CORPUS):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    words = sorted({w.strip(".,;:").lower() for line in path_tokenizer_words for w in line.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz.,:;!?'-0123456789"]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(
        vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )
    return T5EncoderModel(config).eval(), tokenizer


# The 0.9.5 VAE's layout, miniature: 32x space, 8x time, timestep-aware decoder whose channels
# double per level. diffusers' single-file loader tells a 0.9.5 VAE by its 2048-channel encoder
# output, so the encoder ends there too, with no layers at the wide levels, to stay small (each
# down-sampling may widen the channels at most by its stride, 8 at the last two levels).
TINY_VAE = dict(
    latent_channels=16, block_out_channels=(8, 16, 32, 256, 2048), layers_per_block=(1, 1, 1, 0, 0),
    down_block_types=("LTXVideo095DownBlock3D",) * 4,
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    spatio_temporal_scaling=(True, True, True, True), decoder_block_out_channels=(8, 16, 32),
    decoder_layers_per_block=(1, 1, 1, 1), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False), upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4, patch_size_t=1,
    encoder_causal=True, decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8,
)


# The same two miniatures in LTX's authors' own configuration format: what an original single
# file carries as its metadata (`{"transformer": ..., "vae": ...}`), read by their loaders
# (`ltx_video.models.transformers.transformer3d`, `...autoencoders.causal_video_autoencoder`).
AUTHORS_TRANSFORMER = dict(
    _class_name="Transformer3DModel", activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=8,
    attention_type="default", caption_channels=32, cross_attention_dim=16, double_self_attention=False, dropout=0.0,
    in_channels=16, norm_elementwise_affine=False, norm_eps=1e-6, norm_num_groups=32, num_attention_heads=2,
    num_embeds_ada_norm=1000, num_layers=2, num_vector_embeds=None, only_cross_attention=False, out_channels=16,
    upcast_attention=False, use_linear_projection=False, qk_norm="rms_norm", standardization_norm="rms_norm",
    positional_embedding_type="rope", positional_embedding_theta=10000.0, positional_embedding_max_pos=[20, 2048, 2048],
    timestep_scale_multiplier=1000, causal_temporal_positioning=True,
)
AUTHORS_VAE = dict(
    _class_name="CausalVideoAutoencoder", dims=3, in_channels=3, out_channels=3, latent_channels=16,
    encoder_blocks=[["res_x", {"num_layers": 1}], ["compress_space_res", {"multiplier": 2}],
                    ["res_x", {"num_layers": 1}], ["compress_time_res", {"multiplier": 2}],
                    ["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 8}],
                    ["res_x", {"num_layers": 0}], ["compress_all_res", {"multiplier": 8}], ["res_x", {"num_layers": 0}]],
    decoder_blocks=[["res_x", {"num_layers": 1, "inject_noise": False}],
                    ["compress_all", {"residual": True, "multiplier": 2}],
                    ["res_x", {"num_layers": 1, "inject_noise": False}],
                    ["compress_all", {"residual": True, "multiplier": 2}],
                    ["res_x", {"num_layers": 1, "inject_noise": False}],
                    ["compress_all", {"residual": True, "multiplier": 2}],
                    ["res_x", {"num_layers": 1, "inject_noise": False}]],
    scaling_factor=1.0, norm_layer="pixel_norm", patch_size=4, latent_log_var="uniform", use_quant_conv=False,
    causal_decoder=False, timestep_conditioning=True, encoder_base_channels=8, decoder_base_channels=4,
    spatial_padding_mode="zeros",
)
# The VAE's per-channel statistics as an original file stores them (diffusers reads two of the five).
PER_CHANNEL_STATISTICS = ("channel", "mean-of-means", "std-of-means", "mean-of-stds", "mean-of-stds_over_std-of-means")


def _tiny_vae():
    from diffusers import AutoencoderKLLTXVideo

    vae = AutoencoderKLLTXVideo(**TINY_VAE).eval()
    channels = TINY_VAE["latent_channels"]  # per-channel statistics, as a trained VAE has
    vae.latents_mean.copy_(torch.randn(channels) * 0.1)
    vae.latents_std.copy_(torch.rand(channels) + 0.5)
    return vae


def _tiny_transformer(caption_channels: int):
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(
        in_channels=TINY_VAE["latent_channels"], out_channels=TINY_VAE["latent_channels"], num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=caption_channels,
    ).eval()


def authors_single_file() -> dict[str, torch.Tensor]:
    """An original-format single file's tensors, made by LTX's authors' own model classes (the
    `ltx-video` package, installed for the tests): their transformer and VAE built from
    AUTHORS_TRANSFORMER and AUTHORS_VAE, their state dicts under their prefixes, and the five
    per-channel statistics. Raises ImportError without the package."""
    import copy

    from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder
    from ltx_video.models.transformers.transformer3d import Transformer3DModel

    transformer = Transformer3DModel.from_config(dict(AUTHORS_TRANSFORMER))
    vae = CausalVideoAutoencoder.from_config(copy.deepcopy(AUTHORS_VAE))  # it turns lists into tuples in place
    tensors = {f"model.diffusion_model.{k}": v for k, v in transformer.state_dict().items()}
    tensors.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    channels = AUTHORS_VAE["latent_channels"]
    statistics = [torch.arange(channels, dtype=torch.float32), torch.randn(channels) * 0.1, torch.rand(channels) + 0.5,
                  torch.rand(channels) + 0.5, torch.rand(channels) + 0.5]
    tensors.update({f"vae.per_channel_statistics.{name}": value
                    for name, value in zip(PER_CHANNEL_STATISTICS, statistics)})
    return tensors


def translated_single_file(caption_channels: int) -> dict[str, torch.Tensor]:
    """Without the `ltx-video` package (the app needs none): diffusers' miniatures under the
    original names, by the inverse of diffusers' conversion. A test holds it to the same keys and
    shapes as `authors_single_file`."""
    transformer, vae = _tiny_transformer(caption_channels), _tiny_vae()
    tensors = {original_transformer_key(k): v for k, v in transformer.state_dict().items()}
    tensors.update({original_vae_key(k): v for k, v in vae.state_dict().items()})
    channels = TINY_VAE["latent_channels"]
    tensors.update({f"vae.per_channel_statistics.{name}": value for name, value in
                    (("channel", torch.arange(channels, dtype=torch.float32)), ("mean-of-stds", torch.rand(channels)),
                     ("mean-of-stds_over_std-of-means", torch.rand(channels)))})
    return tensors


def original_vae_key(key: str) -> str:
    """A diffusers AutoencoderKLLTXVideo key under LTX's original name: the inverse of diffusers'
    `convert_ltx_vae_checkpoint_to_diffusers` (0.9.5 rules), where resnets and down/upsamplers share
    one numbered list of blocks."""
    rules = [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", lambda m: f"encoder.down_blocks.{2 * int(m[1])}.resnets."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down_blocks.{2 * int(m[1]) + 1}."),
        (r"^encoder\.mid_block\.", lambda m: "encoder.down_blocks.8."),
        (r"^decoder\.mid_block\.", lambda m: "decoder.up_blocks.0."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up_blocks.{2 * int(m[1]) + 1}."),
        (r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up_blocks.{2 * int(m[1]) + 2}."),
        (r"^decoder\.time_embedder\.", lambda m: "decoder.last_time_embedder."),
        (r"^decoder\.scale_shift_table$", lambda m: "decoder.last_scale_shift_table"),
    ]
    for pattern, replacement in rules:
        if re.match(pattern, key):
            key = re.sub(pattern, replacement, key, count=1)
            break
    key = key.replace(".resnets.", ".res_blocks.").replace("conv_shortcut.conv.", "conv_shortcut.")
    key = key.replace(".norm3.", ".norm3.norm.")
    key = {"latents_mean": "per_channel_statistics.mean-of-means",
           "latents_std": "per_channel_statistics.std-of-means"}.get(key, key)
    return "vae." + key


def original_transformer_key(key: str) -> str:
    """The inverse of diffusers' `convert_ltx_transformer_checkpoint_to_diffusers`."""
    for new, old in {"proj_in": "patchify_proj", "time_embed": "adaln_single", "norm_q": "q_norm",
                     "norm_k": "k_norm"}.items():
        key = key.replace(new, old)
    return "model.diffusion_model." + key


def write_tiny_ltx(folder: Path, single_file: Path) -> None:
    """A diffusers LTX folder (the 0.9.5 repo's part: configs, scheduler, T5, its own VAE and
    transformer) plus an original-format single file holding another transformer and VAE (the
    0.9.8 distilled checkpoint's part), so a test can tell which weights were loaded. The single
    file is written by LTX's authors' own classes where their package is installed, with their
    configs as its metadata, as a real one carries them."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline
    from safetensors.torch import save_file

    text_encoder, tokenizer = _t5()
    # The scheduler config of the LTX 0.9.5 repo's kind: dynamic shifting, terminal shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05,
        shift_terminal=0.1, use_dynamic_shifting=True, time_shift_type="exponential",
    )
    # Saved as the hub repos are, under LTXPipeline; the app loads it as LTXConditionPipeline,
    # which takes the same components.
    LTXPipeline(scheduler=scheduler, vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                transformer=_tiny_transformer(text_encoder.config.d_model)).save_pretrained(folder,
                                                                                           safe_serialization=True)
    try:
        tensors, writer = authors_single_file(), "ltx_video"
    except ImportError:
        tensors, writer = translated_single_file(text_encoder.config.d_model), "translated"
    single_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, single_file, metadata={
        "config": json.dumps({"transformer": AUTHORS_TRANSFORMER, "vae": AUTHORS_VAE}), "tiny_writer": writer})


# LTX's latent upscaler in miniature, in the authors' configuration format (the metadata their
# `LatentUpsampler.from_pretrained` builds it from): the tiny VAE's latent channels, doubled in space.
AUTHORS_UPSCALER = dict(_class_name="LatentUpsampler", in_channels=16, mid_channels=32, num_blocks_per_stage=1,
                        dims=3, spatial_upsample=True, temporal_upsample=False)


def write_tiny_upscaler(path: Path) -> None:
    """The upscaler's single file as the authors publish it: their `LatentUpsampler`'s weights (made
    by their class where their package is installed, else by diffusers' `LTXLatentUpsamplerModel`,
    the same network under the same names; a test holds the two to the same keys) and its config."""
    from safetensors.torch import save_file

    config = {key: value for key, value in AUTHORS_UPSCALER.items() if key != "_class_name"}
    try:
        from ltx_video.models.autoencoders.latent_upsampler import LatentUpsampler

        model, writer = LatentUpsampler(**config), "ltx_video"
    except ImportError:
        from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

        model, writer = LTXLatentUpsamplerModel(**config), "diffusers"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path,
              metadata={"config": json.dumps(AUTHORS_UPSCALER), "tiny_writer": writer})


def write_tiny_bridge(folder: Path) -> None:
    """An untrained bridge for the tiny models, so `fused` mode runs end to end in the tiny profile."""
    from foresight.bridge import Bridge, BridgeConfig, save_bridge

    save_bridge(Bridge(BridgeConfig(**TINY_BRIDGE, base_models=base_models(Settings()))), folder)
