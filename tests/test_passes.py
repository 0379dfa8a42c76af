"""LTX in the authors' two passes, through the pipeline: the order, the sizes and timesteps each pass
runs at, previews across both, the frames at the size asked for, and everything else that follows
(a story going on, the out-of-memory step-down). (Each stage against the authors' own code:
tests/test_ltx_authors.py.)"""

import threading

import numpy as np
import pytest
import torch

from foresight import passes
from foresight import video as video_stage
from foresight.config import PRESETS, VideoSampling
from foresight.events import decode_frame
from foresight.inputs import video_view

from conftest import frames_of, inject_out_of_memory, run_events, with_settings

SAMPLING = VideoSampling()


def forwards(models):
    """Each transformer call's (tokens, highest timestep), recorded by a hook (remove it)."""
    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["hidden_states"].shape[1], round(float(kwargs["timestep"].max()), 1)))

    return seen, models.video_pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)


def test_two_passes_run_as_the_authors_order_them_and_show_previews_of_both(models, pipe, photo, tmp_path):
    seen, hook = forwards(models)
    try:
        events = run_events(pipe, photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True, passes=2)
    finally:
        hook.remove()
    start, end = events[0], events[-1]
    size, clip = (start["width"], start["height"]), start["num_frames"]
    first, second = passes.pass_sizes(*size, SAMPLING.downscale_factor)
    assert start["passes"] == 2 and start["pass_steps"] == [7, 3]
    assert seen == [(passes.tokens(*first, clip), t) for t in SAMPLING.timesteps] + \
        [(passes.tokens(*second, clip), t) for t in SAMPLING.second_pass_timesteps], \
        "seven steps at two thirds of the size, then three of the second pass's own at twice that"
    previews = [ev for ev in events if ev["type"] == "video_frame" and ev["kind"] == "preview"]
    assert [(ev["pass"], ev["step"], ev["num_steps"]) for ev in previews] == \
        [(1, step, 7) for step in (0, 2, 4, 6)] + [(2, step, 3) for step in (0, 2)], "every second step and the last"
    assert all(decode_frame(ev).size == size for ev in previews), "every preview at the clip's size"
    frames = frames_of(events)
    assert len(frames) == clip and frames[0].shape == (size[1], size[0], 3), "the frames at the size asked for"
    names = [span["name"] for span in end["spans"]]
    assert names.index("step 6") < names.index("upscale") < names.index("pass 2 step 0")
    assert end["video_url"] and not [ev for ev in events if ev["type"] == "error"]


@pytest.mark.parametrize("count", [1, 2])
def test_the_frames_are_the_last_passs_latents_decoded_once_as_the_authors_decode_them(models, photo, count,
                                                                                      monkeypatch):
    """One VAE decode, `video.decode_video`'s (the authors' order of noise and un-normalizing:
    tests/test_ltx_authors.py), of the last pass's latents; none inside diffusers' pipeline."""
    decoded, decoder = [], models.video_pipeline.vae.decoder
    real = video_stage.decode_video
    monkeypatch.setattr(video_stage, "decode_video", lambda *args: decoded.append(real(*args)) or decoded[-1])
    hook = decoder.register_forward_pre_hook(lambda module, args: decoded.append("a decoder forward"))
    condition = video_view(photo, PRESETS["fast"])
    embeds, mask = video_stage.text_conditioning(models, "a square slides")
    try:
        frames = video_stage.render(with_settings(models, preview_every=0), [condition], 25, 24, 0, embeds, mask,
                                    threading.Event(), passes=count)
    finally:
        hook.remove()
    assert decoded[0] == "a decoder forward" and len(decoded) == 2, "no previews here: one decode, ours"
    assert torch.equal(frames, video_stage.to_uint8(passes.resized(decoded[1], condition.size)).permute(0, 2, 3, 1))


def test_the_last_preview_of_the_second_pass_matches_the_final_frame(models, photo, tmp_path):
    from dataclasses import replace

    from foresight.pipeline import ForesightPipeline

    exact = replace(models, settings=replace(models.settings, preview_decode="whole"))
    events = run_events(ForesightPipeline(exact), photo, mode="fused", seed=2, out_dir=tmp_path, frame_events=True,
                        passes=2)
    previews = [ev for ev in events if ev["type"] == "video_frame" and ev["kind"] == "preview"]
    last_preview = np.asarray(decode_frame(previews[-1]), dtype=np.int16)
    first_preview = np.asarray(decode_frame(previews[0]), dtype=np.int16)
    final = frames_of(events)[-1]
    assert previews[-1]["pass"] == 2
    assert np.abs(last_preview - final).mean() < 0.25 * np.abs(first_preview - final).mean()
    assert np.abs(last_preview - final).mean() < 4


def test_the_second_pass_starts_from_the_upscaled_first_noised_to_its_first_timestep(models, pipe, photo, tmp_path,
                                                                                      monkeypatch):
    pipeline, upsampled, prepared, generators = models.video_pipeline, [], [], []
    upsample = passes.upsample
    monkeypatch.setattr(passes, "upsample", lambda *args: upsampled.append(upsample(*args)) or upsampled[-1])
    prepare = pipeline.prepare_latents

    def recording(*args, **kwargs):
        made = prepare(*args, **kwargs)
        given = kwargs.get("latents")
        latents = made[0] if given is None else pipeline._unpack_latents(made[0], *given.shape[2:], 1, 1)
        prepared.append((given, kwargs.get("sigma"), latents))
        generators.append(kwargs["generator"])
        return made

    monkeypatch.setattr(pipeline, "prepare_latents", recording)
    run_events(pipe, photo, mode="fused", seed=3, out_dir=tmp_path, passes=2)
    (none, no_sigma, _), (given, sigma, noised) = prepared
    assert none is None and no_sigma is None, "the first pass begins from noise"
    assert given is not None and torch.equal(given, upsampled[0]), "the second from the upscaled first"
    assert torch.allclose(sigma, torch.tensor([SAMPLING.second_pass_timesteps[0] / 1000]))
    assert generators[1] is generators[0], "the second pass draws on from the first's generator, as the authors'"

    noise = (noised - (1 - sigma) * given) / sigma  # what it was noised with, on the frames no condition holds
    later = noise[:, :, 1:]
    assert abs(float(later.mean())) < 0.1 and 0.9 < float(later.std()) < 1.1


def test_a_story_goes_on_in_two_passes_and_out_of_memory_steps_down_in_two_passes(models, pipe, photo, tmp_path):
    first = run_events(pipe, photo, mode="fused", seed=1, out_dir=tmp_path / "first", passes=2)[-1]["video_url"]
    going_on = run_events(pipe, None, story=first, mode="fused", seed=2, out_dir=tmp_path / "then", passes=2)
    added = PRESETS["fast"].num_frames - PRESETS["fast"].condition_frames
    done = [ev for ev in going_on if ev["type"] == "video_complete"]
    assert going_on[0]["passes"] == 2 and done and done[0]["segment_frames"] == added
    hook = inject_out_of_memory(models, times=1)
    try:
        events = run_events(pipe, photo, mode="fused", seed=1, out_dir=tmp_path / "oom", preset="default", passes=2)
    finally:
        hook.remove()
    retried = [ev for ev in events if ev["type"] == "error" and ev.get("retry_preset")]
    assert retried and retried[0]["retry_preset"] == "fast" and events[-1]["preset"] == "fast"
    assert [ev["pass"] for ev in events if ev["type"] == "video_frame"][-1] == 2, "the step down keeps two passes"


def test_two_passes_need_the_upscaler(models, photo, tmp_path):
    from dataclasses import replace

    from foresight.pipeline import ForesightPipeline

    events = run_events(ForesightPipeline(replace(models, upscaler=None)), photo, passes=2, out_dir=tmp_path)
    assert [ev["type"] for ev in events] == ["error"] and "latent upscaler" in events[0]["message"]


def test_the_second_pass_steps_by_its_own_sigmas(models, pipe, photo, tmp_path):
    """Between the second pass's steps the latents move by (next sigma - this sigma) x velocity, its
    sigmas 0.9094, 0.725, 0.4219: the scheduler starts at the second pass's first timestep, not at
    the top of the list diffusers is given (where a step would be 1.0 -> 0.9094)."""
    seen = []

    def record(module, args, kwargs, output):
        seen.append((kwargs["hidden_states"].float().clone(), kwargs["timestep"].float().clone(), output[0].float()))

    hook = models.video_pipeline.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        run_events(pipe, photo, mode="fused", seed=4, out_dir=tmp_path, passes=2)
    finally:
        hook.remove()
    second = seen[-3:]
    sigmas = [t / 1000 for t in SAMPLING.second_pass_timesteps]
    for k in range(2):
        (x_t, timestep, velocity), (after, *_) = second[k], second[k + 1]
        noised = timestep[0] > 0  # the condition's tokens are held, not stepped
        assert torch.allclose(after[:, noised], x_t[:, noised] + (sigmas[k + 1] - sigmas[k]) * velocity[:, noised],
                              atol=1e-3), k


def test_the_page_offers_the_second_pass_and_its_status_line_says_which_pass_runs(pipe):
    from test_app import EXAMPLE
    from test_story_page import Visitor, handlers

    from foresight.runtime import StopFlag

    page = handlers(pipe)
    ui = page.ui
    assert ui is not None and page.pipe.models.passes == (1, 2)
    updates = list(page.generate(EXAMPLE, "", "fast", True, "auto", 0, True, StopFlag(), Visitor()))
    statuses = [shown[ui.status] for shown in updates]
    assert "Rendering pass 1 of 2 · step 1/7" in statuses and "Rendering pass 2 of 2 · step 3/3" in statuses
    assert statuses.index("Rendering pass 1 of 2 · step 7/7") < statuses.index("Rendering pass 2 of 2 · step 1/3")
    assert "in two passes" in statuses[-1] and updates[-1][ui.record].passes == 2 and updates[-1][ui.video]
