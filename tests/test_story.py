"""And then?": a story goes on from its last frames, through the pipeline as the page, the CLI and
the API call it (tiny profile; random weights, so the condition is checked where it acts: LTX's
latents, not pixels)."""

import json
import shutil
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from foresight import story as story_files
from foresight import video as video_stage
from foresight import vlm as vlm_stage
from foresight.config import MAX_SEGMENTS, PRESETS, Preset, VideoSampling
from foresight.inputs import MAX_CLIP_FRAMES, MAX_CLIP_SECONDS, crop_and_resize, read_clip
from foresight.media import Mp4Writer
from foresight.video import prepare_condition

from conftest import inject_out_of_memory

FAST = PRESETS["fast"]
NEW_FRAMES = FAST.num_frames - FAST.condition_frames  # what a fast continuation adds


def run(pipe, **kwargs):
    events = list(pipe(**{"preset": "fast", **kwargs}))
    errors = [ev for ev in events if ev["type"] == "error"]
    return events, errors


def finished(events) -> str:
    done = [ev for ev in events if ev["type"] == "video_complete"]
    assert len(done) == 1, events[-1]
    return done[0]["video_url"]


@pytest.fixture(scope="module")
def first(pipe, tmp_path_factory):
    """A first segment at `fast`: its mp4, whose record and last frames lie beside it."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("first")
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[:, :160] = (230, 40, 40)
    events, errors = run(pipe, image=Image.fromarray(rgb), seed=1, out_dir=folder, video_name="first")
    assert not errors, errors
    return finished(events)


def decoded(path) -> np.ndarray:
    return iio.imread(path, plugin="FFMPEG")


# --- what a run keeps -------------------------------------------------------------------------------------


def test_a_run_keeps_its_record_and_its_last_frames_lossless(pipe, photo, tmp_path, monkeypatch):
    rendered = []
    real_render = video_stage.render
    monkeypatch.setattr(video_stage, "render", lambda *a, **k: rendered.append(real_render(*a, **k)) or rendered[-1])
    events, errors = run(pipe, image=photo, seed=1, out_dir=tmp_path, prompt="Where does it go?")
    story = story_files.load(finished(events))
    assert len(story.segments) == 1 and story.segments[0]["seed"] == 1 and story.segments[0]["text"] == events[-1]["text"]
    assert story.segments[0]["question"] == "Where does it go?" and story.segments[0]["preset"] == "fast"
    assert story.num_frames == FAST.num_frames and story.fps == FAST.fps
    assert np.array_equal(story.tail(), rendered[0][-FAST.condition_frames:].numpy()), "the last 9, as rendered"
    assert not np.array_equal(decoded(story.video)[-FAST.condition_frames:], story.tail()), "(the mp4 is lossy)"


# --- the condition, where it acts -----------------------------------------------------------------------------


def test_the_new_segment_begins_with_the_storys_last_frames_held_at_their_encoding(models, pipe, first, tmp_path,
                                                                                   monkeypatch):
    """LTX encodes the conditioning frames and holds every latent frame they cover at that encoding
    (noised by image_cond_noise_scale x sigma^2 at each step; the last step's sigma is 0.725, so the
    difference is normal with sd 0.15 x 0.725^2 = 0.079: the bound is 6 sd). Spies on the real VAE
    and transformer read what went in."""
    pipeline, sampling = models.video_pipeline, VideoSampling()
    encoded, last_input = [], {}
    real_encode = pipeline.vae.encode

    def encode(pixels, *args, **kwargs):
        output = real_encode(pixels, *args, **kwargs)
        real_sample = output.latent_dist.sample

        def sample(*a, **k):
            latents = real_sample(*a, **k)
            encoded.append((pixels.detach().float().clone(), latents.detach().float().clone()))
            return latents
        output.latent_dist.sample = sample
        return output

    monkeypatch.setattr(pipeline.vae, "encode", encode)
    hook = pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: last_input.update(latents=kwargs["hidden_states"].detach().float().clone()),
        with_kwargs=True)
    try:
        events, errors = run(pipe, story=first, seed=2, out_dir=tmp_path)
    finally:
        hook.remove()
    assert not errors and events[0]["segment"] == 2 and events[0]["condition_frames"] == FAST.condition_frames

    story = story_files.load(first)
    prepared = [prepare_condition(crop_and_resize(as_image(frame), story.width, story.height), sampling.condition_crf)
                for frame in story.tail()]
    expected_pixels = pipeline.video_processor.preprocess_video(prepared, story.height, story.width)
    assert len(encoded) == 1, "one encode: the conditioning frames"
    pixels, sample = encoded[0]
    assert pixels.shape == expected_pixels.shape, "the story's last 9 frames, not one frame"
    assert torch.allclose(pixels, expected_pixels.float(), atol=1e-2), "the story's own last frames"

    covered = sample.shape[2]  # latent frames: 1 + (9 - 1) / 8 = 2
    assert covered == 1 + (FAST.condition_frames - 1) // pipeline.vae_temporal_compression_ratio
    normalized = pipeline._normalize_latents(sample, pipeline.vae.latents_mean, pipeline.vae.latents_std)
    packed = pipeline._pack_latents(normalized, pipeline.transformer_spatial_patch_size,
                                    pipeline.transformer_temporal_patch_size)
    final = last_input["latents"][:, :packed.shape[1]]
    bound = 6 * sampling.image_cond_noise_scale * (sampling.timesteps[-1] / 1000) ** 2
    difference = (final - packed).abs()
    assert difference.max() < bound, f"held at their encoding: {difference.max():.3f} >= {bound:.3f}"
    assert difference.max() > 0, "and noised as the authors do"
    rest = last_input["latents"][:, packed.shape[1]:]
    assert rest.abs().mean() > 3 * difference.mean(), "the frames after them are the model's own"


def as_image(rgb):
    from PIL import Image

    return Image.fromarray(rgb)


# --- the mp4 of the whole story ---------------------------------------------------------------------------


def test_the_story_so_far_opens_the_joined_mp4_unchanged_and_the_overlap_is_written_once(pipe, first, tmp_path):
    events, errors = run(pipe, story=first, seed=3, out_dir=tmp_path, video_name="second")
    assert not errors
    done = [ev for ev in events if ev["type"] == "video_complete"][0]
    assert done["segment_frames"] == NEW_FRAMES and done["num_frames"] == FAST.num_frames + NEW_FRAMES
    joined, earlier = decoded(done["video_url"]), decoded(first)
    assert joined.shape[0] == FAST.num_frames + NEW_FRAMES
    assert iio.immeta(done["video_url"], plugin="FFMPEG")["fps"] == FAST.fps
    assert np.array_equal(joined[:FAST.num_frames], earlier), "the earlier story, not re-encoded"
    assert {ev["segment"] for ev in events} == {2}, "every event says its segment"
    record = json.loads(story_files.record_path(done["video_url"]).read_text())
    assert [segment["seed"] for segment in record["segments"]] == [1, 3]
    assert record["num_frames"] == joined.shape[0]
    boxes = top_level_boxes(Path(done["video_url"]))
    assert boxes.index(b"moov") < boxes.index(b"mdat"), "the index up front: the page plays it as it is (RunVideo)"


def top_level_boxes(path: Path) -> list[bytes]:
    """An mp4's top-level boxes, in file order."""
    import struct

    data, at, boxes = path.read_bytes(), 0, []
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        size = struct.unpack(">Q", data[at + 8:at + 16])[0] if size == 1 else size
        boxes.append(kind)
        at += size or len(data)
    return boxes


def test_qwen_looks_at_the_last_frame_told_what_the_story_foresaw(models, pipe, first, tmp_path, monkeypatch):
    seen = []
    real_view = vlm_stage.vlm_view

    def vlm_view(image, *args):
        seen.append(np.asarray(image).copy())
        return real_view(image, *args)

    prompts = []
    real_template = models.vlm_processor.apply_chat_template

    def apply_chat_template(*args, **kwargs):
        prompts.append(real_template(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(vlm_stage, "vlm_view", vlm_view)
    monkeypatch.setattr(models.vlm_processor, "apply_chat_template", apply_chat_template)
    events, errors = run(pipe, story=first, seed=4, out_dir=tmp_path, prompt="And then?")
    assert not errors
    story = story_files.load(first)
    assert len(seen) >= 1 and all(np.array_equal(view, story.tail()[-1]) for view in seen), "the story's last frame"
    said = " ".join(story.prediction.split())
    assert prompts and all(f"last frame of a video that showed: {said}\nAnd then?<|im_end|>" in prompt
                           for prompt in prompts), "one line of context, then the question"


# --- limits, Stop, out of memory, retry -------------------------------------------------------------------


def test_a_story_at_its_segment_limit_is_refused_in_words(pipe, first, tmp_path):
    full = tmp_path / "full"
    shutil.copytree(story_files.load(first).video.parent, full)
    record = story_files.record_path(full / "first.mp4")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "segments": data["segments"] * MAX_SEGMENTS}))
    events, errors = run(pipe, story=full / "first.mp4", out_dir=tmp_path / "next")
    assert [ev["type"] for ev in events] == ["error"] and errors[0]["stage"] == "input"
    assert f"reached its {MAX_SEGMENTS} segments" in errors[0]["message"]
    assert not (tmp_path / "next" / story_files.BEFORE).exists(), "nothing carried for a refused story"


def test_stop_mid_segment_leaves_the_story_so_far_whole_and_playable(pipe, first, tmp_path):
    before = sorted(path.name for path in story_files.load(first).video.parent.iterdir())
    stop, events = threading.Event(), []
    for ev in pipe(story=first, preset="fast", seed=5, out_dir=tmp_path, stop=stop):
        events.append(ev)
        if ev["type"] == "video_frame":
            stop.set()
    assert events[-1]["stopped"] is True and "video_complete" not in {ev["type"] for ev in events}
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*" + story_files.RECORD))
    assert sorted(path.name for path in story_files.load(first).video.parent.iterdir()) == before
    assert decoded(first).shape[0] == FAST.num_frames


def test_out_of_memory_steps_down_from_the_storys_frames_and_keeps_the_storys_size(models, pipe, photo, tmp_path,
                                                                                   monkeypatch):
    # `default` made smaller, still larger than `fast` (what matters here is the step down, not the size)
    monkeypatch.setitem(PRESETS, "default", Preset("default", 384, 384, 33, 24))
    events, errors = run(pipe, image=photo, preset="default", seed=6, out_dir=tmp_path / "a", video_name="a")
    story = story_files.load(finished(events))
    handle = inject_out_of_memory(models, times=1)
    try:
        events, errors = run(pipe, story=story.video, preset=None, seed=7, out_dir=tmp_path / "b")
    finally:
        handle.remove()
    assert events[0]["preset"] == "default", "a story goes on at its own preset"
    assert [ev.get("retry_preset") for ev in errors] == ["fast"]
    done = [ev for ev in events if ev["type"] == "video_complete"][0]
    joined = decoded(done["video_url"])
    assert joined.shape == (PRESETS["default"].num_frames + NEW_FRAMES, story.height, story.width, 3)
    assert np.array_equal(joined[:story.num_frames], decoded(story.video))


def test_retry_renders_the_segment_again_from_the_same_frames(pipe, first, tmp_path):
    events, _ = run(pipe, story=first, seed=8, out_dir=tmp_path, video_name="seg", frame_events=True)
    frames = [ev["path"] for ev in events if ev.get("kind") == "frame"]
    again, errors = run(pipe, story=tmp_path / story_files.BEFORE, seed=8, out_dir=tmp_path, video_name="seg-retry",
                        reasoning=events[-1]["text"], frame_events=True)
    assert not errors and again[0]["segment"] == 2
    frames_again = [ev["path"] for ev in again if ev.get("kind") == "frame"]
    assert len(frames_again) == FAST.num_frames
    assert all(np.array_equal(iio.imread(a), iio.imread(b)) for a, b in zip(frames, frames_again))
    assert decoded(finished(again)).shape[0] == FAST.num_frames + NEW_FRAMES


# --- a bare clip: a stranger's file ---------------------------------------------------------------------------


def write_clip(path, frames: int, fps: int, size=(96, 64)):
    writer = Mp4Writer(path, *size, fps)
    rgb = np.zeros((frames, size[1], size[0], 3), np.uint8)
    rgb[:, :, :, 0] = np.linspace(0, 255, frames, dtype=np.uint8)[:, None, None]
    writer.write(rgb)
    return path


def test_a_bare_clip_goes_on_from_its_last_frames_at_the_presets_rate(pipe, tmp_path):
    clip = write_clip(tmp_path / "theirs.mp4", frames=30, fps=30)  # 1 s at 30 fps: 24 frames at 24
    events, errors = run(pipe, clip=clip, seed=9, out_dir=tmp_path / "run")
    assert not errors and events[0]["segment"] == 2 and events[0]["story_frames"] == 24
    done = [ev for ev in events if ev["type"] == "video_complete"][0]
    assert decoded(done["video_url"]).shape[0] == 24 + NEW_FRAMES


def hide_length(path):
    """The mp4's stated lengths (movie, track, media) patched to one tick: the stream no longer says
    how long it is, and only decoding can tell."""
    import struct

    data = bytearray(path.read_bytes())
    for box, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):  # version 0: 32-bit durations
        at = data.find(box)
        assert at > 0 and data[at + 4] == 0, box
        struct.pack_into(">I", data, at + 4 + offset, 1)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["too long", "hides its length", "not a video"])
def test_a_clip_over_its_budget_or_unreadable_is_refused_in_words(pipe, tmp_path, kind):
    if kind == "too long":
        clip = write_clip(tmp_path / "long.mp4", frames=(MAX_CLIP_SECONDS + 3) * 8, fps=8, size=(32, 32))
        said = f"That clip is {MAX_CLIP_SECONDS + 3} s long"
    elif kind == "hides its length":  # refused as it decodes, past the frames the budget allows
        clip = hide_length(write_clip(tmp_path / "hidden.mp4", frames=MAX_CLIP_FRAMES + 10, fps=8, size=(32, 32)))
        said = f"runs past {MAX_CLIP_SECONDS} s"
    else:
        clip = tmp_path / "fake.mp4"
        clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
        said = "could not be read as a video"
    events, errors = run(pipe, clip=clip, out_dir=tmp_path / "run")
    assert [ev["type"] for ev in events] == ["error"] and said in errors[0]["message"]
    assert not (tmp_path / "run" / story_files.BEFORE).exists()


def test_a_clip_whose_container_claims_its_frame_lasts_hours_costs_one_frame(tmp_path):
    """A 1.5 kB mp4, one frame at a rate of 1/30000 and its stated length hidden: taken at its word
    it would be 720,000 frames to encode."""
    import av
    from fractions import Fraction

    path = tmp_path / "slow.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(1, 30000))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")),
                       *stream.encode()]:
            container.mux(packet)
    assert len(list(read_clip(hide_length(path), FAST.fps))) == 1
