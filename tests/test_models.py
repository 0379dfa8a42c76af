"""Loader choices: which models load, from where, under which ids."""

import dataclasses

from foresight.config import make_settings
from foresight.models import load_models
from foresight.pipeline import ForesightPipeline

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
    assert lean.video.text_encoder is None and lean.modes == ["fused"]
    events = run_events(ForesightPipeline(lean), photo, mode="text", seed=1, out_dir=tmp_path)
    assert events[0]["mode"] == "fused" and "T5 is not loaded" in events[0]["note"]
    assert "video_complete" in [ev["type"] for ev in events]


def test_t5_loads_anyway_when_no_bridge_can_run(models, tmp_path):
    no_weights = dataclasses.replace(models.settings, text_mode=False, weights_dir=tmp_path)
    fallback = load_models(no_weights, log=lambda m: None)
    assert fallback.bridge is None and fallback.video.text_encoder is not None and fallback.modes == ["text"]


def test_static_cache_decode_writes_the_same_text(models, photo, tmp_path):
    static = dataclasses.replace(models, settings=dataclasses.replace(models.settings, decode="static"))
    texts = [run_events(ForesightPipeline(m), photo, mode="fused", seed=1, out_dir=tmp_path)[-1]["text"]
             for m in (models, static)]
    assert texts[0] and texts[0] == texts[1]
