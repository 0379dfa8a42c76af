"""The denoising scheduler LTX's distilled checkpoints are sampled with (`models.prepare_video_pipeline`)."""

from __future__ import annotations

from diffusers import FlowMatchEulerDiscreteScheduler


class FromFirstTimestep(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler scheduler, told at every `set_timesteps` that sampling starts at
    the first timestep. Otherwise its first `step` looks its index up by value (`index_for_timestep`:
    a `nonzero` and an `item`, a device sync on a GPU, and nothing a CUDA graph can hold). Every run
    here starts at the first timestep (denoising strength 1)."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        # The same named parameters: diffusers' pipelines read them off the signature.
        super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps)
        self.set_begin_index(0)
