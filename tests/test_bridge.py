"""The bridge's size, its checkpoint format, and the refusals when a checkpoint does not fit."""

import json

import pytest
import torch

from foresight.bridge import Bridge, BridgeConfig, BridgeError, load_bridge, save_bridge

BASE = {"vlm": "Qwen/Qwen2.5-VL-7B-Instruct", "vision": "facebook/dinov2-large", "video": "ltx"}


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_full_size():
    with torch.device("meta"):
        bridge = Bridge(BridgeConfig())
    assert 5e6 <= count(bridge.fusion) <= 15e6  # ~10M
    assert 10e6 <= count(bridge.adapter) <= 50e6


def small_config(**changes):
    values = dict(vision_dim=16, vlm_dim=24, caption_dim=32, fusion_dim=16, fusion_layers=1, fusion_heads=2,
                  adapter_dim=16, adapter_layers=1, adapter_heads=2, num_tokens=5, base_models=BASE)
    return BridgeConfig(**{**values, **changes})


def test_output_is_k_caption_tokens_with_a_mask():
    bridge = Bridge(small_config())
    with torch.no_grad():
        bridge.adapter.keep_out.bias.fill_(-100.0)  # keeps nothing: the first token is still kept
    embeds, mask = bridge.condition(torch.randn(2, 7, 16), torch.randn(2, 11, 24))
    assert embeds.shape == (2, 5, 32) and mask.shape == (2, 5)
    assert mask[:, 0].all() and not mask[:, 1:].any()


def test_checkpoint_round_trip(tmp_path):
    bridge = Bridge(small_config()).eval()
    save_bridge(bridge, tmp_path / "b")
    loaded = load_bridge(tmp_path / "b", expected_base_models=BASE).eval()
    x, y = torch.randn(1, 7, 16), torch.randn(1, 11, 24)
    assert torch.equal(bridge(x, y)[0], loaded(x, y)[0])


def test_shape_mismatch_names_every_tensor(tmp_path):
    save_bridge(Bridge(small_config()), tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["num_tokens"] = 9
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BridgeError, match=r"adapter\.queries: checkpoint \(5, 16\), model \(9, 16\)"):
        load_bridge(tmp_path / "b")


def test_other_base_models_are_refused(tmp_path):
    save_bridge(Bridge(small_config()), tmp_path / "b")
    with pytest.raises(BridgeError, match="vlm: trained on 'Qwen/Qwen2.5-VL-7B-Instruct', running 'other/vlm'"):
        load_bridge(tmp_path / "b", expected_base_models={**BASE, "vlm": "other/vlm"})
