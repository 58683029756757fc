"""Random draws that do not depend on the batch a sample is drawn in.

Samplers accept ``generator`` as
* a list of ``torch.Generator``, one per sample: sample i's noise comes only from generator i, so the
  same seed gives the same sample at any batch size (as diffusers' per-sample generators);
* a single ``torch.Generator``: one stream for the whole batch (reproducible for a fixed batch);
* ``None``: torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def generators_from_seeds(seeds: int | Sequence[int], count: int | None = None) -> list[torch.Generator]:
    """One CPU generator per sample. ``seeds`` is a list of seeds, or a base seed expanded to
    ``count`` consecutive seeds (base, base + 1, ...)."""
    if isinstance(seeds, int):
        if count is None:
            raise ValueError("give count when seeds is a single base seed")
        seeds = [seeds + i for i in range(count)]
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: GeneratorArg = None, *, dtype=torch.float32,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...) drawn per sample when given a list of generators."""
    shape = tuple(shape)
    if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; give one per sample")
        draws = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator]
        return torch.stack(draws).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)


def randn_like(x: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def prior_sample(schedule, shape: Sequence[int], generator: GeneratorArg = None, *, dtype=torch.float32,
                 device="cpu", t=None) -> torch.Tensor:
    """x_T ~ N(0, (alpha_T^2 + sigma_T^2) I) at t = ``t`` (default t_max): the sampler's starting point
    for unit-scale data (sigma_max for VE, 1 for VP and flow)."""
    t = schedule.t_max if t is None else t
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    return randn(shape, generator, dtype=dtype, device=device) * (a * a + s * s) ** 0.5
