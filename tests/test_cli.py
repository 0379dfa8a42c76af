"""`python -m foresight predict` as a user runs it: live text, an mp4 and an event log in protocol order."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "foresight", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_predict_writes_video_event_log_and_timeline(photo, tmp_path):
    photo.save(tmp_path / "some.png")
    result = run_cli("predict", str(tmp_path / "some.png"), "--profile", "tiny", "--preset", "fast",
                     "--events", str(tmp_path / "ev.jsonl"), "--out", str(tmp_path / "out"), "--seed", "4",
                     "--trace", str(tmp_path / "trace"))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    kinds = [ev["type"] for ev in events]
    assert kinds[0] == "thinking_start" and kinds[-1] == "thinking_complete"
    assert kinds.index("text_chunk") < kinds.index("video_complete")
    assert all("data" not in ev for ev in events)
    assert result.stdout.strip() == events[-1]["text"].strip()
    video = Path(events[-1]["video_url"])
    assert video.parent == tmp_path / "out"
    assert iio.imread(video, plugin="FFMPEG").shape[0] == 17
    spans = json.loads((tmp_path / "trace" / "timeline.json").read_text())["spans"]
    assert {"prefill", "step 0", "VAE decode", "mp4"} <= {span["name"] for span in spans}
    picture = Image.open(tmp_path / "trace" / "timeline.png")
    assert picture.size[0] > 800 and np.asarray(picture.convert("L")).std() > 10  # drawn, not blank


def test_predict_refuses_a_bad_image_in_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = run_cli("predict", str(tmp_path / "bad.png"), "--profile", "tiny")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: That file could not be read as an image. Try a PNG or JPEG."


def test_bench_prints_the_table_for_each_variant_and_draws_timelines(tmp_path):
    result = run_cli("bench", "--profile", "tiny", "--preset", "fast", "--runs", "1", "--decode", "dynamic,static",
                     "--mode", "fused,text", "--json", str(tmp_path / "bench.json"), "--trace", str(tmp_path / "t"),
                     "--profile-first-token", str(tmp_path / "profile.txt"))
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[:2] for line in result.stdout.splitlines() if line.startswith("| fast/")]
    assert rows == [["| fast/fused", "dynamic · shared · pace 0 · previews 1"], ["| fast/fused", "static · shared · pace 0 · previews 1"],
                    ["| fast/text", "dynamic · shared · pace 0 · previews 1"], ["| fast/text", "static · shared · pace 0 · previews 1"]]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["profile"] == "tiny" and saved["results"]["static · shared · pace 0 · previews 1"]["fast/text"]["ttft"]["n"] == 1
    assert len(list((tmp_path / "t").glob("fast-*.png"))) == 4 and len(list((tmp_path / "t").glob("fast-*.json"))) == 4
    profile = (tmp_path / "profile.txt").read_text()
    assert profile.startswith("time to the first token") and "stream_reasoning" in profile


def test_bench_refuses_an_unknown_decode():
    result = run_cli("bench", "--decode", "fast")
    assert result.returncode == 2 and "use one or more of dynamic, static" in result.stderr


def test_check_runs_every_step_and_says_what_random_weights_cannot_show(tmp_path):
    result = run_cli("check", "--profile", "tiny", "--json", str(tmp_path / "check.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = {row["name"]: row for row in json.loads((tmp_path / "check.json").read_text())}
    for name in ("a run without errors", "text streams", "mp4 decodes to the preset's frames",
                 "previews at the cadence's steps"):
        assert report[name]["status"] == "pass", report[name]
    for name in ("a prediction line ('Next: …')", "first frame close to the input", "frames change over time",
                 "last preview close to the final frame"):
        assert report[name]["status"] == "not meaningful with random weights", report[name]
    assert "PSNR" in report["first frame close to the input"]["value"]
    assert "not meaningful with random weights" in result.stdout and result.stdout.strip().splitlines()[-1].startswith("PASS")
