"""`python -m foresight predict` as a user runs it: live text, an mp4 and an event log in protocol order."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "foresight", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_predict_writes_video_and_event_log(photo, tmp_path):
    photo.save(tmp_path / "some.png")
    result = run_cli("predict", str(tmp_path / "some.png"), "--profile", "tiny", "--preset", "fast",
                     "--events", str(tmp_path / "ev.jsonl"), "--out", str(tmp_path / "out"), "--seed", "4")
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


def test_predict_refuses_a_bad_image_in_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = run_cli("predict", str(tmp_path / "bad.png"), "--profile", "tiny")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: That file could not be read as an image. Try a PNG or JPEG."


def test_bench_prints_the_table_for_each_decode(tmp_path):
    result = run_cli("bench", "--profile", "tiny", "--preset", "fast", "--runs", "1", "--decode", "dynamic,static",
                     "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| fast |")]
    assert [row.split(" | ")[1] for row in rows] == ["dynamic/shared", "static/shared"]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["profile"] == "tiny" and saved["results"]["static/shared"]["fast"]["ttft"]["n"] == 1


def test_bench_refuses_an_unknown_decode():
    result = run_cli("bench", "--decode", "fast")
    assert result.returncode == 2 and "use one or more of dynamic, static" in result.stderr
