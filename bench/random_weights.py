"""Give every parameter of a network random values, for the benches and the tests (not part of the engine: nothing
in rain_core imports it; tests load it through `conftest.randomize_parameters`).

A freshly built RAIN is blind on purpose (zero-initialised motion proj_out, pose guider conv_out, cond_proj), so a
check that runs a fresh model never exercises those paths. `randomize_parameters` fills every parameter:
weights ~ N(0, 1/fan_in) (activations stay O(1) through deep stacks), biases ~ N(0, 0.1²),
normalisation scales ~ 1 + N(0, 0.1²).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter; values are drawn on the device each parameter lives on (one generator per device,
    seeded alike), so a full-size model on a GPU is randomised without a round trip through the CPU."""
    generators: dict[torch.device, torch.Generator] = {}
    norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)
    for submodule in module.modules():
        for name, param in submodule.named_parameters(recurse=False):
            generator = generators.get(param.device)
            if generator is None:
                generator = generators[param.device] = torch.Generator(param.device).manual_seed(seed)
            noise = torch.randn(param.shape, generator=generator, device=param.device, dtype=torch.float32)
            if isinstance(submodule, norm_types) and name == "weight":
                value = 1 + 0.1 * noise
            elif param.dim() >= 2:
                value = noise / (param[0].numel() ** 0.5)
            else:
                value = 0.1 * noise
            param.copy_(value.to(param.dtype))
    return module
