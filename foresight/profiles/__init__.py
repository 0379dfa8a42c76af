"""Profiles: where the models come from. Each turns a name into Settings and hands them to the loaders.

* `full`: the real models, from the hub or `FORESIGHT_MODELS_DIR`.
* `tiny`: miniature random-weight checkpoints that `tiny.py` writes in the real repos' layouts;
  the same loaders read them. The default without a CUDA GPU; the tests use it.
* `random-full`: the full-size architectures with random weights, built in memory, for timing.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

from foresight.config import Settings, check, cuda_available, settings_from_env
from foresight.models import Models, load_models

PROFILES = ("full", "tiny", "random-full")


def default_profile() -> str:
    return os.environ.get("FORESIGHT_PROFILE") or ("full" if cuda_available() else "tiny")


def make_settings(profile: str | None = None, **overrides) -> Settings:
    """The profile's settings, with the FORESIGHT_* environment applied, then `overrides`."""
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use {', '.join(PROFILES)}")
    settings = settings_from_env(profile=profile)
    if profile == "tiny":
        from foresight.profiles import tiny

        settings = tiny.settings(settings)
    elif profile == "random-full":
        from foresight.profiles import random_full

        settings = random_full.settings(settings)
    return check(replace(settings, **overrides))


def describe(settings: Settings) -> Callable[[str], str]:
    """How console lines name a model under this profile: a stand-in says what it is."""
    if settings.profile == "tiny":
        return lambda model_id: f"tiny random-weight stand-in for {model_id}"
    if settings.profile == "random-full":
        return lambda model_id: f"full-size random-weight stand-in for {model_id}"
    return str


def load(settings: Settings, log: Callable[[str], None] = print, load_text_encoder: bool | None = None,
         load_vision: bool | None = None) -> Models:
    """The profile's models: built in memory (random-full, a bridge and DINOv2 always), else read by the loaders."""
    if settings.profile == "random-full":
        from foresight.profiles import random_full

        return random_full.build_models(settings, log, load_text_encoder)
    return load_models(settings, log, load_text_encoder, describe=describe(settings), load_vision=load_vision)
