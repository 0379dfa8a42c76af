"""Where a run makes the CPU wait for the GPU, counted: torch's synchronizing CUDA calls on a GPU
(`device_syncs`), and on any device the aten operations that read a value back to the host or copy
one in, by part of the denoising (`OpCounter`, `count_denoising`). The counts are the same on a CPU
as on a GPU, so the tests hold them (tests/test_graphs.py) and `scripts/*_syncs.py` report them.
"""

from __future__ import annotations

import collections
import traceback
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def device_syncs(run) -> collections.Counter:
    """Where `run()` makes the CPU wait for the GPU: {source line: times}, as torch reports its
    synchronizing CUDA calls (`set_sync_debug_mode`). CUDA only."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in caught
                               if "synchronizing CUDA operation" in str(w.message))


# aten operations that hand a tensor's value to the host: on a GPU each makes the CPU wait for the
# GPU's queue to drain, and none may run while a CUDA graph is captured.
HOST_READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.equal", "aten.masked_select",
              "aten._unique", "aten._unique2", "aten.unique_consecutive", "aten.unique_dim", "aten.item"}
# A tensor made from Python data (`torch.tensor([...])`, indexing with a list): on a GPU, a blocking
# copy from pageable host memory, also not capturable.
HOST_COPIES = {"aten.lift_fresh"}


class OpCounter(TorchDispatchMode):
    """Every aten operation run inside it, by region: `region` is what the caller says is running
    (hooks set it). Host reads and host copies (HOST_READS, HOST_COPIES) are kept with their source
    line. The same on any device, so counted on a CPU they are what a GPU would see."""

    def __init__(self):
        super().__init__()
        self.region = "other"
        self.ops, self.reads, self.copies = collections.Counter(), collections.Counter(), collections.Counter()
        self.where = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[self.region] += 1
        if name in HOST_READS or name in HOST_COPIES:
            (self.reads if name in HOST_READS else self.copies)[self.region] += 1
            frame = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            self.where[f"{self.region}: {name} at {frame.filename.split('site-packages/')[-1]}:{frame.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def count_denoising(pipeline, run) -> OpCounter:
    """`run()` (a render) counted by part of the denoising: "transformer forward", "step" (the rest
    of the pipeline's loop and our step callback), "preview decode", "final decode" (from the loop's
    end), "before" (everything before the first step)."""
    from foresight import video as video_stage

    counter, decode_estimate, unpack = OpCounter(), video_stage.decode_estimate, pipeline._unpack_latents
    counter.region = "before"

    def region(name):
        def enter(*args):
            counter.region = name
        return enter

    def preview(*args, **kwargs):
        counter.region = "preview decode"
        try:
            return decode_estimate(*args, **kwargs)
        finally:
            counter.region = "step"

    def loop_ended(*args):  # the pipeline unpacks the latents once the loop is over
        counter.region = counter.region if counter.region == "preview decode" else "final decode"
        return unpack(*args)

    hooks = [pipeline.transformer.register_forward_pre_hook(region("transformer forward")),
             pipeline.transformer.register_forward_hook(region("step"))]
    video_stage.decode_estimate, pipeline._unpack_latents = preview, loop_ended
    try:
        with counter:
            run()
    finally:
        video_stage.decode_estimate = decode_estimate
        del pipeline._unpack_latents
        for hook in hooks:
            hook.remove()
    return counter
