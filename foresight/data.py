"""Training data for the bridge: a folder of images or clips, and the frozen encoders' features cached once.

Every frozen model runs once per item; the features go to safetensors shards so that epochs run
on the bridge alone. Per item the cache holds the DINOv2 patch tokens (`vision`), the VLM's
prefill hidden states (`vlm`) and, by objective, the T5 caption tokens and mask (`target`,
`target_mask`, distill) or the clip's normalised LTX latents (`latents`, video).

Captions (optional) are a JSON-lines file: {"file": "name.jpg", "caption": "..."} per line.
Without one, the distill target is the VLM's own one-line prediction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from foresight.config import PRESETS, Preset, base_models, cache_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv"}
SHARD_SIZE = 64
FEATURES_VERSION = 4  # bump when what the features are made from changes in a way the key cannot see


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str | None = None


def list_items(data_dir: str | Path, objective: str, captions_file: str | Path | None = None) -> list[Item]:
    """Images for `distill` (first frames of clips count too), clips for `video`; sorted by name."""
    data_dir = Path(data_dir)
    captions = read_captions(captions_file) if captions_file else {}
    suffixes = VIDEO_SUFFIXES if objective == "video" else IMAGE_SUFFIXES | VIDEO_SUFFIXES
    paths = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(data_dir).parts))
    if not paths:
        kind = "clips (mp4, webm, mov, mkv)" if objective == "video" else "images or clips"
        raise ValueError(f"no {kind} found in {data_dir}")
    return [Item(p, captions.get(p.name)) for p in paths]


def read_captions(path: str | Path) -> dict[str, str]:
    captions = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                captions[Path(row["file"]).name] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected {{\"file\": ..., \"caption\": ...}} ({exc})") from exc
    return captions


def square(image: Image.Image, preset: Preset) -> Image.Image:
    """A clip's frames fitted to the preset's square (as a condition image is fitted), so that a
    batch's latents share one shape."""
    from foresight.inputs import crop_and_resize

    return crop_and_resize(image.convert("RGB"), preset.width, preset.height)


def read_clip(path: Path, preset: Preset) -> np.ndarray:
    """The clip's first `preset.num_frames` frames, cropped to the preset's square, [F, H, W, 3] uint8."""
    import imageio.v3 as iio

    frames = []
    for frame in iio.imiter(path, plugin="FFMPEG"):
        frames.append(np.asarray(square(Image.fromarray(frame), preset)))
        if len(frames) == preset.num_frames:
            break
    if len(frames) < preset.num_frames:
        raise ValueError(f"{path.name}: {len(frames)} frames, the {preset.name} preset needs {preset.num_frames}")
    return np.stack(frames)


def item_image(item: Item) -> Image.Image:
    """The item as the app would load it: the image file (`inputs.load_image`), or a clip's first frame.
    Qwen and DINOv2 see this, exactly as they see an upload when serving."""
    from foresight.inputs import load_image

    if item.path.suffix.lower() in VIDEO_SUFFIXES:
        import imageio.v3 as iio

        return load_image(Image.fromarray(next(iter(iio.imiter(item.path, plugin="FFMPEG")))))
    return load_image(item.path)


@torch.inference_mode()
def item_features(models, item: Item, objective: str, preset: Preset, num_tokens: int,
                  static_cache=None) -> dict[str, torch.Tensor]:
    """One item's cached features. `static_cache` (vlm.ReusedStaticCache): shared by a loop's calls."""
    from foresight import video as video_stage
    from foresight import vlm as vlm_stage

    image = item_image(item)
    inputs = vlm_stage.build_inputs(models, image, "")
    features = {"vision": video_stage.vision_tokens(models, image)[0]}
    caption = item.caption
    if objective == "distill" and not caption:  # one prefill gives both the states and the prediction
        caption, features["vlm"] = own_prediction(models, inputs, static_cache)
    else:
        features["vlm"] = vlm_stage.prefill_states(models, inputs)[0]
    if objective == "distill":
        embeds, mask = video_stage.text_conditioning(models, caption, max_sequence_length=num_tokens)
        features.update(target=embeds[0], target_mask=mask[0].to(torch.uint8))
    else:
        features["latents"] = clip_latents(models.video_pipeline, read_clip(item.path, preset),
                                           models.settings.sampling.condition_crf)
    return {k: v.detach().to("cpu", torch.bfloat16 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in features.items()}


def own_prediction(models, inputs, static_cache=None) -> tuple[str, torch.Tensor]:
    """The VLM's one-line prediction for this image (the `text` mode's prompt, as a distill target)
    and, from the same prefill, the hidden states the bridge reads: ([T, D])."""
    from foresight import vlm as vlm_stage

    chunks: list[str] = []
    capture = vlm_stage.PrefillCapture(models.vlm, models.settings.hidden_layer)
    vlm_stage.stream_reasoning(models, inputs, chunks.append, threading.Event(), capture=capture,
                               max_new_tokens=48, static_cache=static_cache)
    prediction = vlm_stage.prediction_line("".join(chunks) + "\n") or "The scene continues."
    return prediction, capture.states[0]


@torch.inference_mode()
def clip_latents(pipe, frames: np.ndarray, condition_crf: int) -> torch.Tensor:
    """LTX's VAE latents of a clip, normalised as the pipeline's own latents are: [C, F', H', W'].

    The first latent frame (the image condition, kept clean in training) is the VAE's encoding of
    the first frame prepared as the renderer prepares its condition image (`video.prepare_condition`),
    so the bridge learns against the condition it is served with. The causal VAE encodes its first
    latent frame from the first picture alone, so the others are unchanged."""
    from foresight.video import prepare_condition

    condition = np.array(prepare_condition(Image.fromarray(frames[0]), condition_crf))[None]
    latents = [_encode(pipe, clip) for clip in (frames, condition)]
    latents[0][:, :, :1] = latents[1]
    return latents[0][0]


def _encode(pipe, frames: np.ndarray) -> torch.Tensor:
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(pipe.vae.device, pipe.vae.dtype) / 127.5 - 1
    latents = pipe.vae.encode(video).latent_dist.mode()
    return pipe._normalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                   pipe.vae.config.scaling_factor)


def features_key(models, items: list[Item], objective: str, preset: str, num_tokens: int) -> str:
    """Everything that changes the features: the models, how Qwen is prompted and sees the image,
    which layer is read, the objective's targets, and the items themselves."""
    from foresight.vlm import SYSTEM_PROMPT

    settings = models.settings
    h = hashlib.sha256(json.dumps([FEATURES_VERSION, base_models(settings), str(settings.models_dir),
                                   settings.profile, SYSTEM_PROMPT, settings.vlm_min_pixels, settings.vlm_max_pixels,
                                   settings.hidden_layer, objective,
                                   dataclasses.astuple(PRESETS[preset]) if objective == "video" else None,
                                   settings.sampling.condition_crf if objective == "video" else None,
                                   num_tokens]).encode())
    for item in items:
        stat = item.path.stat()
        h.update(f"{item.path}|{stat.st_size}|{stat.st_mtime_ns}|{item.caption}".encode())
    return h.hexdigest()[:16]


class FeatureSet:
    """The cached features of a data folder, computed on first use."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        self.folder = folder
        self.index = json.loads((folder / "index.json").read_text())
        self.items: list[dict[str, torch.Tensor]] = []
        for shard in self.index["shards"]:
            tensors = load_file(folder / shard)
            for i in sorted({int(k.split(".")[0]) for k in tensors}):
                self.items.append({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".")[0] == str(i)})
        self.names: list[str] = self.index["names"]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]

    @classmethod
    def build(cls, models, data_dir, objective: str, preset: str, num_tokens: int, captions_file=None,
              folder: Path | None = None, log: Callable[[str], None] = print) -> "FeatureSet":
        from safetensors.torch import save_file
        from tqdm import tqdm

        from foresight import vlm as vlm_stage

        items = list_items(data_dir, objective, captions_file)
        key = features_key(models, items, objective, preset, num_tokens)
        folder = Path(folder) if folder else cache_dir() / "features" / key
        if (folder / "index.json").exists() and json.loads((folder / "index.json").read_text())["key"] == key:
            log(f"[foresight] features: cached in {folder}")
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shards, shard, names = [], {}, []
        static_cache = vlm_stage.ReusedStaticCache(models.settings.static_cache_len)  # one for every item
        for i, item in enumerate(tqdm(items, desc="features", unit="item")):
            for name, tensor in item_features(models, item, objective, PRESETS[preset], num_tokens,
                                              static_cache).items():
                shard[f"{i}.{name}"] = tensor
            names.append(item.path.name)
            if (i + 1) % SHARD_SIZE == 0 or i + 1 == len(items):
                shards.append(f"shard-{len(shards):05d}.safetensors")
                save_file(shard, folder / shards[-1])
                shard = {}
        index = {"key": key, "objective": objective, "preset": preset, "num_tokens": num_tokens, "names": names,
                 "shards": shards}
        (folder / "index.json").write_text(json.dumps(index, indent=1))
        log(f"[foresight] features: {len(items)} items cached in {folder}")
        return cls(folder)


def split(names: list[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """A held-out split that depends only on the file names (stable as the folder grows)."""
    ranked = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode()).hexdigest())
    n_val = max(1, round(len(names) * val_fraction)) if len(names) > 1 else 0
    val = sorted(ranked[:n_val])
    return [i for i in range(len(names)) if i not in set(val)], val


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch; VLM states differ in length (image aspect), so they are padded with a mask."""
    batch = {}
    lengths = [it["vlm"].shape[0] for it in items]
    vlm = torch.zeros(len(items), max(lengths), items[0]["vlm"].shape[-1], dtype=items[0]["vlm"].dtype)
    vlm_mask = torch.zeros(len(items), max(lengths), dtype=torch.bool)
    for row, (it, n) in enumerate(zip(items, lengths)):
        vlm[row, :n], vlm_mask[row, :n] = it["vlm"], True
    batch.update(vlm=vlm, vlm_mask=vlm_mask)
    for key in items[0]:
        if key != "vlm":
            batch[key] = torch.stack([it[key] for it in items])
    return batch
