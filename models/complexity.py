"""Multiply-adds of one forward pass, counted from the layers that run (convolutions, linears)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds per image of model(images) for one C x H x W image (conv and linear layers;
    norms, activations and pooling are left out as in the usual FLOP tables)."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * kernel  # per image: C_out*H_out*W_out * (C_in/g * k*k)

    def linear_hook(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
