"""Shared fixtures: the tiny profile's models, built once per test session in a private cache."""

import os
import tempfile

os.environ.setdefault("FORESIGHT_CACHE", os.path.join(tempfile.gettempdir(), "foresight-test-cache"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def models():
    from foresight.config import make_settings
    from foresight.models import load_models

    return load_models(make_settings("tiny"), log=lambda message: None)


@pytest.fixture(scope="session")
def pipe(models):
    from foresight.pipeline import ForesightPipeline

    return ForesightPipeline(models)


@pytest.fixture
def photo():
    """A 320x240 RGB image with structure (a gradient and a square), not just noise."""
    x = np.linspace(0, 255, 320, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (240, 1)), np.tile(x[::-1], (240, 1)), np.full((240, 320), 90, np.uint8)], -1)
    rgb[60:140, 100:200] = (250, 30, 30)
    return Image.fromarray(rgb)


def run_events(pipe, image, **kwargs):
    kwargs.setdefault("preset", "fast")
    return list(pipe(image, **kwargs))
