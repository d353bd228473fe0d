"""Multiply-accumulates of one step, counted by ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2: the
paper's "GFLOPs")."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter


def count_gmacs(step: Callable[[], None]) -> float:
    """Multiply-accumulates (10⁹) of one step: FlopCounterMode's FLOPs / 2.

    Two formulas are supplied: the CPU flash-attention kernels, which the counter does not know,
    and the convolution backward, whose built-in formula ignores groups (it would count a
    depthwise conv's weight gradient as a dense conv's).
    """
    aten = torch.ops.aten

    def attention(query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def attention_backward(grad_out, query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    def conv_backward(grad_out, x, weight, *args, out_shape, **kwargs) -> int:
        output_mask = args[-1]  # (grad_input, grad_weight, grad_bias); each gradient costs one forward
        return flop_counter.conv_flop_count(x, weight, grad_out) * (int(output_mask[0]) + int(output_mask[1]))

    fixes = {
        aten._scaled_dot_product_flash_attention_for_cpu: attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward,
        aten.convolution_backward: conv_backward,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=fixes) as counter:
        step()
    return counter.get_total_flops() / 2e9
