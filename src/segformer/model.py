"""SegFormer: the Mix Transformer (MiT) encoder and the All-MLP decoder, as in the paper.

Paper: "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
Xie et al., NeurIPS 2021 (https://arxiv.org/abs/2105.15203), §3 and Fig. 2.
Official code: https://github.com/NVlabs/SegFormer (``mmseg/models/backbones/mix_transformer.py``
and ``mmseg/models/decode_heads/segformer_head.py``).

Module and parameter names follow the official code, so official checkpoints load without
renaming; ``segformer.layouts`` maps every other public layout onto these names. The variants
(paper Table 6) are ``segformer.config.VARIANTS``.

Exact fast forms of some of these computations (same parameters, same results up to float
rounding) live in ``segformer.fast``; ``FAST`` below is the one switch to them.

The encoder keeps tokens as B×N×C and views them as channels-last B×C×h×w maps for its
convolutions, so no reshape between the two ever copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from segformer.config import VARIANTS, SegFormerConfig, Variant, normalize_variant
from segformer.fast import FusedWeightCache, InPlaceGELU, classify, fold_norm_affine, fuse
from segformer.writer import write_pretrained

# The one switch to segformer.fast: decoders built while it is True start with ``fast = True`` (the
# reassociated decoder; set ``decoder.fast`` to choose per model), Mix-FFNs built then use the in-place GELU.
FAST = True

# Smallest input side: the stage-1 spatial reduction (kernel 8 on an H/4 map) needs ceil(H/4) >= 8.
MIN_INPUT_SIZE = 29


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """View B×(h·w)×C tokens as a B×C×h×w map; no copy: the map is channels-last in memory."""
    return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """B×C×h×w map to B×(h·w)×C tokens; a view when the map is channels-last (convs keep that layout)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016) on the residual branches of the blocks of Fig. 2, as in the
    official encoder (``drop_path_rate`` 0.1)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Overlapped patch merging (§3.1): a strided conv with kernel > stride (K=7, S=4, P=3 at stage 1,
    K=3, S=2, P=1 after), then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(map_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Efficient self-attention (§3.1, Eq. 1–2): keys and values come from a sequence shortened R times.

    The paper's reduction ratio R is ``sr_ratio ** 2``: ``sr`` is a conv with kernel and stride
    ``sr_ratio`` on the h×w map, followed by LayerNorm, so N tokens become N / R. ``attn_drop`` is the
    dropout on the attention probabilities in training (official ``Attention(attn_drop=attn_drop_rate)``).
    """

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
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # Eq. 1: softmax(QKᵀ/√d)V
        return self.proj(x.transpose(1, 2).flatten(2))


class DWConv(nn.Module):
    """The 3×3 depthwise conv of Mix-FFN (Eq. 3) on the tokens viewed as an h×w map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Module):
    """Mix-FFN (§3.1, Eq. 3): x_out = MLP(GELU(Conv3×3(MLP(x_in)))) + x_in (the residual is in ``Block``).

    The zero-padded 3×3 conv leaks the position information that replaces positional encodings.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = InPlaceGELU() if FAST else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    """One transformer block of a stage (Fig. 2): pre-norm efficient self-attention and Mix-FFN,
    each a residual branch with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        eps: float,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def fold_norm_affines(self) -> None:
        """Fold the affines of the norms read only by linear maps (``fast.fold_norm_affine``): ``norm1`` into the
        query and the reduction conv (or the key/value map without reduction), the reduction's norm into the
        key/value map, ``norm2`` into the Mix-FFN's first layer."""
        attn = self.attn
        fold_norm_affine(self.norm1, [attn.q, attn.sr if attn.sr_ratio > 1 else attn.kv])
        if attn.sr_ratio > 1:
            fold_norm_affine(attn.norm, [attn.kv])
        fold_norm_affine(self.norm2, [self.mlp.fc1])

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """The hierarchical MiT encoder (§3.1, Fig. 2): four stages of patch merging, blocks and LayerNorm,
    returning B×C_i×H/s×W/s maps at strides s = 4, 8, 16, 32 (channels-last in memory).

    Args:
        variant: a key of ``VARIANTS`` or a ``Variant`` (paper Table 6).
        in_channels: input image channels.
        drop_path_rate: stochastic depth at the last block, rising linearly from 0 over all blocks.
        layer_norm_eps: eps of the block and stage LayerNorms (official 1e-6; transformers uses 1e-5).
        attn_drop_rate: dropout on the attention probabilities of every block (official default 0.0).

    Attributes:
        checkpointing: activation checkpointing per block in training (mmseg's ``MixVisionTransformer(with_cp=True)``;
            Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): a block's activations are not kept
            for the backward pass but recomputed there, with the random state of the forward pass (drop path,
            dropout), so the gradients are those without it. Off by default; never used in eval mode or without
            autograd.
    """

    def __init__(
        self,
        variant: str | Variant = "b0",
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float = 1e-6,
        attn_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        cfg = VARIANTS[normalize_variant(variant)] if isinstance(variant, str) else variant
        self.out_channels: tuple[int, ...] = tuple(cfg.widths)
        self.strides: tuple[int, ...] = (4, 8, 16, 32)
        self.in_channels = in_channels
        self.checkpointing = False
        rates = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        first = 0
        for i in range(4):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            prev = in_channels if i == 0 else cfg.widths[i - 1]
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(prev, cfg.widths[i], kernel, stride))
            dim, heads, sr_ratio = cfg.widths[i], cfg.num_heads[i], cfg.sr_ratios[i]
            blocks = [
                Block(dim, heads, sr_ratio, cfg.mlp_ratio, rates[first + j], layer_norm_eps, attn_drop_rate)
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
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        features = []
        for embed, blocks, norm in self.stages():
            x, h, w = embed(x)
            for block in blocks:
                if recompute:
                    x = torch.utils.checkpoint.checkpoint(block, x, h, w, use_reentrant=False)
                else:
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


def concat_order(num_stages: int) -> list[int]:
    """Eq. 4 concatenates the upsampled stage maps deepest first, F = Concat(F̂_4, F̂_3, F̂_2, F̂_1):
    the stage index of each block of the fuse conv's input channels."""
    return list(reversed(range(num_stages)))


class MLP(nn.Module):
    """The decoder's per-stage Linear(C_i, C) (Eq. 4, first line; official ``linear_c{i}``) on a map."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvBNReLU(nn.Module):
    """The decoder's fuse (Eq. 4, third line; official ``linear_fuse``): 1×1 conv without bias → BatchNorm → ReLU."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class AllMLPDecoder(nn.Module):
    """The All-MLP decoder (§3.2, Eq. 4): unify channels, upsample to H/4, concatenate, fuse, classify.

    Args:
        in_channels: channels of the encoder stages.
        dim: decoder width C.
        num_classes: output classes N_cls.
        dropout: Dropout2d probability before the classifier.
        fast: compute with ``segformer.fast`` (same parameters and results, far fewer multiply-adds);
            default ``FAST``.
    """

    def __init__(
        self, in_channels: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1, fast: bool | None = None
    ) -> None:
        super().__init__()
        self.num_stages = len(in_channels)
        for i, c in enumerate(in_channels):
            setattr(self, f"linear_c{i + 1}", MLP(c, dim))
        self.linear_fuse = ConvBNReLU(self.num_stages * dim, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)
        self.fast = FAST if fast is None else fast
        self.fused_weights = FusedWeightCache()

    def mlps(self) -> list[MLP]:
        """The per-stage ``linear_c{i}``, in stage order."""
        return [getattr(self, f"linear_c{i + 1}") for i in range(self.num_stages)]

    def projections(self) -> list[nn.Linear]:
        return [mlp.proj for mlp in self.mlps()]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        order = concat_order(self.num_stages)
        if self.fast:
            fuse_weight, bn = self.linear_fuse.conv.weight, self.linear_fuse.bn
            x = fuse(features, self.fused_weights(self.projections(), fuse_weight, bn, order), bn)
            pred = self.linear_pred
            return classify(self.dropout(x), pred.weight.flatten(1), pred.bias)
        size = features[0].shape[-2:]
        maps = [upsample(mlp(f), size) for mlp, f in zip(self.mlps(), features, strict=True)]
        x = self.linear_fuse(torch.cat([maps[i] for i in order], dim=1))
        return self.linear_pred(self.dropout(x))


def upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear Upsample(H/4 × W/4) of Eq. 4 (align_corners False, as the official head)."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegFormer(nn.Module):
    """SegFormer for semantic segmentation (Fig. 2): ``backbone`` (MiT) → ``decode_head`` (All-MLP).

    ``forward`` returns logits of shape B×num_classes×ceil(H/4)×ceil(W/4).

    Args:
        config: variant, classes and options; ``model.config`` afterwards (read-only).
    """

    def __init__(self, config: SegFormerConfig) -> None:
        super().__init__()
        if not isinstance(config, SegFormerConfig):
            raise TypeError(f"SegFormer takes a SegFormerConfig, got {type(config).__name__} (see create_model)")
        self._config = config
        arch = config.arch
        self.backbone = MixTransformer(
            arch, config.in_channels, config.drop_path_rate, config.layer_norm_eps, config.attn_drop_rate
        )
        self.decode_head = AllMLPDecoder(arch.widths, arch.decoder_dim, config.num_classes, config.decoder_dropout)
        # Official: the encoder is initialised by its own scheme; the head keeps PyTorch's defaults except
        # the fuse conv, which mmcv's ConvModule initialises He-normal over fan-out (the same rule).
        self.backbone.apply(init_weights)
        init_weights(self.decode_head.linear_fuse.conv)

    @property
    def config(self) -> SegFormerConfig:
        return self._config

    @property
    def num_classes(self) -> int:
        return self._config.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self._config.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))

    def save_pretrained(self, directory: str | Path, layout: str = "ours") -> Path:
        """Write ``model.safetensors`` and ``config.json`` to ``directory`` (``segformer.writer.write_pretrained``).

        Args:
            layout: "ours" (read back bit-exactly by ``from_pretrained``) or "hf" (loadable by transformers'
                ``SegformerForSemanticSegmentation`` and ``SegformerImageProcessor``).
        """
        return write_pretrained(self.state_dict(), self.config, directory, layout)


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


def create_model(variant: str, num_classes: int = 150, **fields) -> SegFormer:
    """Build a randomly initialised SegFormer-``variant`` ("b0" … "b5", "mit-b0" style accepted).

    Args:
        fields: other ``SegFormerConfig`` fields (class_names, drop_path_rate, protocol …).
    """
    return SegFormer(SegFormerConfig(variant, num_classes, **fields))


__all__ = [
    "FAST",
    "MIN_INPUT_SIZE",
    "AllMLPDecoder",
    "MixTransformer",
    "SegFormer",
    "SegFormerConfig",
    "create_model",
]
