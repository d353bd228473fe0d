"""SegFormer: the Mix Transformer (MiT) encoder and the All-MLP decoder.

Paper: "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
Xie et al., NeurIPS 2021 (https://arxiv.org/abs/2105.15203).
Official code: https://github.com/NVlabs/SegFormer (``mmseg/models/backbones/mix_transformer.py``
and ``mmseg/models/decode_heads/segformer_head.py``).

Module and parameter names follow the official code, so official checkpoints load without
renaming; ``segformer.checkpoints`` maps every other public layout onto these names.

The decoder has two exact forms (SPEC §1). The *reference* form projects each stage to D
channels, upsamples, concatenates [c4, c3, c2, c1] and fuses with a 1×1 conv. The *fast* form
(default) applies each stage's slice of the fuse weight before upsampling, because bilinear
upsampling commutes with per-pixel affine maps; in eval mode the BatchNorm folds in too. Both
keep the same parameters.

Speed without changing results (docs/PERFORMANCE.md): the encoder keeps tokens as B×N×C and views
them as channels-last B×C×h×w maps for its convolutions, so no transpose ever copies; without
autograd the fused decoder weights are cached and large buffers are reused in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Smallest input side: the stage-1 spatial reduction (kernel 8 on an H/4 map) needs ceil(H/4) >= 8.
MIN_INPUT_SIZE = 29


@dataclass(frozen=True)
class Variant:
    """Hyper-parameters of one MiT-Bx encoder and its decoder (SPEC §1 table)."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_dim: int
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


VARIANTS: dict[str, Variant] = {
    "b0": Variant(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": Variant(widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": Variant(widths=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_dim=768),
    "b3": Variant(widths=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_dim=768),
    "b4": Variant(widths=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_dim=768),
    "b5": Variant(widths=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_dim=768),
}


def normalize_variant(name: str) -> str:
    """Map "B0", "mit-b0", "mit_b0", "segformer-b0" to "b0"; raise ValueError on anything else."""
    key = name.strip().lower().replace("_", "-")
    for prefix in ("segformer-", "mit-"):
        key = key.removeprefix(prefix)
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(VARIANTS)} (e.g. 'b0' or 'mit-b0')")
    return key


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def plain_inference() -> bool:
    """True without autograd and outside compilation and export, where buffers may be updated in place."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing())


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """View B×(h·w)×C tokens as a B×C×h×w map; no copy: the map is channels-last in memory."""
    return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """B×C×h×w map to B×(h·w)×C tokens; a view when the map is channels-last (convs keep that layout)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Overlapped patch embedding: strided conv (kernel > stride) then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(map_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced sequence (ratio sr)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # rows [0, C) are the key, [C, 2C) the value
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        heads = self.num_heads
        q = self.q(x).unflatten(-1, (heads, -1)).transpose(1, 2)  # B×heads×N×d
        if self.sr_ratio > 1:
            x = self.norm(map_to_tokens(self.sr(tokens_to_map(x, h, w))))
        k, v = self.kv(x).unflatten(-1, (2, heads, -1)).permute(2, 0, 3, 1, 4)
        dropout = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj(x.transpose(1, 2).flatten(2))


class DWConv(nn.Module):
    """3×3 depthwise conv on the token sequence viewed as an h×w map (leaks position via padding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Module):
    """Mix-FFN: fc1 (expand) → depthwise 3×3 conv → GELU → fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.dwconv(self.fc1(x), h, w)
        return self.fc2(torch.ops.aten.gelu_(x) if plain_inference() else self.act(x))


class Block(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each with drop path."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """The hierarchical MiT encoder; returns four B×C×H×W maps at strides 4, 8, 16, 32 (channels-last in memory).

    Args:
        variant: a key of ``VARIANTS`` or a ``Variant``.
        in_channels: input image channels.
        drop_path_rate: stochastic depth at the last block, rising linearly from 0 over all blocks.
        layer_norm_eps: eps of the block and stage LayerNorms (official 1e-6; transformers uses 1e-5).
    """

    def __init__(
        self,
        variant: str | Variant = "b0",
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        cfg = VARIANTS[normalize_variant(variant)] if isinstance(variant, str) else variant
        self.out_channels: tuple[int, ...] = tuple(cfg.widths)
        self.strides: tuple[int, ...] = (4, 8, 16, 32)
        self.in_channels = in_channels
        rates = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        first = 0
        for i in range(4):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            prev = in_channels if i == 0 else cfg.widths[i - 1]
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(prev, cfg.widths[i], kernel, stride))
            blocks = [
                Block(
                    cfg.widths[i], cfg.num_heads[i], cfg.sr_ratios[i], cfg.mlp_ratio, rates[first + j], layer_norm_eps
                )
                for j in range(cfg.depths[i])
            ]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(cfg.widths[i], eps=layer_norm_eps))
            first += cfg.depths[i]

    def stages(self) -> list[tuple[OverlapPatchEmbed, nn.ModuleList, nn.LayerNorm]]:
        return [
            (getattr(self, f"patch_embed{i}"), getattr(self, f"block{i}"), getattr(self, f"norm{i}"))
            for i in range(1, 5)
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_channels)
        features = []
        for embed, blocks, norm in self.stages():
            x, h, w = embed(x)
            for block in blocks:
                x = block(x, h, w)
            x = tokens_to_map(norm(x), h, w)
            features.append(x)
        return features


def check_input(x: torch.Tensor, in_channels: int) -> None:
    """Raise ValueError unless x is B×in_channels×H×W with H, W >= MIN_INPUT_SIZE."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected an input of shape (B, {in_channels}, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"input {x.shape[-2]}×{x.shape[-1]} is too small: SegFormer needs height and width "
            f">= {MIN_INPUT_SIZE} pixels (pad or resize the image)"
        )


class MLP(nn.Module):
    """Per-pixel Linear(C_i, D) of the All-MLP decoder (official ``linear_c{i}``)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)


class ConvBNReLU(nn.Module):
    """The decoder's fuse: 1×1 conv without bias → BatchNorm → ReLU (official ``linear_fuse``)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)


class AllMLPDecoder(nn.Module):
    """The All-MLP decoder: unify channels, upsample to H/4, fuse, classify.

    Args:
        in_channels: channels of the four encoder stages.
        dim: decoder width D.
        num_classes: output classes.
        dropout: Dropout2d probability before the classifier.
        fast: use the reassociated form (identical outputs, far fewer multiply-adds).
    """

    def __init__(
        self, in_channels: tuple[int, ...], dim: int, num_classes: int, dropout: float = 0.1, fast: bool = True
    ) -> None:
        super().__init__()
        for i, c in enumerate(in_channels):
            setattr(self, f"linear_c{i + 1}", MLP(c, dim))
        self.linear_fuse = ConvBNReLU(len(in_channels) * dim, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)
        self.fast = fast
        self._fused_cache: tuple[tuple, tuple[list[torch.Tensor], torch.Tensor, bool]] | None = None

    def projections(self) -> list[nn.Linear]:
        return [getattr(self, f"linear_c{i + 1}").proj for i in range(4)]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if not self.fast:
            return self.linear_pred(self.dropout(self.fuse_reference(features)))
        pred = self.linear_pred
        return classify(self.dropout(self.fuse_fast(features)), pred.weight.flatten(1), pred.bias)

    def fuse_reference(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = []
        for f, proj in zip(features, self.projections(), strict=True):
            y = F.linear(f.permute(0, 2, 3, 1), proj.weight, proj.bias).permute(0, 3, 1, 2)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            maps.append(y)
        fuse = self.linear_fuse
        return F.relu(fuse.bn(fuse.conv(torch.cat(maps[::-1], dim=1))))

    def fuse_fast(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Σ_i up(W_i L_i c_i) + Σ_i W_i b_i, with W_i the fuse slice for stage i ([c4, c3, c2, c1] order).

        Upsampling keeps constants, so the biases are summed once and added at stage 1, which is
        already at the output size. In eval mode the BatchNorm affine folds into the weights and
        that bias; in training mode the batch statistics are taken on the fused sum as in the
        reference form.
        """
        weights, bias, folded = self.fused_weights()
        size = features[0].shape[-2:]
        out = pointwise(features[0], weights[0], bias)
        # Without autograd, one buffer serves every upsampling: fresh large tensors cost page faults on CPU.
        scratch = torch.empty_like(out) if plain_inference() else None
        for f, weight in zip(features[1:], weights[1:], strict=True):
            y = pointwise(f, weight)
            if scratch is None:
                out += F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            else:
                out += torch.ops.aten.upsample_bilinear2d.out(y, list(size), False, None, None, out=scratch)
        if not folded:
            out = self.linear_fuse.bn(out)
        return F.relu_(out)

    def fused_weights(self) -> tuple[list[torch.Tensor], torch.Tensor, bool]:
        """The per-stage weights W_i·L_i (stage order), the summed bias, and whether BatchNorm is folded in.

        Computed in fp32 with autocast off, then cast to the parameters' dtype, so bf16/fp16 runs
        round the fused weights once. Without autograd in eval mode the result is cached until a
        parameter changes (in-place update, ``load_state_dict``, ``.to()``); not for parameters
        created in inference mode, which have no version counter.
        """
        inputs = self._fuse_inputs()
        if self.training or not plain_inference() or any(t.is_inference() for t in inputs):
            return self._fuse_weights()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in inputs)
        if self._fused_cache is None or self._fused_cache[0] != key:
            self._fused_cache = (key, self._fuse_weights())
        return self._fused_cache[1]

    def _fuse_inputs(self) -> list[torch.Tensor]:
        bn = self.linear_fuse.bn
        tensors = [self.linear_fuse.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var]
        return tensors + [t for proj in self.projections() for t in (proj.weight, proj.bias)]

    def _fuse_weights(self) -> tuple[list[torch.Tensor], torch.Tensor, bool]:
        fuse = self.linear_fuse
        bn = fuse.bn
        dim = bn.num_features
        dtype = fuse.conv.weight.dtype
        device_type = fuse.conv.weight.device.type
        fold = not (bn.training or bn.running_mean is None)
        with torch.autocast(device_type, enabled=False):
            w_fuse = fuse.conv.weight.float().reshape(dim, -1)
            if fold:
                scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
                w_fuse = w_fuse * scale[:, None]
                bias = bn.bias.float() - bn.running_mean.float() * scale
            else:
                bias = w_fuse.new_zeros(dim)
            weights = []
            for i, proj in enumerate(self.projections()):
                w_slice = w_fuse[:, (3 - i) * dim : (4 - i) * dim]
                weights.append((w_slice @ proj.weight.float()).to(dtype))
                bias = bias + w_slice @ proj.bias.float()
        return weights, bias.to(dtype), fold


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1×1 conv with a C'×C weight, keeping the input's memory format (channels-last here).

    Its result is a tensor of its own, not a view, so in-place sums on it stay cheap under autograd.
    """
    return F.conv2d(x, weight[:, :, None, None], bias)


def classify(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv as weight · pixelsᵀ, giving contiguous NCHW logits.

    That layout is the fast one for what follows (resizing to the label size, log-softmax over
    classes: 0.7 vs 1.1 s for a B0 training step's loss on CPU), and on CPU this product beats
    pixels · weightᵀ when the class count is not a multiple of 16 (150 classes, 1 thread: 19 vs 27 ms).
    """
    b, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.baddbmm(bias[:, None], weight.expand(b, -1, -1), pixels.mT).view(b, -1, h, w)


class SegFormer(nn.Module):
    """SegFormer for semantic segmentation: ``backbone`` (MiT) → ``decode_head`` (All-MLP).

    ``forward`` returns logits of shape B×num_classes×ceil(H/4)×ceil(W/4).

    Args:
        variant: "b0" … "b5".
        num_classes: output classes.
        in_channels: image channels.
        drop_path_rate: encoder stochastic depth.
        decoder_dropout: Dropout2d before the classifier.
        layer_norm_eps: eps of the encoder's block and stage LayerNorms.
        class_names: optional names, one per class, stored with the weights.
    """

    def __init__(
        self,
        variant: str = "b0",
        num_classes: int = 150,
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        decoder_dropout: float = 0.1,
        layer_norm_eps: float = 1e-6,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        variant = normalize_variant(variant)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.config = {
            "variant": variant,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "drop_path_rate": drop_path_rate,
            "decoder_dropout": decoder_dropout,
            "layer_norm_eps": layer_norm_eps,
            "class_names": list(class_names) if class_names else None,
        }
        cfg = VARIANTS[variant]
        self.backbone = MixTransformer(cfg, in_channels, drop_path_rate, layer_norm_eps)
        self.decode_head = AllMLPDecoder(cfg.widths, cfg.decoder_dim, num_classes, decoder_dropout)
        # Official: the encoder is initialised by its own scheme; the head keeps PyTorch's defaults except
        # the fuse conv, which mmcv's ConvModule initialises He-normal over fan-out (the same rule).
        self.backbone.apply(init_weights)
        init_weights(self.decode_head.linear_fuse.conv)

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"] or [f"class_{i}" for i in range(self.num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))

    def save_pretrained(self, directory: str, layout: str = "ours") -> None:
        """Write weights and config to ``directory`` (``layout`` "ours" or "hf" for transformers)."""
        from segformer.pretrained import save_pretrained

        save_pretrained(self, directory, layout=layout)


def init_weights(m: nn.Module) -> None:
    """Official initialisation: trunc-normal Linear, unit LayerNorm, He-normal (fan-out) Conv2d."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def create_model(variant: str, num_classes: int = 150, **options) -> SegFormer:
    """Build a randomly initialised SegFormer-``variant`` ("b0" … "b5", "mit-b0" style accepted)."""
    return SegFormer(variant, num_classes, **options)
