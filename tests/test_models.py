"""Loader choices: which models load, from where, under which ids."""

import dataclasses

from foresight.models import load_models
from foresight.pipeline import ForesightPipeline
from foresight.profiles import make_settings

from conftest import run_events


def test_model_ids_are_overridable_from_the_environment(monkeypatch):
    monkeypatch.setenv("FORESIGHT_VIDEO_ID", "Lightricks/LTX-Video-0.9.8-13B-distilled")
    monkeypatch.setenv("FORESIGHT_VIDEO_SINGLE_FILE", "")
    monkeypatch.setenv("FORESIGHT_VLM_ID", "/models/qwen")
    ids = make_settings("full").model_ids
    assert ids.video == "Lightricks/LTX-Video-0.9.8-13B-distilled" and ids.video_single_file == ""
    assert ids.vlm == "/models/qwen" and ids.vision == "facebook/dinov2-large"


def test_models_dir_points_every_loader_at_local_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("FORESIGHT_MODELS_DIR", str(tmp_path))
    from foresight.config import resolve

    settings = make_settings("full")
    assert resolve(settings, settings.model_ids.vlm) == str(tmp_path / "Qwen" / "Qwen2.5-VL-7B-Instruct")


def test_without_text_mode_t5_is_skipped_when_a_bridge_runs(models, photo, tmp_path):
    lean = load_models(dataclasses.replace(models.settings, text_mode=False), log=lambda m: None)
    assert lean.video_pipeline.text_encoder is None and lean.modes == ["fused"]
    events = run_events(ForesightPipeline(lean), photo, mode="text", seed=1, out_dir=tmp_path)
    assert events[0]["mode"] == "fused" and "T5 is not loaded" in events[0]["note"]
    assert "video_complete" in [ev["type"] for ev in events]


def test_without_a_bridge_t5_loads_anyway_and_dinov2_does_not(models, photo, tmp_path):
    """The tiny profile always finds its own tiny bridge: "no bridge" points the weights folder elsewhere."""
    no_weights = dataclasses.replace(models.settings, text_mode=False, weights_dir=tmp_path / "no-bridges")
    lines = []
    fallback = load_models(no_weights, log=lines.append)
    assert fallback.bridge is None and fallback.video_pipeline.text_encoder is not None and fallback.modes == ["text"]
    assert fallback.vision is None and fallback.vision_processor is None, "no bridge reads DINOv2: not loaded"
    assert "[foresight] vision model: facebook/dinov2-large not loaded, as no bridge would read it" in lines
    events = run_events(ForesightPipeline(fallback), photo, seed=1, out_dir=tmp_path)
    assert events[0]["mode"] == "text" and events[-1]["video_url"]
    for_training = load_models(no_weights, log=lambda m: None, load_vision=True)
    assert for_training.vision is not None, "training and evaluation read it without a bridge"


def test_static_cache_decode_writes_the_same_text(models, photo, tmp_path):
    static = dataclasses.replace(models, settings=dataclasses.replace(models.settings, decode="static"))
    texts = [run_events(ForesightPipeline(m), photo, mode="fused", seed=1, out_dir=tmp_path)[-1]["text"]
             for m in (models, static)]
    assert texts[0] and texts[0] == texts[1]


def test_bf16_end_to_end_as_on_a_gpu(models, photo, tmp_path):
    """The real profile runs in bf16: every dtype meeting point (bridge -> LTX, T5, VAE previews) is exercised."""
    import torch

    from foresight.data import FeatureSet
    from foresight.train import Trainer, TrainConfig

    bf16 = load_models(dataclasses.replace(models.settings, dtype="bfloat16"), log=lambda m: None)
    for module in (bf16.vlm, bf16.vision, bf16.bridge, bf16.video_pipeline.transformer, bf16.video_pipeline.vae,
                   bf16.video_pipeline.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    for mode in ("fused", "text"):
        events = run_events(ForesightPipeline(bf16), photo, mode=mode, seed=1, out_dir=tmp_path)
        assert "error" not in [ev["type"] for ev in events] and events[-1]["video_url"], mode
    photo.save(tmp_path / "a.png")
    photo.transpose(0).save(tmp_path / "b.png")
    features = FeatureSet.build(bf16, tmp_path, "distill", preset="fast", num_tokens=8, folder=tmp_path / "f",
                                log=lambda m: None)
    rows = Trainer(bf16, features, tmp_path / "w", TrainConfig(steps=2, batch_size=1, val_every=2,
                                                               val_fraction=0.5)).run(progress=False, log=print)
    assert len(rows) == 2 and rows[-1]["val_loss"] is not None

    import imageio.v2 as imageio
    import numpy as np

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        frames = [np.roll(np.asarray(photo), 8 * f + i, axis=1) for f in range(25)]
        imageio.mimwrite(clips / f"c{i}.mp4", frames, fps=16, codec="libx264", macro_block_size=16)
    features = FeatureSet.build(bf16, clips, "video", preset="fast", num_tokens=8, folder=tmp_path / "vf",
                                log=lambda m: None)
    rows = Trainer(bf16, features, tmp_path / "v", TrainConfig(objective="video", steps=2, batch_size=1, val_every=2,
                                                               val_fraction=0.5)).run(progress=False, log=print)
    assert all(np.isfinite(r["train_loss"]) for r in rows) and rows[-1]["val_loss"] is not None


def test_vision_tokens_are_capped_whatever_the_repo_config_says(models):
    from PIL import Image

    from foresight import vlm as vlm_stage

    config = (models.settings.models_dir / models.settings.model_ids.vlm / "preprocessor_config.json").read_text()
    assert '"max_pixels": 12845056' in config  # the hub repo's own value, far above the cap
    capped = dataclasses.replace(models, settings=dataclasses.replace(models.settings, vlm_max_pixels=512 * 512))
    inputs = vlm_stage.build_inputs(capped, Image.new("RGB", (1024, 1024)), "")
    assert inputs["image_grid_thw"].tolist() == [[1, 36, 36]]  # 324 tokens after the 2x2 merge
