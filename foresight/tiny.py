"""The `tiny` profile: tiny random-weight checkpoints in the real repos' on-disk layouts.

Nothing can be downloaded where the tests run, so this module *writes* miniature versions of
the four models (config, safetensors, tokenizer trained offline, processor files, a diffusers
pipeline folder, and LTX's single-file transformer checkpoint) under folders named like the hub
ids. The app then loads them through exactly the loaders it uses for the real models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from foresight.config import ModelIds, cache_dir

TINY_VERSION = 7  # bump when the layouts below change, so stale caches are rebuilt
IDS = ModelIds()

# Qwen's special tokens, in the real tokenizer's order.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL's chat template, written out: a default system turn, images as
# <|vision_start|><|image_pad|><|vision_end|>, and the assistant prompt.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Next: the ball rolls off the table and falls to the floor.",
    "The person will turn around and walk toward the door while the light changes.",
    "Look at the image and predict what happens in the next few seconds.",
    "The waves move toward the shore; a bird flies across the sky; the car drives away.",
    "First, the cup tips over. Then water spreads over the wooden surface.",
]


def tiny_models_dir() -> Path:
    return cache_dir() / "tiny" / f"models-v{TINY_VERSION}"


def ensure_tiny_models() -> tuple[Path, Path]:
    """Write the tiny checkpoints once per cache. -> (folder that mirrors the hub, bridge weights folder)."""
    root = tiny_models_dir()
    if (root / "COMPLETE").exists():
        return root, root / "weights"
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    write_tiny_qwen(tmp / IDS.vlm)
    write_tiny_dinov2(tmp / IDS.vision)
    write_tiny_ltx(tmp / IDS.video, tmp / IDS.video_single_file)
    write_tiny_bridge(tmp / "weights" / "tiny-random")
    (tmp / "COMPLETE").write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
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
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def write_tiny_qwen(path: Path) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

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
    model.generation_config.eos_token_id = [token_id("<|im_end|>"), token_id("<|endoftext|>")]
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
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


def write_tiny_ltx(folder: Path, single_file: Path) -> None:
    """A diffusers LTX image-to-video folder plus the transformer as an original-format single file."""
    from diffusers import (
        AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel,
    )
    from safetensors.torch import save_file

    text_encoder, tokenizer = _t5()
    latent_channels = 16
    # Same compression as the real 0.9.5+ VAE (32x space, 8x time, timestep-aware decoder);
    # the decoder's channels double per level, as the real ones do.
    vae = AutoencoderKLLTXVideo(
        latent_channels=latent_channels,
        block_out_channels=(8, 16, 32, 32, 32),
        down_block_types=("LTXVideo095DownBlock3D",) * 4,
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_block_out_channels=(8, 16, 32),
        decoder_layers_per_block=(1, 1, 1, 1),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        spatial_compression_ratio=32, temporal_compression_ratio=8,
    ).eval()
    transformer = LTXVideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=text_encoder.config.d_model,
    ).eval()
    # The real scheduler config of the LTX 0.9.5 repo's kind: dynamic shifting, terminal shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05,
        shift_terminal=0.1, use_dynamic_shifting=True, time_shift_type="exponential",
    )
    # Saved as the hub repos are, under another pipeline class (LTXPipeline); the app loads it
    # as LTXImageToVideoPipeline, which shares the components.
    pipe = LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Original LTX key names, the inverse of diffusers' single-file conversion for the transformer.
    renames = {"proj_in": "patchify_proj", "time_embed": "adaln_single", "norm_q": "q_norm", "norm_k": "k_norm"}
    original = {}
    for key, tensor in transformer.state_dict().items():
        for new, old in renames.items():
            key = key.replace(new, old)
        original["model.diffusion_model." + key] = tensor.contiguous()
    single_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(original, single_file, metadata={"config": json.dumps(dict(transformer.config))})


TINY_BRIDGE = dict(vision_dim=32, vlm_dim=64, caption_dim=32, fusion_dim=32, fusion_layers=1, fusion_heads=2,
                   adapter_dim=32, adapter_layers=1, adapter_heads=2, num_tokens=8)


def write_tiny_bridge(folder: Path) -> None:
    """An untrained bridge for the tiny models, so `fused` mode runs end to end in the tiny profile."""
    from foresight.bridge import Bridge, BridgeConfig, save_bridge

    base_models = {"vlm": IDS.vlm, "vision": IDS.vision, "video": IDS.video_single_file}
    save_bridge(Bridge(BridgeConfig(**TINY_BRIDGE, base_models=base_models)), folder)
