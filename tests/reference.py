"""The independent oracle: transformers' SegformerForSemanticSegmentation, randomly initialised."""

from __future__ import annotations

import torch
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

# Paper Table 6, written out here independently of segformer.config.VARIANTS.
HF_VARIANTS = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


def make_hf_model(variant: str, num_labels: int = 7, seed: int = 0, **config) -> SegformerForSemanticSegmentation:
    """A random HF SegFormer in eval mode with non-trivial BatchNorm statistics and O(1) logits."""
    torch.manual_seed(seed)
    widths, depths, decoder = HF_VARIANTS[variant]
    cfg = SegformerConfig(
        num_labels=num_labels, hidden_sizes=widths, depths=depths, decoder_hidden_size=decoder, **config
    )
    model = SegformerForSemanticSegmentation(cfg).eval()
    head = model.decode_head
    perturb_batchnorm(head.batch_norm)
    with torch.no_grad():
        head.classifier.weight.normal_(0.0, decoder**-0.5)
        head.classifier.bias.normal_(0.0, 0.1)
        for proj in head.linear_projections:
            proj.proj.bias.normal_(0.0, 0.1)
    return model


def perturb_batchnorm(bn: nn.BatchNorm2d) -> None:
    """Non-trivial running statistics and affine parameters (fresh ones are 0, 1, 1, 0), as after training."""
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.2)
        bn.num_batches_tracked.fill_(1000)
