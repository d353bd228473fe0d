"""Two processes under torchrun (gloo, CPU) train exactly like one process with the doubled batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segformer.train as trainer
from reference import tiny_recipe
from segformer.data.synthetic import write_synthetic
from segformer.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # record_run also sets one thread in the torchrun ranks


def record_run(out: Path, root: Path, batch: int) -> None:
    """Run the real trainer for 3 steps, saving this rank's model state and gradients after every step."""
    torch.set_num_threads(1)
    steps, losses = [], []
    original = trainer.train_step

    def recording(**kwargs):
        loss = original(**kwargs)
        network = kwargs["network"]
        module = getattr(network, "module", network)
        record = {k: v.detach().double().clone() for k, v in module.state_dict().items()}
        record.update({f"grad.{k}": p.grad.double().clone() for k, p in module.named_parameters()})
        steps.append(record)
        losses.append(loss.item())
        return loss

    overrides = {
        "schedule.iters": 3,
        "schedule.ckpt_interval": 3,
        "data.batch_size": batch,
        "data.photometric": "true",
        "model.drop_path_rate": 0.0,
        "model.decoder_dropout": 0.0,
        "optim.lr": 1e-4,
        "optim.warmup_iters": 0,
        "clip_grad": 0.0,
    }
    recipe = tiny_recipe(root, overrides)
    trainer.train_step = recording
    try:
        trainer.train(recipe, out / "run", device="cpu")
    finally:
        trainer.train_step = original
    torch.save({"steps": steps, "losses": losses}, out / f"rank{os.environ.get('RANK', '0')}.pt")


# run by torchrun: each rank records its own states
SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_distributed_train import record_run
record_run(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
"""


def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path):
    root = write_synthetic(tmp_path / "data", num_train=12, num_val=2, size=(64, 64), seed=0)
    script = tmp_path / "record.py"
    script.write_text(SCRIPT)
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*torchrun, str(script), str(Path(__file__).parent), str(two), str(root), "2"]
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one.mkdir()
    record_run(one, root, 4)  # one process with batch 4, here

    rank0, rank1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    single = torch.load(one / "rank0.pt")
    assert len(rank0["steps"]) == len(single["steps"]) == 3
    names = [k for k in single["steps"][0] if not k.startswith("grad.")]
    sure = {k: True for k in names}  # elements whose gradient stood clear of rounding noise at every step so far
    compared = total = 0
    for step, (a, b, ref) in enumerate(zip(rank0["steps"], rank1["steps"], single["steps"], strict=True)):
        for key in ref:
            assert torch.equal(a[key], b[key]), (step, key)  # DDP keeps the replicas identical after every step
        for key in names:
            grad = ref.get(f"grad.{key}")
            if grad is None:  # BatchNorm buffers: running_var is shift-invariant, so SyncBN's equals the big batch's
                if key.endswith("running_var"):
                    torch.testing.assert_close(a[key], ref[key], rtol=1e-5, atol=1e-6, msg=f"step {step} {key}")
                continue
            # the all-reduced gradient is the doubled batch's gradient, to rounding relative to the tensor's scale
            # (looser after the first step, once the weights carry the rounding noise described below)
            atol = (1e-4 if step == 0 else 2e-3) * grad.abs().max().item() + 2e-6
            torch.testing.assert_close(a[f"grad.{key}"], grad, rtol=0, atol=atol, msg=f"step {step} grad {key}")
            # Adam's normalised update turns a gradient that is zero in exact arithmetic (the linear_c and norm4
            # biases: the decoder BatchNorm removes per-channel constants) into ±lr steps of rounding noise, so
            # weights are compared where the gradient was clearly non-zero
            sure[key] = sure[key] & (grad.abs() > 1e-6)
            torch.testing.assert_close(a[key][sure[key]], ref[key][sure[key]], rtol=0, atol=1e-5, msg=f"{key}")
            compared += int(sure[key].sum())
            total += sure[key].numel() if sure[key].ndim else 1
    assert compared > 0.9 * total
    moved = max((single["steps"][-1][k] - single["steps"][0][k]).abs().max().item() for k in names)
    assert moved > 1e-4  # the weights really changed, beyond the tolerance above
    # each rank's loss averages its own pixels; their mean is the single process's loss
    mean_loss = (torch.tensor(rank0["losses"]) + torch.tensor(rank1["losses"])) / 2
    torch.testing.assert_close(mean_loss, torch.tensor(single["losses"]), rtol=1e-5, atol=0)
    # only rank 0 wrote the run folder, and its checkpoint holds every rank's generator states
    state = load_checkpoint(two / "run" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
