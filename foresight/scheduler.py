"""The denoising scheduler LTX's distilled checkpoints are sampled with (`models.prepare_video_pipeline`)."""

from __future__ import annotations

import threading

from diffusers import FlowMatchEulerDiscreteScheduler


class ForeignStep(RuntimeError):
    """A step from a thread whose run is over (abandoned at its deadline): refused, so that it cannot
    move the current run's sampling on."""


class FromFirstTimestep(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler scheduler, told at every `set_timesteps` that sampling starts at
    the first timestep. Otherwise its first `step` looks its index up by value (`index_for_timestep`:
    a `nonzero` and an `item`, a device sync on a GPU, and nothing a CUDA graph can hold). Every run
    here starts at the first timestep (denoising strength 1), but for LTX's second pass, which drops
    the first of the timesteps diffusers is given: LTXConditionPipeline steps by per-token timesteps,
    whose step sizes come from the sigmas themselves, not from the index (tests/test_passes.py).

    The scheduler is one object shared by every run; only the thread that set its timesteps (the
    run now sampling) may step it. A worker abandoned mid-step that wakes up later is refused."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        # The same named parameters: diffusers' pipelines read them off the signature.
        super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps)
        self.set_begin_index(0)
        self._sampler = threading.get_ident()

    def step(self, *args, **kwargs):
        if getattr(self, "_sampler", None) not in (None, threading.get_ident()):
            raise ForeignStep("a step from a run that is over")
        return super().step(*args, **kwargs)
