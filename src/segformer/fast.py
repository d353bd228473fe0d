"""Exact fast forms of the SegFormer computations in ``segformer.model`` (docs/PERFORMANCE.md).

They compute the same functions as the paper's forms, with the same parameters; results differ by
float rounding only (tests/test_fast_path.py). ``segformer.model`` switches them on in one place
(``segformer.model.FAST``); this module knows nothing of the model's classes.

* The All-MLP decoder, reassociated: Eq. 4 projects each stage to C channels, upsamples, concatenates
  and fuses with a 1×1 conv. Bilinear upsampling commutes with per-pixel affine maps, so each stage's
  slice of the fuse weight is applied *before* upsampling, on the small map, and the biases are summed
  once. It serves training as well as inference: in train mode BatchNorm takes its batch statistics on the
  fused sum (the paper's form's fuse output), in eval mode it folds into those weights and that bias.
* A LayerNorm's affine (γ, β) folds into the linear maps that read the norm (``fold_norm_affine``): the
  ONNX Runtime engine's export uses it, so its graph normalises without a scale and a shift.
* Without autograd (and outside compilation and export) the fused weights are cached until a
  parameter changes, GELU overwrites its input, and one buffer serves every upsampling: fresh large
  tensors cost page faults on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Per-stage fused weights (stage order), the summed bias, and whether BatchNorm is folded into them.
FusedWeights = tuple[list[torch.Tensor], torch.Tensor, bool]


def may_update_in_place() -> bool:
    """True without autograd and outside compilation and export: temporaries may then be overwritten."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing())


class InPlaceGELU(nn.GELU):
    """GELU that overwrites its input where ``may_update_in_place()``; the input must be a temporary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if may_update_in_place():
            return torch.ops.aten.gelu_(x, approximate=self.approximate)
        return super().forward(x)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1×1 conv with a C'×C weight, keeping the input's memory format (channels-last here).

    Its result is a tensor of its own, not a view, so in-place sums on it stay cheap under autograd.
    """
    return F.conv2d(x, weight[:, :, None, None], bias)


def classify(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv as weight · pixelsᵀ, giving contiguous NCHW logits.

    That layout is the fast one for what follows (resizing to the label size, log-softmax over the
    classes), and on CPU this product beats pixels · weightᵀ when the class count is not a multiple
    of 16 (150 classes). Under ``torch.export`` (ONNX, .pt2) it stays a 1×1 conv: a graph keeps the
    conv's weight a constant, which ONNX Runtime's int8 quantiser needs (the product's weight would
    come through an ``Expand``), and ONNX Runtime runs it as fast.
    """
    if torch.compiler.is_exporting():
        return pointwise(x, weight, bias)
    b, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.baddbmm(bias[:, None], weight.expand(b, -1, -1), pixels.mT).view(b, -1, h, w)


def fold_norm_affine(norm: nn.LayerNorm, readers: Sequence[nn.Linear | nn.Conv2d]) -> None:
    """Fold ``norm``'s affine into the maps that read its output, in place: W' = W·diag(γ), b' = b + W·β.

    The norm is left as plain normalisation (γ = 1, β = 0). Exact up to float rounding when ``readers`` are all the
    norm's readers and none pads (a zero-padded conv would see β missing at the border).
    """
    if any(isinstance(reader, nn.Conv2d) and any(reader.padding) for reader in readers):
        raise ValueError("a LayerNorm's shift does not fold into a zero-padded conv")
    if any(reader.bias is None for reader in readers):
        raise ValueError("a LayerNorm's shift folds into a bias: every reader needs one")
    with torch.no_grad():
        for reader in readers:
            shape = (1, -1) + (1,) * (reader.weight.ndim - 2)  # the weight's input-channel axis
            reader.bias += (reader.weight * norm.bias.view(shape)).sum(dim=tuple(range(1, reader.weight.ndim)))
            reader.weight *= norm.weight.view(shape)
        norm.weight.fill_(1.0)
        norm.bias.zero_()


def fuse_weights(
    projections: Sequence[nn.Linear], fuse_weight: torch.Tensor, bn: nn.BatchNorm2d, order: Sequence[int]
) -> FusedWeights:
    """W_i·L_i per stage and Σ_i W_i·b_i, W_i being stage i's slice of the fuse weight.

    Args:
        projections: the per-stage Linear maps L_i (weight and bias b_i), in stage order.
        fuse_weight: the fuse conv's weight, whose input channels hold the stages in ``order``.
        bn: the BatchNorm after the fuse conv; folded in unless it is in training mode.
        order: stage index of each block of fuse-weight input channels (Eq. 4's concatenation order).

    Computed in fp32 (fp64 for fp64 parameters) with autocast off, then cast to the parameters' dtype,
    so bf16/fp16 runs round the fused weights once.
    """
    dim = bn.num_features
    dtype = fuse_weight.dtype
    compute = torch.promote_types(dtype, torch.float32)
    fold = not (bn.training or bn.running_mean is None)
    with torch.autocast(fuse_weight.device.type, enabled=False):
        w_fuse = fuse_weight.to(compute).reshape(dim, -1)
        if fold:
            scale = bn.weight.to(compute) * torch.rsqrt(bn.running_var.to(compute) + bn.eps)
            w_fuse = w_fuse * scale[:, None]
            bias = bn.bias.to(compute) - bn.running_mean.to(compute) * scale
        else:
            bias = w_fuse.new_zeros(dim)
        stage_slices = dict(zip(order, w_fuse.split(dim, dim=1), strict=True))
        weights = []
        for stage, proj in enumerate(projections):
            w_slice = stage_slices[stage]
            weights.append((w_slice @ proj.weight.to(compute)).to(dtype))
            bias = bias + w_slice @ proj.bias.to(compute)
    return weights, bias.to(dtype), fold


class FusedWeightCache:
    """``fuse_weights`` of one decoder, kept while its inputs keep their versions.

    Used only in eval mode where ``may_update_in_place()``; any change of a parameter or buffer (an
    in-place update, ``load_state_dict``, ``.to()``) changes its version, pointer, dtype or device and
    recomputes. Parameters created in inference mode have no version counter: never cached.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: FusedWeights | None = None

    def __call__(
        self, projections: Sequence[nn.Linear], fuse_weight: torch.Tensor, bn: nn.BatchNorm2d, order: Sequence[int]
    ) -> FusedWeights:
        inputs = [fuse_weight, bn.weight, bn.bias, bn.running_mean, bn.running_var]
        inputs += [t for proj in projections for t in (proj.weight, proj.bias)]
        if bn.training or not may_update_in_place() or any(t.is_inference() for t in inputs):
            return fuse_weights(projections, fuse_weight, bn, order)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in inputs)
        if self.key != key:
            self.key, self.value = key, fuse_weights(projections, fuse_weight, bn, order)
        return self.value


def fuse(features: list[torch.Tensor], fused: FusedWeights, bn: nn.BatchNorm2d) -> torch.Tensor:
    """ReLU(BN(Σ_i up(W_i L_i c_i) + Σ_i W_i b_i)), the decoder's fused map at the stage-1 size.

    The summed bias is added at stage 1, already at the output size (upsampling keeps constants).
    With BatchNorm folded into ``fused`` it is not applied again; in training mode its batch
    statistics are taken on the fused sum, as in the paper's form.
    """
    weights, bias, folded = fused
    size = features[0].shape[-2:]
    out = pointwise(features[0], weights[0], bias)
    scratch = torch.empty_like(out) if may_update_in_place() else None
    for f, weight in zip(features[1:], weights[1:], strict=True):
        y = pointwise(f, weight)
        if scratch is None:
            out += F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        else:
            out += torch.ops.aten.upsample_bilinear2d.out(y, list(size), False, None, None, out=scratch)
    if not folded:
        out = bn(out)
    return F.relu_(out)
