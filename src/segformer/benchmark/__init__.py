"""Speed, multiply-adds and peak memory of SegFormer, optionally side by side with transformers' model.

Every model in a comparison is built from the same weights and run on the same input in the same
process; timings are interleaved (one run of each model per round) so that load from other
processes hits all of them alike, and the latency is the median over rounds after warm-up.

The rows (``segformer.benchmark.case``):

* ``ours``: our model, eager, at ``--dtype`` (fp32 when not given), channels-first: the reference of ``max |Δ|``.
* ``ours-fast`` (``--fast``): the default path of predict and eval, a ``segformer.runner.NetworkRunner`` as
  ``Segmenter`` builds it: on CUDA bf16 autocast (the default precision, unless ``--dtype`` says otherwise),
  channels-last and a CUDA graph replayed per input shape (``--no-graphs``: eager kernels); on the CPU the default
  precision (bf16 where the CPU computes it natively), eager. Its first two calls at the case's shape are timed
  apart (``1st call``: eager; ``2nd call``: the CUDA graph's warm-up and capture), then it is timed replaying.
  A training row is the trainer's step with the recipe's data layout (channels-last on CUDA), not compiled.
* ``ours-compiled`` (``--compile``): the opt-in compiled path, ``NetworkRunner(compile=True)`` (on CUDA also
  replayed as CUDA graphs); its ``1st call`` holds the compile. A training row is the trainer's compiled step.
  ``--compile`` also compiles transformers' rows (``torch.compile`` default mode).
* ``hf-eager``, ``hf-sdpa`` (``--compare-hf``): ``SegformerForSemanticSegmentation`` loaded from our weights saved
  in its layout, with ``attn_implementation`` "eager" / "sdpa" (``--hf-attention`` picks), at ``--dtype``. Our
  model is then built with ``layer_norm_eps=1e-5`` (transformers' value) so that outputs are comparable.

Every row reports ``agree %``, the share of logit pixels whose argmax equals our fp32 eager model's, and its
precision. A training step (``--train``) is the trainer's ``train_step`` for every model, with the packaged
``custom`` recipe's AdamW groups (decoder lr × 10, no decay on norms; fused on CUDA), loss and GradScaler rule.

* GMACs: multiply-accumulates counted by ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2),
  the unit of the paper's "GFLOPs". Counted after warm-up, so our cached fused decoder weights
  (eval mode) are not counted; a training step counts forward and backward.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one step after warm-up minus the memory
  allocated before it; on CPU the rise of the peak resident set size (``VmHWM``) over the RSS
  before the step, in a fresh subprocess per model and case, after a warm-up step on a small
  input (Linux: the peak is reset to the current RSS through ``/proc/self/clear_refs``).
* ``--json PATH`` appends every row to a JSON Lines summary (``segformer.benchmark.summary``).

The names below are imported on first use (PEP 562): the summary module needs no torch.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segformer.benchmark.case import Case, Result, format_timings, result_row
    from segformer.benchmark.models import load_model, make_inputs, make_step, save_weights
    from segformer.benchmark.pipeline import data_images_per_s
    from segformer.benchmark.run import run_case
    from segformer.benchmark.timing import num_threads

# public name -> the module of this package that defines it
_PUBLIC = {
    **dict.fromkeys(("Case", "Result", "format_timings", "result_row"), "case"),
    **dict.fromkeys(("load_model", "make_inputs", "make_step", "save_weights"), "models"),
    "data_images_per_s": "pipeline",
    "run_case": "run",
    "num_threads": "timing",
}


def __getattr__(name: str):
    """A public name from its module, imported on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'segformer.benchmark' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"segformer.benchmark.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Case",
    "Result",
    "data_images_per_s",
    "format_timings",
    "load_model",
    "make_inputs",
    "make_step",
    "num_threads",
    "result_row",
    "run_case",
    "save_weights",
]
