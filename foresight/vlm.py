"""Qwen2.5-VL: one prefill gives the first token and the hidden states the bridge needs; then tokens stream.

Driven as the Qwen authors document it: the processor's own chat template, the image prepared as
their `qwen-vl-utils` does (`inputs.vlm_view`), and the checkpoint's generation config (greedy in
effect: top_k 1, with its repetition penalty of 1.05).
"""

from __future__ import annotations

import re
import threading
from typing import Callable

import torch
from PIL import Image
from transformers import StaticCache, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from foresight.inputs import vlm_view

# The first line is text mode's prompt for LTX, written as LTX's authors ask image-to-video prompts
# to be (`ltx_video/utils/prompt_enhance_utils.py`, I2V_CINEMATIC_PROMPT: the main action first,
# then the movements, literal and chronological, then the camera). Its length is a trade: LTX
# moves better with a fuller description, and in text mode the video waits for the whole line.
# 30 words are about 40 tokens, some 20 more than the one free sentence asked for before: about
# 0.25 s more to the first preview at the 81 tokens/s measured alone (docs/BENCHMARKS.md).
PREDICTION_WORDS = 30
SYSTEM_PROMPT = (
    "You look at one image and foresee the next few seconds. Your first line is your prediction, "
    f"written for a video model: 'Next: ' and then, in at most {PREDICTION_WORDS} words, the main action "
    "first, then how things move (what moves, which way, how fast), then what the camera does (stays "
    "still, pans, zooms). Describe literally what is seen, in the present tense. Then, on new lines, "
    "reason briefly about what you see and why it leads there."
)
DEFAULT_QUESTION = "What happens next?"


def context_line(prediction: str) -> str:
    """Continuing a story: the image is the last frame of a clip, and what that clip was foreseen to
    show, in one line, so that the next prediction goes on from it."""
    prediction = " ".join(prediction.split())
    return f"This image is the last frame of a video that showed: {prediction}" if prediction else \
        "This image is the last frame of a video."


def build_inputs(models, image: Image.Image, question: str, context: str = ""):
    """Chat-template the image and question; tensors on the model's device. `image` is the loaded
    upload (or, continuing a story, its last frame): Qwen sees it at its own pixel budget, whatever
    the video preset. `context`: one line said before the question (`context_line`)."""
    settings = models.settings
    question = question.strip() or DEFAULT_QUESTION
    text = f"{context}\n{question}" if context else question
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    text = models.vlm_processor.apply_chat_template(messages, add_generation_prompt=True)
    view = vlm_view(image, settings.vlm_min_pixels, settings.vlm_max_pixels)
    # The same bounds per call: the hub repo's preprocessor_config.json min/max_pixels would
    # override a `size` given at load time (docs/PITFALLS.md).
    bounds = {"shortest_edge": settings.vlm_min_pixels, "longest_edge": settings.vlm_max_pixels}
    inputs = models.vlm_processor(text=[text], images=[view], size=bounds, return_tensors="pt")
    return inputs.to(models.vlm.device)


@torch.inference_mode()
def encode_image(models, inputs) -> dict:
    """Qwen's vision tower on the prompt's image: `inputs` for `generate` or the model's forward with
    the image as `mm_encoder_outputs` (transformers' own input for pre-encoded images) instead of
    `pixel_values`. Inputs without `pixel_values` are returned as they are.

    Run this way, not inside `generate`, for one reason: with SDPA (how `models.py` loads Qwen) the
    tower splits its windowed attention at window boundaries it reads back from the GPU three times
    a layer (96 device syncs an image; at each layer the CPU waits for the GPU to drain). Here the
    same boundaries, window order and positions are computed on the CPU copy of the grid by
    transformers' own `vision_utils` and handed in as its precomputed `image_*` inputs (kept on
    the CPU, the boundaries are read without a sync); the outputs are identical.
    """
    if "pixel_values" not in inputs:
        return inputs
    vlm, pixels = models.vlm, inputs["pixel_values"]
    vision = vlm.config.vision_config
    grid = inputs["image_grid_thw"].cpu()
    cu_seqlens, _ = get_vision_attention_seqlens(grid, vision)
    window_index, cu_window_seqlens = get_vision_window_index(
        grid, spatial_merge_size=vision.spatial_merge_size, window_size=vision.window_size,
        patch_size=vision.patch_size)
    positions = get_vision_position_ids(grid, vision.spatial_merge_size)
    image = vlm.model.get_image_features(
        pixels, grid, return_dict=True, image_cu_seqlens=cu_seqlens, image_cu_window_seqlens=cu_window_seqlens,
        image_window_index=window_index.to(pixels.device, non_blocking=True),
        image_position_ids=positions.to(pixels.device, non_blocking=True))
    return {**{key: value for key, value in inputs.items() if key != "pixel_values"},
            "mm_encoder_outputs": {"image": image}}


class TokenStreamer(BaseStreamer):
    """Hands the text of every generated token to `on_text` the moment it exists.

    transformers' TextStreamer holds text back until a word ends; here only an incomplete UTF-8
    character is held (the decoder shows it as U+FFFD until its last byte arrives). `before_next()`
    runs after each token, before the next decode step is queued: where the text is paced.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None], on_token: Callable[[], None] = lambda: None,
                 before_next: Callable[[], None] = lambda: None):
        self.tokenizer, self.on_text, self.on_token, self.before_next = tokenizer, on_text, on_token, before_next
        self.tokens: list[int] = []
        self.sent = 0
        self.prompt = True

    def put(self, value):
        if self.prompt:  # generate() hands over the prompt first
            self.prompt = False
            return
        self.on_token()
        self.tokens.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)
        self.before_next()

    def end(self):
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)


class PrefillCapture:
    """Forward hook on one decoder layer: keeps its output for the prompt (the prefill) only.

    The prefill is the one call that sees more than one new token; decode steps see one each.
    """

    def __init__(self, vlm, layer: int):
        self.states: torch.Tensor | None = None
        self._written: torch.cuda.Event | None = None  # on CUDA: when the states exist on the thinker's stream
        self._handle = vlm.model.language_model.layers[layer].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self.states is None and hidden.shape[1] > 1:
            self.states = hidden.detach()
            if hidden.is_cuda:
                self._written = torch.cuda.Event()
                self._written.record()
            self._handle.remove()

    def states_here(self) -> torch.Tensor:
        """The states, safe to use on the calling thread's stream (the renderer's may differ from the thinker's)."""
        if self._written is not None:
            here = torch.cuda.current_stream(self.states.device)
            here.wait_event(self._written)
            self.states.record_stream(here)  # the allocator must not reuse them while `here` still reads them
        return self.states

    def remove(self):
        self._handle.remove()


class ReusedStaticCache:
    """One static KV cache for every call from one thinker, zeroed in place between calls.

    Left to itself, `generate` makes a new StaticCache per call; the compiled decode step's CUDA
    graphs are recorded against the cache tensors' addresses, so every run would record them
    again, and past torch's re-record limit the step would run without graphs at all.
    """

    def __init__(self, min_length: int):
        self.min_length = min_length
        self.cache: StaticCache | None = None

    def for_call(self, vlm, length: int) -> StaticCache:
        """A zeroed cache of at least `length` tokens (prompt + new ones); a longer call gets a bigger one."""
        if self.cache is None or self.cache.get_max_length() < length:
            self.cache = StaticCache(config=vlm.config.get_text_config(decoder=True),
                                     max_cache_len=max(self.min_length, length))
        else:
            self.cache.reset()
        return self.cache


@torch.inference_mode()
def stream_reasoning(models, inputs, on_text: Callable[[str], None], stop: threading.Event,
                     capture: PrefillCapture | None = None, on_token: Callable[[], None] = lambda: None,
                     max_new_tokens: int | None = None, static_cache: ReusedStaticCache | None = None,
                     before_next: Callable[[], None] = lambda: None) -> None:
    """Generate with the checkpoint's generation config, calling `on_text` with each token's text;
    `capture` receives the prefill states. With `settings.decode == "static"`, pass the caller's
    `static_cache` so its calls share one. `before_next()` runs between tokens (pacing)."""
    settings = models.settings
    max_new_tokens = max_new_tokens or settings.max_new_tokens
    cache = {}
    if settings.decode == "static":
        static_cache = static_cache or ReusedStaticCache(settings.static_cache_len)
        cache["cache"] = static_cache.for_call(models.vlm, inputs["input_ids"].shape[1] + max_new_tokens)
    try:
        models.vlm.generate(
            **encode_image(models, inputs),
            **cache,
            max_new_tokens=max_new_tokens,
            streamer=TokenStreamer(models.vlm_processor.tokenizer, on_text, on_token, before_next),
            stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
        )
    finally:
        if capture is not None:
            capture.remove()


@torch.inference_mode()
def prefill_states(models, inputs) -> torch.Tensor:
    """The bridge's input without generating: one forward pass over the prompt (used by video-only retries)."""
    capture = PrefillCapture(models.vlm, models.settings.hidden_layer)
    try:
        models.vlm(**encode_image(models, inputs), use_cache=False)
    finally:
        capture.remove()
    return capture.states


_PREDICTION_PREFIX = re.compile(r"next\s*[*_]{0,2}\s*[:\-–—]\s*[*_]{0,2}\s*", re.IGNORECASE)


def prediction_line(text: str) -> str | None:
    """The one-line prediction, once its line is complete: 'Next: X' (or '**Next:** X') -> 'X'."""
    if "\n" not in text.lstrip():
        return None
    line = text.strip().splitlines()[0].strip()
    bare = line.lstrip("#*_ ").rstrip("*_ ")  # a markdown heading or emphasis around the whole line
    prefix = _PREDICTION_PREFIX.match(bare)
    if prefix:
        return bare[prefix.end():].strip() or line
    return bare or line
