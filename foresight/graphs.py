"""The denoising step and the preview decode on static buffers, one CUDA graph per shape.

A denoising step of LTX-2B is about 2,700 aten operations launched one by one from Python, a
preview decode about 1,200 (`scripts/ltx_syncs.py`); on a GPU the host, not the GPU, sets their
pace, and more so while the text's thread takes the GIL. Run on input buffers whose addresses never
change, the same work is captured once as a CUDA graph and replayed with one launch.

`StaticGraphs` does that for a function of tensors: one set of input buffers per input shape (and
on CUDA one graph), at most `max_shapes`, the least recently used dropped first, every graph in
one memory pool. On a CPU the same buffers run eagerly, so the plumbing is the same everywhere.
An output is valid until the next call of any `StaticGraphs` sharing its pool (a graph's output
may lie where another graph keeps its intermediates): consume or clone it first.

`graphed_forward` makes a module's forward run through one while a caller (LTX's pipeline) calls
it; hooks on the module still see every call. `video.VideoGraphs` holds the renderer's two.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable

import torch


class _Shape:
    """One input shape's buffers, and on CUDA its graph and static output."""

    def __init__(self, inputs: dict):
        self.buffers = {name: value.clone() for name, value in inputs.items() if torch.is_tensor(value)}
        self.constants = {name: value for name, value in inputs.items() if not torch.is_tensor(value)}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output = None

    def load(self, inputs: dict) -> None:
        for name, buffer in self.buffers.items():
            buffer.copy_(inputs[name])

    @property
    def arguments(self) -> dict:
        return {**self.buffers, **self.constants}


class StaticGraphs:
    """`fn(**inputs)` run on static buffers, one set per shape; captured as a CUDA graph on CUDA."""

    def __init__(self, fn: Callable, cuda: bool, max_shapes: int, pool=None):
        self.fn, self.cuda, self.max_shapes, self.pool = fn, cuda, max_shapes, pool
        self._shapes: OrderedDict[tuple, _Shape] = OrderedDict()
        self.captured = 0  # shapes prepared (captured, on CUDA) so far

    def __call__(self, **inputs):
        key = tuple((name, tuple(value.shape), value.dtype, value.device) if torch.is_tensor(value) else (name, value)
                    for name, value in sorted(inputs.items()))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._prepare(inputs)
            self._shapes[key] = shape
            while len(self._shapes) > self.max_shapes:
                self._shapes.popitem(last=False)
        else:
            self._shapes.move_to_end(key)
            shape.load(inputs)
        if shape.graph is not None:
            shape.graph.replay()
            return shape.output
        return self.fn(**shape.arguments)

    def _prepare(self, inputs: dict) -> _Shape:
        shape = _Shape(inputs)
        if self.cuda:
            self._capture(shape)
        self.captured += 1
        return shape

    def _capture(self, shape: _Shape) -> None:
        """As torch's CUDA-graph docs ask: warm up on a side stream (lazy initialisation stays out
        of the graph), then capture on it. Capture records the work without doing it; the replay
        does it. A shape first seen in a run is captured while the thinker decodes on its own
        stream, so the capture is `thread_local` (the thinker's allocations stay allowed), and it
        is begun directly rather than through `torch.cuda.graph`, whose device-wide synchronize,
        garbage collection and cache emptying would stall that decode. An out-of-memory error
        stays that error (the run steps down a preset), not the capture's."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(**shape.arguments)
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                shape.output = self.fn(**shape.arguments)
            except BaseException:
                with contextlib.suppress(Exception):
                    graph.capture_end()
                raise
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(side)
        shape.graph = graph


@contextlib.contextmanager
def graphed_forward(transformer, graphs: StaticGraphs):
    """While inside, `transformer(...)` (LTX's, called as LTXConditionPipeline calls it) runs its
    forward through `graphs`; hooks on the module run as before, around each call, with the
    caller's tensors and the static output. `graphs.fn` must call the class's own forward. Yields
    the undo, which takes this forward off again only if it is still the one in place (callable
    from another thread, more than once)."""

    def forward(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, video_coords,
                attention_kwargs=None, return_dict=False):
        if attention_kwargs or return_dict:
            raise ValueError("the graphed transformer takes no attention_kwargs and returns a tuple")
        return (graphs(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                       encoder_attention_mask=encoder_attention_mask, video_coords=video_coords),)

    def undo() -> None:
        if transformer.__dict__.get("forward") is forward:
            del transformer.forward

    transformer.forward = forward
    try:
        yield undo
    finally:
        undo()
