"""How often Qwen2.5-VL-7B's path to the first token reads a tensor back, by source line.

Qwen's real structure (28 decoder layers, a 32-layer windowed vision tower, a 512x512 upload at the
default pixel budget) at narrow widths with random weights, on CUDA if there is one.
On CUDA it counts the device syncs torch reports (`set_sync_debug_mode`) for two paths: `generate`
given the pixels (transformers' own) and `vlm.encode_image` then `generate` (the pipeline's). On a
CPU nothing syncs; it counts transformers' own path's reads of tensor values, each a sync when the
tensor is on a GPU (encode_image's reads are of CPU tensors by construction, so not counted there).

    PYTHONPATH=. python scripts/qwen_syncs.py
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import traceback

import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from foresight import vlm as vlm_stage
from foresight.syncs import device_syncs
from foresight.profiles import load, make_settings
from foresight.profiles.random_full import QWEN_7B_TEXT, QWEN_7B_VISION, build_vlm

READS = {"tolist", "item", "__bool__", "__int__", "__index__", "__float__", "nonzero", "unique_consecutive"}


class CountReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.where = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            frame = traceback.extract_stack(limit=2)[0]  # the caller
            self.where[f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def generate_given_pixels(models, inputs) -> None:  # one new token: the prefill and its token
    models.vlm.generate(**inputs, max_new_tokens=1)


def pipeline_path(models, inputs) -> None:
    vlm_stage.stream_reasoning(models, inputs, lambda text: None, threading.Event(), max_new_tokens=1)


def count(run, cuda: bool) -> collections.Counter:
    if cuda:
        return device_syncs(run)
    with CountReads() as mode:
        run()
    return mode.where


def main() -> None:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    settings = make_settings("tiny", vlm_max_pixels=512 * 512, vlm_min_pixels=28 * 28 * 4, device=device,
                             decode="dynamic")
    models = load(settings, log=lambda message: None)
    text = dict(QWEN_7B_TEXT, hidden_size=224, intermediate_size=448, num_attention_heads=28, num_key_value_heads=4,
                rope_parameters=dict(QWEN_7B_TEXT["rope_parameters"], mrope_section=[1, 1, 2]))
    vision = dict(QWEN_7B_VISION, hidden_size=128, intermediate_size=256, out_hidden_size=224)
    models = dataclasses.replace(models, vlm=build_vlm(models.vlm_processor.tokenizer, device, torch.float32,
                                                       text, vision))
    inputs = vlm_stage.build_inputs(models, Image.new("RGB", (512, 512), (120, 30, 200)), "What happens next?")
    print(f"{'CUDA syncs' if cuda else 'tensor reads (CPU)'} before the first token; image grid "
          f"{inputs['image_grid_thw'].tolist()}, {inputs['input_ids'].shape[1]} prompt tokens")
    paths = {"generate given the pixels": generate_given_pixels}
    if cuda:
        paths["vlm.encode_image, then generate (the pipeline)"] = pipeline_path
    for label, run in paths.items():
        run(models, inputs)  # warm
        where = count(lambda: run(models, inputs), cuda)
        print(f"\n{label}: {sum(where.values())}")
        for line, n in where.most_common(6):
            print(f"  {n:4d}  {line}")


if __name__ == "__main__":
    main()
