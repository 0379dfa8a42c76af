"""Starting the models behind the page: settings for a profile, loading, the warm-up, and what to tell
visitors about it. The page (app.py) calls `start` and knows nothing of models."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from foresight.config import PRESETS, on_zero_gpu
from foresight.pipeline import ForesightPipeline
from foresight.models import MissingHubFiles, quiet_loaders
from foresight.profiles import PROFILES, load, make_settings

__all__ = ["PROFILES", "MissingHubFiles", "about", "restart", "start"]

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
        log("[foresight] full profile: the first start downloads about 42 GB of weights from the hub (the files that run).")
    pipe = ForesightPipeline(load(settings, log=log), on_broken=lambda why: restart(why, log))
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
        f"**Models:** {ids.vlm} (reasoning), "
        f"{ids.vision} ({'image features' if models.vision is not None else 'not loaded: no bridge reads it'}), "
        f"{ids.video_single_file or ids.video} (video)",
        f"**Bridge:** {models.bridge_note}",
        f"**Modes:** {', '.join(models.modes)} · **Sampling:** {settings.sampling.num_steps} steps, guidance "
        f"{settings.sampling.guidance_scale:g}",
        "**Presets:** " + " · ".join(f"{p.name} {p.width}×{p.height}, {p.seconds:.1f} s" for p in PRESETS.values()),
    ]
    return "  \n".join(lines)


EXIT_WHEN_BROKEN_CODE = 70  # EX_SOFTWARE: a supervisor's restart-on-failure starts the app again


def restart(why: str, log: Callable[[str], None] = print) -> None:
    """The GPU stopped answering (`health.DeviceHealth`): the pipeline takes no more runs and tells
    each visitor so in words. Then, where something can start the app afresh:

    * on a Hugging Face Space (`SPACE_ID`) with an `HF_TOKEN` secret that may write to it: the
      Space restarts itself through the Hub's API (`HfApi.restart_space`). A Space whose app exits
      only shows "Runtime error" until its owner restarts it, so the app never just exits there;
    * under a supervisor that restarts a failed process (systemd `Restart=on-failure`, Docker's
      `--restart on-failure`), with `FORESIGHT_EXIT_WHEN_BROKEN=1`: the process exits with code 70.

    Elsewhere the app stays up, saying why, until its owner restarts it.
    """
    log(f"[foresight] the GPU stopped answering ({why}): no more runs are taken until the app restarts")
    space, token = os.environ.get("SPACE_ID"), os.environ.get("HF_TOKEN")
    if space and token:
        log(f"[foresight] restarting the Space {space} through the Hub")
        threading.Thread(target=_restart_space, args=(space, token, log), daemon=True).start()
    elif os.environ.get("FORESIGHT_EXIT_WHEN_BROKEN", "") in ("1", "true"):
        log(f"[foresight] exiting with code {EXIT_WHEN_BROKEN_CODE} for the supervisor to start the app again")
        os._exit(EXIT_WHEN_BROKEN_CODE)
    else:
        log("[foresight] restart the app to serve again (on a Space: its Settings, Restart; or give it an "
            "HF_TOKEN secret to restart itself; under a supervisor: FORESIGHT_EXIT_WHEN_BROKEN=1)")


def _restart_space(space: str, token: str, log: Callable[[str], None]) -> None:
    from huggingface_hub import HfApi

    try:
        HfApi(token=token).restart_space(space)
    except Exception as exc:  # noqa: BLE001 - the owner restarts it by hand then; the page already says why
        log(f"[foresight] the Space could not restart itself ({exc}); restart it from its Settings")
