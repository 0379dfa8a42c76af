"""Starting the models behind the page: settings for a profile, loading, the warm-up, and what to tell
visitors about it. The page (app.py) calls `start` and knows nothing of models."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from foresight.config import PRESETS, on_zero_gpu
from foresight.pipeline import ForesightPipeline
from foresight.models import quiet_loaders
from foresight.profiles import PROFILES, load, make_settings

__all__ = ["PROFILES", "about", "start"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def start(profile: str | None = None, text_mode: bool = True, weights: str | None = None,
          log: Callable[[str], None] = print) -> tuple[ForesightPipeline, str]:
    """Load the models and warm them up -> (the pipeline, an 'About' text for the page). The console
    gets one line per model (its stand-in, when the profile has one, and its loading time)."""
    overrides = {} if text_mode else {"text_mode": False}
    if weights:
        overrides["weights"] = Path(weights)
    quiet_loaders()
    settings = make_settings(profile, **overrides)
    if settings.profile == "full":
        log("[foresight] full profile: the first start downloads about 33 GB of weights from the hub.")
    pipe = ForesightPipeline(load(settings, log=log))
    if on_zero_gpu():
        log("[foresight] ZeroGPU: the GPU is lent per call, so there is no warm-up at start")
    else:
        pipe.warm_up(sorted(EXAMPLES.glob("*.jpg"))[0], log=log)  # what it says is what went wrong
    return pipe, about(pipe)


def about(pipe: ForesightPipeline) -> str:
    """What runs here, in words, for the page's About section."""
    models, settings = pipe.models, pipe.models.settings
    ids = settings.model_ids
    stand_in = {"tiny": "tiny random-weight stand-ins (the outputs are noise)",
                "random-full": "full-size architectures with random weights (the outputs are noise)"}
    lines = [
        f"**Profile:** {settings.profile}" + (f", {stand_in[settings.profile]}" if settings.profile in stand_in
                                              else "") + f" · {settings.device}, {settings.dtype}",
        f"**Models:** {ids.vlm} (reasoning), {ids.vision} (image features), "
        f"{ids.video_single_file or ids.video} (video)",
        f"**Bridge:** {models.bridge_note}",
        f"**Modes:** {', '.join(models.modes)} · **Sampling:** {settings.sampling.num_steps} steps, guidance "
        f"{settings.sampling.guidance_scale:g}",
        "**Presets:** " + " · ".join(f"{p.name} {p.width}×{p.height}, {p.seconds:.1f} s" for p in PRESETS.values()),
    ]
    return "  \n".join(lines)
