"""`python -m foresight predict` as a user runs it: live text, an mp4 and an event log in protocol order."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from foresight.config import MAX_SEGMENTS, PRESETS

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "foresight", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def in_process(capsys, *args):
    """`python -m foresight ARGS` run in this process (the entry point itself is run as a subprocess once,
    by the predict test below, which is what a user types):
    (exit code, stdout, stderr)."""
    from foresight.__main__ import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
    previews = [ev for ev in events if ev["type"] == "video_frame"]
    assert previews and all(Path(ev["path"]).parent == tmp_path / "out" for ev in previews), "JPEG files, not bytes"
    assert result.stdout.strip() == events[-1]["text"].strip()
    video = Path(events[-1]["video_url"])
    assert video.parent == tmp_path / "out"
    assert iio.imread(video, plugin="FFMPEG").shape[0] == PRESETS["fast"].num_frames
    spans = json.loads((tmp_path / "trace" / "timeline.json").read_text())["spans"]
    assert {"prefill", "step 0", "VAE decode", "mp4"} <= {span["name"] for span in spans}
    picture = Image.open(tmp_path / "trace" / "timeline.png")
    assert picture.size[0] > 800 and np.asarray(picture.convert("L")).std() > 10  # drawn, not blank


def test_predict_refuses_a_bad_image_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"nope")
    code, _, err = in_process(capsys, "predict", str(tmp_path / "bad.png"), "--profile", "tiny")
    assert code == 2 and err.strip() == "error: That file could not be read as an image. Try a PNG or JPEG."


def test_predict_continue_goes_on_from_its_own_run_or_from_a_bare_mp4(photo, tmp_path, capsys):
    fast = PRESETS["fast"]
    added = fast.num_frames - fast.condition_frames
    photo.save(tmp_path / "some.png")
    code, _, err = in_process(capsys, "predict", str(tmp_path / "some.png"), "--profile", "tiny", "--preset", "fast",
                              "--out", str(tmp_path / "a"), "--seed", "1")
    first = next((tmp_path / "a").glob("*.mp4"))
    assert code == 0 and f"--continue {first}" in err, "the console says how to go on"
    code, _, err = in_process(capsys, "predict", "--continue", str(first), "--profile", "tiny",
                              "--out", str(tmp_path / "b"), "--seed", "2", "--sharper")
    assert code == 0 and f"segment 2 of at most {MAX_SEGMENTS}, from the story's last 9 frames; seed 2" in err
    assert "seed 2, two passes" in err, "the second segment in LTX's two passes"
    story = next((tmp_path / "b").glob("*.mp4"))
    assert iio.imread(story, plugin="FFMPEG").shape[0] == fast.num_frames + added
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / "clip.mp4"
    bare.write_bytes(story.read_bytes())  # no record beside it: a stranger's clip
    code, _, err = in_process(capsys, "predict", "--continue", str(bare), "--profile", "tiny", "--preset", "fast",
                              "--out", str(tmp_path / "c"))
    assert code == 0 and "segment 2 of at most" in err, "a bare clip starts a story of its own"
    assert iio.imread(next((tmp_path / "c").glob("*.mp4")), plugin="FFMPEG").shape[0] == fast.num_frames + 2 * added
    code, _, err = in_process(capsys, "predict", str(tmp_path / "some.png"), "--continue", str(first))
    assert code == 2 and "not both" in err


def test_bench_prints_its_table_saves_it_and_draws_the_timeline(tmp_path, capsys):
    code, out, err = in_process(capsys, "bench", "--profile", "tiny", "--preset", "fast", "--runs", "1", "--decode",
                                "dynamic", "--previews", "2", "--mode", "text", "--json",
                                str(tmp_path / "bench.json"), "--trace", str(tmp_path / "t"), "--no-and-then",
                                "--profile-first-token", str(tmp_path / "profile.txt"))
    assert code == 0, err
    rows = [line.split(" | ")[:2] for line in out.splitlines() if line.startswith("| fast/")]
    variant = "dynamic · shared · pace 0 · previews 2"
    assert rows == [["| fast/text", variant]]  # several variants, fused, and then: tests/test_bench.py
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["profile"] == "tiny" and saved["results"][variant]["fast/text"]["ttft"]["n"] == 1
    assert len(list((tmp_path / "t").glob("fast-*.png"))) == 1 and len(list((tmp_path / "t").glob("fast-*.json"))) == 1
    profile = (tmp_path / "profile.txt").read_text()
    assert profile.startswith("time to the first token") and "stream_reasoning" in profile


def test_bench_refuses_an_unknown_decode(capsys):
    from foresight.__main__ import main

    with pytest.raises(SystemExit) as refused:
        main(["bench", "--decode", "fast"])
    assert refused.value.code == 2 and "use one or more of dynamic, static" in capsys.readouterr().err


def test_check_runs_every_step_and_says_what_random_weights_cannot_show(tmp_path, capsys):
    code, out, err = in_process(capsys, "check", "--profile", "tiny", "--json", str(tmp_path / "check.json"))
    assert code == 0, out + err
    report = {row["name"]: row for row in json.loads((tmp_path / "check.json").read_text())}
    for name in ("LTX file type", "LTX file keys", "LTX file config", "LTX VAE padding", "LTX upscaler keys",
                 "LTX upscaler config", "a run without errors", "text streams", "mp4 decodes to the preset's frames",
                 "previews at the cadence's steps", "And then?: the clip, then the new frames",
                 "two passes: frames at the preset's size", "two passes: previews of both"):
        assert report[name]["status"] == "pass", report[name]
    for name in ("a prediction line ('Next: …')", "first frame close to the input", "frames change over time",
                 "last preview close to the final frame", "…flowing on from its last frame", "…sharper than one pass"):
        assert report[name]["status"] == "not meaningful with random weights", report[name]
    assert report["passes"]["value"].startswith("one, or two: 160×96, then 320×192")
    assert "PSNR" in report["first frame close to the input"]["value"]
    assert "not meaningful with random weights" in out and out.strip().splitlines()[-1].startswith("PASS")
