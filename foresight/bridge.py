"""The learned bridge: DINOv2 patch tokens x VLM prefill hidden states -> K tokens in LTX's caption space.

Two plain modules. `Fusion` lets the image's patch tokens attend to what the VLM made of the
image and question; `Adapter` reads the fused tokens with learned queries and writes K tokens of
the T5-XXL width (4096), which LTX takes as `prompt_embeds`. Checkpoints are a folder in
`weights/`: `config.json` (this module's `BridgeConfig`, with the base model ids it was trained
against) and `bridge.safetensors`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.json", "bridge.safetensors"


@dataclass
class BridgeConfig:
    vision_dim: int = 1024  # DINOv2-large
    vlm_dim: int = 3584  # Qwen2.5-VL-7B
    caption_dim: int = 4096  # T5-XXL, LTX's caption width
    fusion_dim: int = 512
    fusion_layers: int = 2
    fusion_heads: int = 8
    adapter_dim: int = 1024
    adapter_layers: int = 2
    adapter_heads: int = 16
    num_tokens: int = 64  # K
    base_models: dict = field(default_factory=dict)  # {"vlm": id, "vision": id, "video": id}


class BridgeError(ValueError):
    """A bridge checkpoint that cannot be used here; the message says exactly why."""


class AttentionBlock(nn.Module):
    """Pre-norm (self- or cross-) attention followed by an MLP, both residual."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, self_attention: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True) if self_attention else None
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        context_dim = context_dim or dim
        self.norm_q, self.norm_context = nn.LayerNorm(dim), nn.LayerNorm(context_dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        if self.self_attn is not None:
            h = self.norm_self(x)
            x = x + self.self_attn(h, h, h, need_weights=False)[0]
        context = self.norm_context(context)
        padding = None if context_mask is None else ~context_mask.bool()
        x = x + self.cross_attn(self.norm_q(x), context, context, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class Fusion(nn.Module):
    """DINOv2 patch tokens attend to the VLM's hidden states (~10M parameters at full size)."""

    def __init__(self, config: BridgeConfig):
        super().__init__()
        self.vision_in = nn.Linear(config.vision_dim, config.fusion_dim)
        self.vlm_in = nn.Linear(config.vlm_dim, config.fusion_dim)
        self.blocks = nn.ModuleList(
            AttentionBlock(config.fusion_dim, config.fusion_heads) for _ in range(config.fusion_layers))
        self.norm_out = nn.LayerNorm(config.fusion_dim)

    def forward(self, vision_tokens, vlm_states, vlm_mask=None):
        x, context = self.vision_in(vision_tokens), self.vlm_in(vlm_states)
        for block in self.blocks:
            x = block(x, context, vlm_mask)
        return self.norm_out(x)


class Adapter(nn.Module):
    """K learned queries read the fused tokens and become caption-space tokens (10-50M parameters)."""

    def __init__(self, config: BridgeConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(config.num_tokens, config.adapter_dim) * config.adapter_dim**-0.5)
        self.blocks = nn.ModuleList(
            AttentionBlock(config.adapter_dim, config.adapter_heads, context_dim=config.fusion_dim, self_attention=True)
            for _ in range(config.adapter_layers))
        self.norm_out = nn.LayerNorm(config.adapter_dim)
        self.caption_out = nn.Linear(config.adapter_dim, config.caption_dim)
        self.keep_out = nn.Linear(config.adapter_dim, 1)  # which tokens LTX should attend to

    def forward(self, fused):
        x = self.queries.unsqueeze(0).expand(fused.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, fused, None)
        x = self.norm_out(x)
        return self.caption_out(x), self.keep_out(x).squeeze(-1)


class Bridge(nn.Module):
    def __init__(self, config: BridgeConfig):
        super().__init__()
        self.config = config
        self.fusion = Fusion(config)
        self.adapter = Adapter(config)

    def forward(self, vision_tokens, vlm_states, vlm_mask=None):
        """-> (caption-space tokens [B, K, caption_dim], keep logits [B, K]); what training optimises."""
        return self.adapter(self.fusion(vision_tokens, vlm_states, vlm_mask))

    def condition(self, vision_tokens, vlm_states, vlm_mask=None):
        """-> (prompt_embeds, prompt_attention_mask) for LTX: the tokens, and a mask of those kept."""
        embeds, keep_logits = self(vision_tokens, vlm_states, vlm_mask)
        return embeds, keep_mask(keep_logits)


def keep_mask(keep_logits: torch.Tensor) -> torch.Tensor:
    """Which of the K tokens LTX attends to. T5 captions are a prefix of real tokens followed by
    padding LTX never attends to; the keep head learns that mask. The first token is always kept."""
    mask = (keep_logits > 0).long()
    mask[:, 0] = 1
    return mask


def save_bridge(bridge: Bridge, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(bridge.config), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in bridge.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    return folder


def read_bridge_config(folder: str | Path) -> BridgeConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
        return BridgeConfig(**raw)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise BridgeError(f"{path}: not a bridge config ({exc})") from exc


def load_bridge(folder: str | Path, expected_base_models: dict[str, str] | None = None) -> Bridge:
    """Load a checkpoint; refuse one trained against other base models or with mismatched shapes."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_bridge_config(folder)
    if expected_base_models is not None and config.base_models != expected_base_models:
        differ = [f"{k}: trained on {config.base_models.get(k)!r}, running {v!r}"
                  for k, v in expected_base_models.items() if config.base_models.get(k) != v]
        raise BridgeError(f"bridge {folder.name} was trained against other base models: " + "; ".join(differ))
    bridge = Bridge(config)
    state = load_file(folder / WEIGHTS_FILE)
    expected = bridge.state_dict()
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    problems += [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise BridgeError(f"bridge {folder} does not match its config: " + "; ".join(problems))
    bridge.load_state_dict(state)
    return bridge


def find_bridge_checkpoint(weights_dir: str | Path, wanted: dict[str, str]) -> tuple[Path | None, str]:
    """The first checkpoint in `weights_dir` trained against the `wanted` base models, and a note."""
    candidates = sorted(p.parent for p in Path(weights_dir).glob(f"*/{CONFIG_FILE}"))
    for folder in candidates:
        try:
            if read_bridge_config(folder).base_models == wanted:
                return folder, f"fused weights {folder.name} loaded"
        except BridgeError:
            continue
    if candidates:
        return None, (f"no bridge in {weights_dir} matches the running base models "
                      f"({', '.join(wanted.values())}); fused mode is off, text mode runs")
    return None, f"no bridge weights in {weights_dir}; fused mode is off, text mode runs"
