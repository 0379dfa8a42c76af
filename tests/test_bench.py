"""The benchmark's numbers come from real runs' events, and the random-full profile builds the real sizes."""

import dataclasses
import json
import threading

import pytest
import torch
from PIL import Image

from foresight.bench import (METRICS, bench, bench_variants, format_table, parse_variant, run_metrics, summarize,
                             variants)

from conftest import run_events


def test_bench_measures_the_timeline_through_the_pipeline(pipe, photo, tmp_path):
    results = bench(pipe, ["fast"], runs=1, modes=[None], image=photo, passes=(1, 2))  # summaries: below
    fast = results["fast/fused"]
    two = results["fast/fused · two passes"]  # LTX's authors' two passes, beside one
    assert all(two[key]["n"] == 1 for key in ("ttft", "first_frame", "video_ready")) and "fast/fused · two passes · " \
        "and then" not in results
    for key in ("ttft", "first_frame", "video_ready", "tok_s_alone", "mp4_write"):
        assert fast[key]["n"] == 1 and fast[key]["median"] > 0, key
    assert fast["ttft"]["median"] < fast["video_ready"]["median"]
    going_on = results["fast/fused · and then"]  # the next segment of a story the preset made
    for key in ("ttft", "first_frame", "video_ready", "encode_s", "mp4_write"):
        assert going_on[key]["n"] == 1, key
    if not torch.cuda.is_available():
        assert fast["peak_gib"] is None
    json.dumps(results)


def test_a_row_is_the_median_and_range_of_its_runs_and_a_missing_measure_is_none():
    runs = [{"ttft": 0.3, "video_ready": 2.0}, {"ttft": 0.1, "video_ready": None}, {"ttft": 0.2, "video_ready": 1.0}]
    summary = summarize(runs)
    assert summary["ttft"] == {"median": 0.2, "min": 0.1, "max": 0.3, "n": 3}
    assert summary["video_ready"] == {"median": 1.5, "min": 1.0, "max": 2.0, "n": 2}
    assert summary["first_frame"] is None


def test_bench_compares_variants_on_the_same_models(models, photo, tmp_path):
    before = models.settings
    settings_list = variants(models.settings, ["dynamic"], ["shared", "streams"], [30.0], [1])
    results = bench_variants(models, ["fast"], runs=1, settings_list=settings_list, modes=["fused"],
                             image=photo, trace_dir=tmp_path, and_then=False)  # its rows: the test above
    assert list(results) == ["dynamic · shared · pace 30 · previews 1", "dynamic · streams · pace 30 · previews 1"]
    assert all(by_row["fast/fused"]["video_ready"]["n"] == 1 for by_row in results.values())  # text: tests/test_cli.py
    assert models.settings == before  # left as they were
    table = format_table(results).splitlines()
    assert all(label in table[0] for _, label, _ in METRICS)
    assert [row.split(" | ")[1] for row in table[2:4]] == list(results)
    pictures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pictures == [f"fast-fused-dynamic-{schedule}-pace-30-previews-1.png" for schedule in ("shared", "streams")]


def test_run_metrics_count_tokens_decoded_while_the_video_renders(pipe, photo, tmp_path):
    events = run_events(pipe, photo, seed=2, out_dir=tmp_path)
    end = events[-1]
    metrics = run_metrics(events)
    assert end["tokens"] == len(end["token_times"]) > 0
    assert metrics["overlap_tokens"] == sum(
        end["video_start"] <= t <= min(end["video_ready"], end["token_times"][-1]) for t in end["token_times"])


def test_a_variant_names_every_timing_setting_it_changes(models):
    label, settings = parse_variant("static:streams:45:2:early:compiled", models.settings)
    assert label == "static · streams · pace 45 · previews 2 · DINOv2 early · compiled"
    assert (settings.decode, settings.schedule, settings.text_pace, settings.preview_every, settings.vision_early,
            settings.compile_video) == ("static", "streams", 45.0, 2, True, True)
    label, settings = parse_variant("dynamic:shared:0:1", models.settings)
    assert label == "dynamic · shared · pace 0 · previews 1" and not settings.vision_early
    label, settings = parse_variant("static:streams:45:2:graphs", models.settings)
    assert label == "static · streams · pace 45 · previews 2 · video graphs" and settings.video_graphs
    for wrong in ("static:streams:45", "static:streams:45:2:fast", "static:streams:45:2:early:early",
                  "static:streams:45:2:compiled:graphs"):
        with pytest.raises(ValueError, match="decode:schedule:pace:previews"):
            parse_variant(wrong, models.settings)

def test_random_full_builds_the_real_sizes(models):
    from foresight.profiles.random_full import build_models

    settings = dataclasses.replace(models.settings, profile="random-full", device="meta", dtype="bfloat16")
    full = build_models(settings, log=lambda m: None)

    def billions(module):
        return sum(p.numel() for p in module.parameters()) / 1e9

    assert 8.2 < billions(full.vlm) < 8.4  # Qwen2.5-VL-7B: 8.29B with its vision tower
    assert 0.30 < billions(full.vision) < 0.31  # DINOv2-L
    assert 1.9 < billions(full.video_pipeline.transformer) < 2.0  # LTX-Video 2B
    assert 4.7 < billions(full.video_pipeline.text_encoder) < 4.8  # T5-XXL encoder
    assert full.video_pipeline.vae_spatial_compression_ratio == 32 and full.video_pipeline.vae_temporal_compression_ratio == 8
    assert full.vlm.lm_head.weight.dtype == torch.bfloat16


def test_random_full_vlm_writes_every_token_asked_for_and_only_ones_it_can_show(models):
    """The stand-in tokenizer knows a few hundred of Qwen's 152k ids: the random VLM must write only
    those and never an end token, with the real checkpoint's generation config (no suppress list)."""
    from foresight.profiles.random_full import QWEN_7B_TEXT, QWEN_7B_VISION, build_vlm
    from foresight.vlm import build_inputs, stream_reasoning

    narrow_text = dict(QWEN_7B_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2,
                       rope_parameters=dict(QWEN_7B_TEXT["rope_parameters"], mrope_section=[2, 3, 3]))
    narrow_vision = dict(QWEN_7B_VISION, depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                         out_hidden_size=64, fullatt_block_indexes=[1])
    tokenizer = models.vlm_processor.tokenizer
    torch.manual_seed(0)
    vlm = build_vlm(tokenizer, "cpu", torch.float32, narrow_text, narrow_vision)
    assert vlm.generation_config.suppress_tokens is None and vlm.generation_config.top_k == 1
    narrow = dataclasses.replace(models, vlm=vlm, settings=dataclasses.replace(models.settings, decode="dynamic"))
    inputs = build_inputs(narrow, Image.new("RGB", (64, 48), (90, 140, 30)), "")

    with torch.no_grad():
        logits = vlm(**inputs).logits[0, -1]
    ends = vlm.generation_config.eos_token_id
    assert (logits[len(tokenizer):] == 0).all() and (logits[ends] == 0).all() and logits.max() > 0
    ids = vlm.generate(**inputs, max_new_tokens=40)[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(ids) == 40 and max(ids) < len(tokenizer)
    assert not set(ids) & set(ends)
    texts = []
    stream_reasoning(narrow, inputs, texts.append, threading.Event(), max_new_tokens=40)
    assert "".join(texts) == tokenizer.decode(ids, skip_special_tokens=True)


def test_two_passes_cost_about_one_passs_steps_by_tokens():
    """The issue's estimate for `default` (7 x 0.39 + 3 x 1.56 of today's steps), as the bench prints it."""
    from foresight.bench import pass_costs
    from foresight.config import VideoSampling

    table = pass_costs(["default"], VideoSampling()).splitlines()
    assert table[-1] == "| default 512×512 | 1792 × 7 | 700 × 7, 2800 × 3 | 10 | 1.06 | 1.20 |"
