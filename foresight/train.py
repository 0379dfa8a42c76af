"""Training the bridge (fusion + adapter) with the base models frozen.

    python -m foresight train --data DIR --objective distill|video --out weights/NAME

Objectives:
* `distill`: regress the T5 tokens LTX would get for the image's caption (or the VLM's own
  prediction) from DINOv2 tokens and VLM states; masked normalised MSE + cosine, plus the keep
  mask. GILL's recipe: the diffusion model never runs, so it is cheap.
* `video`: LTX's own flow-matching loss on the clip's latents, the first latent frame clean (the
  image condition, as in image-to-video sampling), gradients through the frozen transformer.

Every random draw (batch order, noise, timesteps) is seeded from (seed, step), so a run resumed
from `training/state.pt` continues exactly the curve it left.
"""

from __future__ import annotations

import csv
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from foresight.bridge import Bridge, BridgeConfig, keep_mask, save_bridge
from foresight.config import PRESETS, base_models
from foresight.data import FeatureSet, collate, split
from foresight.models import torch_dtype
from foresight.video import transformer_coords

STATE_FILE, METRICS_FILE, PLOT_FILE = "state.pt", "metrics.csv", "loss.png"


@dataclass
class TrainConfig:
    objective: str = "distill"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    val_every: int = 100
    save_every: int = 200
    seed: int = 0
    preset: str = "fast"


def bridge_config_for(models, num_tokens: int) -> BridgeConfig:
    """The settings' layout (full size unless a profile says otherwise), with input and output
    widths read off the loaded models."""
    widths = dict(vision_dim=models.vision.config.hidden_size, vlm_dim=models.vlm.config.text_config.hidden_size,
                  caption_dim=models.video_pipeline.transformer.config.caption_channels)
    return BridgeConfig(**{**models.settings.bridge_layout, **widths, "num_tokens": num_tokens,
                           "base_models": base_models(models.settings)})


def default_num_tokens(settings) -> int:
    """K, the bridge's token count; distill targets are T5 encodings of exactly this length."""
    return settings.bridge_layout.get("num_tokens", BridgeConfig.num_tokens)


def distill_loss(bridge: Bridge, batch: dict) -> tuple[torch.Tensor, dict]:
    pred, keep_logits = bridge(batch["vision"], batch["vlm"], batch["vlm_mask"])
    target, mask = batch["target"].float(), batch["target_mask"].float()
    pred = pred.float()
    weight = mask / mask.sum().clamp(min=1)
    scale = target[mask.bool()].var().clamp(min=1e-6)  # so the loss reads the same for any embedding scale
    mse = (((pred - target) ** 2).mean(-1) * weight).sum() / scale
    cosine = (F.cosine_similarity(pred, target, dim=-1) * weight).sum()
    keep = F.binary_cross_entropy_with_logits(keep_logits.float(), mask)
    return mse + (1 - cosine) + 0.1 * keep, {"cosine": cosine.item()}


def video_loss(bridge: Bridge, batch: dict, pipe, generator: torch.Generator, fps: int) -> tuple[torch.Tensor, dict]:
    """Flow matching through the frozen LTX transformer, called as LTXConditionPipeline calls it:
    the first latent frame clean (the image condition, timestep 0), the others noised, the same
    positions; predict (noise - x0) on every frame but the first."""
    embeds, keep_logits = bridge(batch["vision"], batch["vlm"], batch["vlm_mask"])
    x0 = batch["latents"].float()
    b, _, frames, height, width = x0.shape
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
    sigma = torch.sigmoid(torch.randn(b, generator=generator, device="cpu")).to(x0.device)  # logit-normal
    noisy = (1 - sigma.view(b, 1, 1, 1, 1)) * x0 + sigma.view(b, 1, 1, 1, 1) * noise
    noisy[:, :, :1] = x0[:, :, :1]  # the condition frame stays clean, as in image-to-video sampling
    condition = torch.zeros(b, 1, frames, height, width, device=x0.device)
    condition[:, :, 0] = 1
    p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    condition = pipe._pack_latents(condition, p, pt).squeeze(-1)
    dtype = pipe.transformer.dtype
    velocity = pipe.transformer(
        hidden_states=pipe._pack_latents(noisy, p, pt).to(dtype),
        encoder_hidden_states=embeds.to(dtype), encoder_attention_mask=keep_mask(keep_logits),
        timestep=(sigma.view(b, 1) * 1000) * (1 - condition),
        video_coords=transformer_coords(pipe, b, (frames, height, width), fps),
        return_dict=False)[0]
    target = pipe._pack_latents(noise - x0, p, pt)
    per_token = ((velocity.float() - target) ** 2).mean(-1)
    denoised = 1 - condition
    return (per_token * denoised).sum() / denoised.sum(), {}


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_indices(train_ids: list[int], step: int, config: TrainConfig) -> list[int]:
    """The step's batch: a fresh permutation per epoch, seeded by (seed, epoch)."""
    per_epoch = max(1, len(train_ids) // config.batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    chosen = order[position * config.batch_size:(position + 1) * config.batch_size]
    if len(chosen) < config.batch_size:  # fewer items than a batch: take them all
        chosen = order[:config.batch_size]
    return [train_ids[i] for i in chosen.tolist()]


class Trainer:
    def __init__(self, models, features: FeatureSet, out: str | Path, config: TrainConfig,
                 bridge_config: BridgeConfig | None = None):
        self.models, self.features, self.config = models, features, config
        self.out, self.work = Path(out), Path(out) / "training"
        self.device = models.settings.device
        self.train_ids, self.val_ids = split(features.names, config.val_fraction)
        if not self.train_ids:
            raise ValueError("need at least two items: one to train on, one held out")
        self.bridge_config = bridge_config or bridge_config_for(models, features.index["num_tokens"])
        torch.manual_seed(config.seed)
        self.bridge = Bridge(self.bridge_config).to(self.device).train()
        self.optimizer = torch.optim.AdamW(self.bridge.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        for module in (models.vlm, models.vision, models.video_pipeline.transformer):
            module.requires_grad_(False)
        # The bridge keeps float32 weights; with bf16 base models its maths runs under bf16 autocast.
        dtype = torch_dtype(models.settings)
        self.autocast = torch.autocast(self.device, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def loss(self, ids: list[int], step: int) -> tuple[torch.Tensor, dict]:
        batch = {k: v.to(self.device) for k, v in collate([self.features[i] for i in ids]).items()}
        batch = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
        with self.autocast:
            if self.config.objective == "distill":
                return distill_loss(self.bridge, batch)
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
            fps = PRESETS[self.config.preset].fps
            return video_loss(self.bridge, batch, self.models.video_pipeline, generator, fps)

    @torch.no_grad()
    def validate(self) -> dict:
        """Held-out loss (and cosine for distill), noise fixed per batch so numbers compare across steps."""
        self.bridge.eval()
        totals, count = {}, 0
        for start in range(0, len(self.val_ids), self.config.batch_size):
            ids = self.val_ids[start:start + self.config.batch_size]
            loss, extra = self.loss(ids, step=-1 - start)
            for key, value in {"loss": loss.item(), **extra}.items():
                totals[key] = totals.get(key, 0.0) + value * len(ids)
            count += len(ids)
        self.bridge.train()
        return {k: v / count for k, v in totals.items()} if count else {}

    def save_state(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "bridge": self.bridge.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "config": asdict(self.config), "bridge_config": asdict(self.bridge_config)}
        torch.save(state, self.work / (STATE_FILE + ".tmp"))
        (self.work / (STATE_FILE + ".tmp")).replace(self.work / STATE_FILE)

    def resume(self) -> bool:
        path = self.work / STATE_FILE
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["config"]["objective"] != self.config.objective:
            raise ValueError(f"{path} is a {state['config']['objective']} run, not {self.config.objective}")
        self.bridge.load_state_dict(state["bridge"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        return True

    def run(self, log: Callable[[str], None] = print, progress: bool = True, until: int | None = None) -> list[dict]:
        """Train up to step `until` (default `config.steps`); append to metrics.csv; return this call's rows."""
        from tqdm import tqdm

        self.work.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        bar = tqdm(total=self.config.steps, initial=self.step, desc=f"train {self.config.objective}",
                   disable=not progress, unit="step")
        started = time.perf_counter()
        until = min(until or self.config.steps, self.config.steps)
        while self.step < until:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, self.config)
            loss, _ = self.loss(batch_indices(self.train_ids, self.step, self.config), self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.bridge.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.step += 1
            row = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": loss.item(),
                   "val_loss": None, "val_cosine": None}
            if self.step % self.config.val_every == 0 or self.step == self.config.steps:
                val = self.validate()
                row.update(val_loss=val.get("loss"), val_cosine=val.get("cosine"))
            rows.append(row)
            self._append_metrics(row)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}")
            bar.update()
            if self.step % self.config.save_every == 0:
                self.save_state()
        bar.close()
        self.save_state()
        save_bridge(self.bridge.eval(), self.out)
        plot_losses(self.work / METRICS_FILE, self.work / PLOT_FILE)
        seconds = time.perf_counter() - started
        if rows:
            memory = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                      if torch.cuda.is_available() else "")
            log(f"[foresight] {len(rows)} steps in {seconds:.1f}s ({seconds / len(rows):.3f} s/step{memory}); "
                f"checkpoint in {self.out}")
        return rows

    def _append_metrics(self, row: dict) -> None:
        path = self.work / METRICS_FILE
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def read_metrics(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]


def plot_losses(metrics_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], label="train", linewidth=1)
    val = [r for r in rows if r["val_loss"] is not None]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="held out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def train_command(models, args, log: Callable[[str], None]) -> int:
    """`python -m foresight train`, on models the command line loaded for the objective."""
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    features = FeatureSet.build(models, args.data, config.objective, preset=config.preset,
                                num_tokens=default_num_tokens(models.settings), captions_file=args.captions, log=log)
    trainer = Trainer(models, features, args.out, config)
    if args.resume and trainer.resume():
        log(f"[foresight] resumed at step {trainer.step}")
    trainer.run(log=log)
    return 0
