"""Training the bridge on the tiny profile with a synthetic data set: it learns, resumes, and plugs in."""

import dataclasses
import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image, ImageDraw

from foresight.__main__ import main
from foresight.bridge import BridgeError, find_bridge_checkpoint, load_bridge
from foresight.config import base_models
from foresight.data import FeatureSet
from foresight.pipeline import ForesightPipeline
from foresight.train import Trainer, TrainConfig, default_num_tokens, read_metrics

from conftest import run_events

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (230, 210, 30)}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """16 images of coloured squares, with captions."""
    root = tmp_path_factory.mktemp("images")
    rows = []
    for i, (name, rgb) in enumerate(list(COLORS.items()) * 4):
        image = Image.new("RGB", (96, 80), (240, 240, 240))
        ImageDraw.Draw(image).rectangle([10 + 12 * (i % 5), 20, 40 + 12 * (i % 5), 50], fill=rgb)
        image.save(root / f"img{i:02d}.png")
        rows.append({"file": f"img{i:02d}.png", "caption": f"the {name} square slides right"})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


@pytest.fixture(scope="module")
def clip_set(tmp_path_factory):
    """6 short clips of a square moving right."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(6):
        frames = []
        for f in range(26):
            frame = np.full((96, 128, 3), 230, np.uint8)
            frame[30:60, 5 + 4 * f + 3 * i:29 + 4 * f + 3 * i] = list(COLORS.values())[i % 4]
            frames.append(frame)
        imageio.mimwrite(root / f"clip{i}.mp4", frames, fps=16, codec="libx264", macro_block_size=16)
    return root


@pytest.fixture(scope="module")
def image_features(models, image_set, tmp_path_factory):
    return FeatureSet.build(models, image_set, "distill", preset="fast", num_tokens=default_num_tokens(models.settings),
                            captions_file=image_set / "captions.jsonl", folder=tmp_path_factory.mktemp("features"),
                            log=lambda m: None)


def config(**changes):
    values = dict(steps=40, batch_size=4, lr=3e-3, warmup_steps=5, val_every=20, save_every=10, val_fraction=0.25)
    return TrainConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def trained(models, image_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "squares"
    rows = Trainer(models, image_features, out, config()).run(log=lambda m: None, progress=False)
    return out, rows


def test_distill_loss_falls_and_everything_is_written(trained):
    out, rows = trained
    losses = [r["train_loss"] for r in rows]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    metrics = read_metrics(out / "training" / "metrics.csv")
    assert [r["step"] for r in metrics] == list(range(1, 41))
    held_out = [r for r in metrics if r["val_loss"] is not None]
    assert [r["step"] for r in held_out] == [20, 40] and held_out[-1]["val_loss"] < held_out[0]["val_loss"]
    assert 0 < held_out[-1]["val_cosine"] <= 1
    assert Image.open(out / "training" / "loss.png").size[0] > 100
    assert (out / "config.json").exists() and (out / "bridge.safetensors").exists()


def test_a_resumed_run_continues_the_same_curve(models, image_features, tmp_path):
    straight = Trainer(models, image_features, tmp_path / "a", config(steps=20)).run(progress=False, log=print)
    Trainer(models, image_features, tmp_path / "b", config(steps=20)).run(progress=False, until=10, log=print)
    resumed = Trainer(models, image_features, tmp_path / "b", config(steps=20))
    assert resumed.resume() and resumed.step == 10
    rest = resumed.run(progress=False, log=print)
    assert [r["step"] for r in rest] == list(range(11, 21))
    assert [r["train_loss"] for r in rest] == pytest.approx([r["train_loss"] for r in straight[10:]], rel=1e-6)


def test_the_checkpoint_plugs_into_the_pipeline_and_changes_fused_output(models, trained, tmp_path):
    out, _ = trained
    folder, note = find_bridge_checkpoint(out.parent, base_models(models.settings))
    assert folder == out and "squares loaded" in note
    bridge = load_bridge(out, expected_base_models=base_models(models.settings)).eval()

    def last_frame(the_models):
        events = run_events(ForesightPipeline(the_models), ROOT / "examples" / "cat.jpg", mode="fused", seed=5,
                            out_dir=tmp_path, frame_events=True)
        frame = [ev for ev in events if ev["type"] == "video_frame"][-1]
        return Path(frame["path"]).read_bytes()

    assert last_frame(dataclasses.replace(models, bridge=bridge)) != last_frame(models)


def test_a_checkpoint_for_other_base_models_is_refused(models, trained, tmp_path, capsys):
    out, _ = trained
    other = tmp_path / "weights" / "other"
    other.mkdir(parents=True)
    config_json = json.loads((out / "config.json").read_text())
    config_json["base_models"]["vlm"] = "someone/other-vlm"
    (other / "config.json").write_text(json.dumps(config_json))
    (other / "bridge.safetensors").write_bytes((out / "bridge.safetensors").read_bytes())
    with pytest.raises(BridgeError, match="trained on 'someone/other-vlm'"):
        load_bridge(other, expected_base_models=base_models(models.settings))
    folder, note = find_bridge_checkpoint(other.parent, base_models(models.settings))
    assert folder is None and "matches the running base models" in note
    assert main(["eval-bridge", "--weights", str(other), "--data", str(tmp_path), "--profile", "tiny"]) == 2
    assert "trained on 'someone/other-vlm'" in capsys.readouterr().err


def test_predict_runs_fused_mode_with_a_chosen_bridge_and_refuses_one_for_other_models(trained, tmp_path, capsys):
    out, _ = trained

    def predict(weights):
        code = main(["predict", str(ROOT / "examples" / "cat.jpg"), "--profile", "tiny", "--preset", "fast",
                     "--mode", "fused", "--weights", str(weights), "--out", str(tmp_path / "out"),
                     "--events", str(tmp_path / "events.jsonl")])
        return code, capsys.readouterr().err

    code, err = predict(out)
    assert code == 0, err
    start = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])
    assert start["mode"] == "fused" and not start["note"]
    assert "bridge: fused weights squares loaded" in err
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((out / "config.json").read_text())
    config["base_models"]["video"] = "someone/other-video-model"
    (other / "config.json").write_text(json.dumps(config))
    (other / "bridge.safetensors").write_bytes((out / "bridge.safetensors").read_bytes())
    code, err = predict(other)
    assert code == 2 and "trained on 'someone/other-video-model'" in err
    assert "loaded in" not in err, "refused before any model loads"


def test_video_objective_trains_through_the_frozen_transformer(models, clip_set, tmp_path):
    features = FeatureSet.build(models, clip_set, "video", preset="fast", num_tokens=8, folder=tmp_path / "f",
                                log=lambda m: None)
    assert features[0]["latents"].shape[1] == 4  # 25 frames -> 4 latent frames
    assert_the_condition_frame_is_prepared_as_served(models, clip_set, features)
    trainer = Trainer(models, features, tmp_path / "video", config(objective="video", steps=6, batch_size=2,
                                                                     val_every=3, val_fraction=0.34))
    before = [p.detach().clone() for p in trainer.bridge.parameters()]
    rows = trainer.run(progress=False, log=lambda m: None)
    assert all(np.isfinite(r["train_loss"]) for r in rows) and rows[-1]["val_loss"] is not None
    moved = [not (a == b.detach()).all() for a, b in zip(before, trainer.bridge.parameters())]
    assert any(moved), "gradients reach the bridge through LTX"
    assert (tmp_path / "video" / "bridge.safetensors").exists()


def test_train_and_eval_from_the_command_line(image_set, trained, tmp_path, capsys):
    assert main(["train", "--data", str(image_set), "--captions", str(image_set / "captions.jsonl"), "--profile",
                 "tiny", "--out", str(tmp_path / "cli"), "--steps", "4", "--batch-size", "4", "--val-every", "2"]) == 0
    assert (tmp_path / "cli" / "bridge.safetensors").exists()
    capsys.readouterr()
    out, _ = trained
    assert main(["eval-bridge", "--weights", str(out), "--data", str(image_set), "--captions",
                 str(image_set / "captions.jsonl"), "--profile", "tiny", "--val-fraction", "0.25", "--grid",
                 str(tmp_path / "grid.png"), "--grid-images", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["held_out_items"] == 4 and 0 < report["val_cosine"] <= 1
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 192, 24 + 2 * 192)


def assert_the_condition_frame_is_prepared_as_served(models, clip_set, features):
    """The clean first latent frame training conditions on is the VAE's encoding of the clip's first
    frame prepared as the renderer prepares its condition image; the later frames are the clip's."""
    import torch

    from foresight.config import PRESETS
    from foresight.data import _encode, read_clip
    from foresight.video import prepare_condition

    frames = read_clip(clip_set / "clip0.mp4", PRESETS["fast"])
    prepared = np.array(prepare_condition(Image.fromarray(frames[0]), models.settings.sampling.condition_crf))
    as_served, raw = _encode(models.video_pipeline, prepared[None])[0], _encode(models.video_pipeline, frames)[0]
    latents = features[0]["latents"].float()
    assert torch.allclose(latents[:, :1], as_served.float(), atol=0.05)
    assert not torch.allclose(latents[:, :1], raw[:, :1].float(), atol=0.05)
    assert torch.allclose(latents[:, 1:], raw[:, 1:].float(), atol=0.05)
