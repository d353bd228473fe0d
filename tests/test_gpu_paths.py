"""The GPU-oriented paths, checked on the CPU: data-wait share, input-pipeline benchmark, recipe switches,
fused AdamW, compiled training, and the inference options (dtype, compile, size buckets)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import segformer
import segformer.device
import segformer.runner
from reference import tiny_recipe
from segformer.benchmark import Case, format_timings, run_case
from segformer.benchmark.summary import append_records, read_records, sections
from segformer.cli import eval as eval_cli
from segformer.cli import main
from segformer.cli import predict as predict_cli
from segformer.cli.common import segmenter_options
from segformer.config import TestProtocol
from segformer.data import write_synthetic
from segformer.inference import Segmenter, aligned_size, sliding_windows
from segformer.recipe import load_recipe, packaged_recipes
from segformer.train import train
from segformer.training.data import TimedBatches
from segformer.training.optim import build_optimizer
from segformer.training.step import resolve_auto

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data"), num_train=4, num_val=2, size=(64, 64), seed=0)


def test_data_wait_share_from_a_loader_stub_with_known_sleeps():
    def loader():
        while True:
            time.sleep(0.05)  # the data arrives after 50 ms
            yield "batch"

    batches = TimedBatches(loader())
    start = time.perf_counter()
    for _ in range(4):
        next(batches)
        time.sleep(0.15)  # a 150 ms step: a quarter of the time is spent waiting
    share = batches.take_share(time.perf_counter() - start)
    assert 0.15 < share < 0.3
    assert batches.take_share(1.0) == 0.0  # the sum starts again after each interval
    next(batches)
    assert 0.04 < batches.take_share(0.1) <= 1.0


def test_benchmark_data_prints_positive_images_per_second(data_root, capsys):
    argv = ["benchmark", "--data", "--dataset", "custom", "--data-root", str(data_root), "--recipe", "demo"]
    assert main([*argv, "--workers", "0", "--batch-size", "2", "--repeats", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    rate = float(re.search(r"input pipeline: ([0-9.]+) img/s", out).group(1))
    assert rate > 0 and "batch 2, 0 workers" in out
    assert main(["benchmark", "--data", "--dataset", "custom"]) == 1  # no --data-root
    assert "--data needs --data-root" in capsys.readouterr().err


def test_recipe_train_switches_are_written_out_and_validated():
    for name in packaged_recipes():
        text = (resources.files("segformer") / "recipes" / f"{name}.toml").read_text()
        assert "[train]\ncompile = false" in text and '\nchannels_last = "auto"' in text, name
    recipe = load_recipe("demo", ["train.compile=true", "train.channels_last=false"])
    assert (recipe.train.compile, recipe.train.channels_last) == (True, False)
    with pytest.raises(ValueError, match=r'train.compile must be true, false or "auto"'):
        load_recipe("demo", ["train.compile=yes"])
    with pytest.raises(ValueError, match=r"train.channels_last: expected bool or str, got int 1"):
        load_recipe("demo", ["train.channels_last=1"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [resolve_auto(v, cpu) for v in ("auto", True, False)] == [False, True, False]
    assert [resolve_auto(v, cuda) for v in ("auto", True, False)] == [True, True, False]


def test_fused_adamw_equals_the_default_implementation():
    """The trainer asks for fused=True on CUDA; torch also has the fused kernel on the CPU, so compare there."""
    torch.manual_seed(0)
    models = [segformer.create_model("b0", num_classes=3, drop_path_rate=0.0, decoder_dropout=0.0) for _ in "ab"]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [build_optimizer(m, lr=1e-3, fused=fused) for m, fused in zip(models, (None, True), strict=True)]
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults["fused"]
    initial = torch.cat([p.detach().flatten() for p in models[0].parameters()])
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # the same gradients for both (backpropagated ones would diverge where they are ~0)
        grads = [torch.randn(p.shape, generator=generator) for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers, strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    # AdamW moves each weight by about lr per step (3e-3 in all); the two kernels round differently
    default, fused = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models)
    assert (default - initial).abs().max() > 2e-3
    torch.testing.assert_close(fused, default, atol=1e-5, rtol=0)


def test_compiled_training_matches_eager_and_logs_the_data_wait(data_root, tmp_path, monkeypatch):
    """train.compile = true for 2 iterations of the tiny recipe: the same losses as eager.

    inductor's C++ build of even a tiny B0 takes over 100 s on this 2-core machine, so the compiled run uses
    the aot_eager backend: the same Dynamo capture and AOTAutograd forward/backward graphs, without code generation.
    """
    compiled, torch_compile = [], torch.compile

    def compile_aot_eager(model, **options):
        compiled.append(model)
        return torch_compile(model, backend="aot_eager")

    losses = {}
    for name, switch in (("eager", "false"), ("compiled", "true")):
        recipe = tiny_recipe(data_root, {"schedule.iters": 2, "train.compile": switch})
        with monkeypatch.context() as patch:
            patch.setattr(torch, "compile", compile_aot_eager)
            train(recipe, tmp_path / name, device="cpu", quiet=True)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if "loss" in r]
        assert all(0.0 <= r["data_wait"] <= 1.0 for r in records if "loss" in r)
    torch._dynamo.reset()
    assert len(compiled) == 1  # only the compile = true run compiled, once
    assert len(losses["eager"]) == 2
    torch.testing.assert_close(losses["compiled"], losses["eager"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------- inference options


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return segformer.create_model("b0", num_classes=5, drop_path_rate=0.0, decoder_dropout=0.0).eval()


def test_slide_windows_of_one_crop_share_one_size():
    """One window size per crop, so a slide protocol needs one captured graph per batch size."""
    windows = sliding_windows(1024, 2048, (512, 512), (341, 341))
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in windows} == {(512, 512)}
    for height, width in ((375, 500), (512, 683), (1, 1), (2048, 1023)):
        aligned = aligned_size(height, width, 32)
        assert aligned[0] % 32 == aligned[1] % 32 == 0 and 0 <= aligned[0] - height < 32


def test_dtype_and_compile_options_and_cli_flags(small_model, monkeypatch):
    default = Segmenter(small_model, TestProtocol()).runner  # conftest sets SEGFORMER_DTYPE=fp32
    assert (default.amp_dtype, default.compiled, default.graphs, default.channels_last) == (None, None, None, False)
    monkeypatch.delenv("SEGFORMER_DTYPE")
    for amx, avx512_bf16, expected in (
        (True, False, torch.bfloat16),
        (False, True, torch.bfloat16),
        (False, False, None),
    ):
        monkeypatch.setattr(segformer.device, "has_amx", lambda amx=amx: amx)
        monkeypatch.setattr(segformer.device, "has_avx512_bf16", lambda on=avx512_bf16: on)
        assert Segmenter(small_model, TestProtocol()).runner.amp_dtype is expected
    monkeypatch.setenv("SEGFORMER_DTYPE", "bf16")  # the variable overrides the hardware's default
    assert Segmenter(small_model, TestProtocol()).precision == "bf16"
    monkeypatch.setenv("SEGFORMER_DTYPE", "fp64")
    with pytest.raises(ValueError, match="SEGFORMER_DTYPE=fp64: expected one of fp32, bf16, fp16"):
        Segmenter(small_model, TestProtocol())
    monkeypatch.setenv("SEGFORMER_DTYPE", "fp32")
    assert Segmenter(small_model, TestProtocol(), dtype="bf16").runner.amp_dtype is torch.bfloat16
    assert "torch bf16" in repr(Segmenter(small_model, TestProtocol(), dtype="bf16"))
    with pytest.warns(UserWarning, match="fp16 mixed precision needs a CUDA device"):
        assert Segmenter(small_model, TestProtocol(), dtype="fp16").runner.amp_dtype is None
    with pytest.raises(ValueError, match="precision 'fp8': expected one of fp32, bf16, fp16"):
        Segmenter(small_model, TestProtocol(), dtype="fp8")
    for command in (predict_cli, eval_cli):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        required = ["--weights", "w"] + (
            ["--dataset", "ade20k", "--data-root", "d"] if command is eval_cli else ["x", "--out", "o"]
        )
        flags = ["--dtype", "bf16", "--compile", "--no-graphs", "--mode", "slide", "--aug"]
        options = segmenter_options(parser.parse_args([*required, *flags]))
        assert options == {
            "aug": True,
            "dtype": "bf16",
            "compile": True,
            "graphs": False,
            "mode": "slide",
            "scale": None,
            "crop": None,
            "stride": None,
        }
        assert Segmenter(small_model, TestProtocol(), **options).protocol.mode == "slide"
        defaults = segmenter_options(parser.parse_args(required))
        assert defaults == dict.fromkeys(options, None) | {"compile": False}  # compile is opt-in, graphs default


def aot_eager_compile(calls: list):
    """torch.compile with the aot_eager backend (inductor's C++ build takes minutes here), counting the calls."""
    torch_compile = torch.compile

    def compile_(model, **options):
        compiled = torch_compile(model, backend="aot_eager", dynamic=options.get("dynamic"))

        def run(x):
            calls.append(tuple(x.shape[-2:]))
            return compiled(x)

        return run

    return compile_


def test_opt_in_compile_on_cpu_equals_eager_at_every_size(small_model, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", aot_eager_compile(calls))
    eager = Segmenter(small_model, TestProtocol(scale=None))
    compiled = Segmenter(small_model, TestProtocol(scale=None), compile=True)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(compiled.network(x), eager.network(x), atol=1e-5, rtol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(compiled.predict(image), eager.predict(image))
    assert calls == [(64, 96), (64, 96)]
    odd = image[:50, :70]  # any size is compiled (up to dynamo's recompile limit), never padded
    np.testing.assert_array_equal(compiled.predict(odd), eager.predict(odd))
    assert calls == [(64, 96), (64, 96), (50, 70)]
    torch._dynamo.reset()


def test_a_failing_compile_falls_back_to_eager_with_one_warning(small_model, monkeypatch):
    def broken(model, **options):
        def run(x):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    segmenter = Segmenter(small_model, TestProtocol(scale=None), compile=True)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError\): running the model eagerly") as caught:
        first = segmenter.predict(image)
        second = segmenter.predict(image)
    assert len(caught) == 1 and segmenter.runner.compiled.compiled_forward is None
    expected = Segmenter(small_model, TestProtocol(scale=None)).predict(image)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)


# ----------------------------------------------------------------------------------------- the GPU benchmark

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_script(name: str):
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_fast_path_row_reports_agreement_with_fp32_eager():
    case = Case(variant="b0", height=64, width=64, batch_size=1, num_classes=5)
    results = run_case(case, repeats=1, warmup=0, memory=False, fast=True)
    assert [r.impl for r in results] == ["ours", "ours-fast"]
    assert [r.precision for r in results] == ["fp32", "fp32"]  # conftest: SEGFORMER_DTYPE=fp32
    assert results[0].agreement == results[1].agreement == 1.0  # on the CPU the default path is then eager fp32
    assert results[1].max_abs_diff < 1e-5
    assert results[1].first_call_s > 0 and results[1].second_call_s > 0 and results[0].first_call_s is None
    table = format_timings(results)
    assert "agree %" in table and "100.00" in table and "1st call ms" in table


def test_benchmark_fast_row_runs_in_the_runners_default_precision(monkeypatch, tmp_path, capsys):
    """Without --dtype the fast row is the default path (the runner's default precision), the others fp32."""
    monkeypatch.delenv("SEGFORMER_DTYPE")
    monkeypatch.setattr(segformer.runner, "default_precision", lambda device: "bf16")
    summary = tmp_path / "rows.jsonl"
    argv = ["benchmark", "--sizes", "64x64", "--num-classes", "5", "--repeats", "1", "--warmup", "0", "--no-memory"]
    assert main([*argv, "--fast", "--json", str(summary), "--section", "s"]) == 0
    table = capsys.readouterr().out
    rows = read_records(summary)
    assert [(r["impl"], r["precision"]) for r in rows] == [("ours", "fp32"), ("ours-fast", "bf16")]
    assert re.search(r"ours-fast\s+bf16", table) and re.search(r"ours\s+fp32", table)
    assert rows[1]["max_abs_diff"] > 1e-4  # bf16 did run: its logits are not the fp32 reference's
    assert rows[1]["first_call_ms"] > 0 and rows[0]["first_call_ms"] is None
    assert main([*argv, "--fast", "--dtype", "fp32", "--json", str(summary), "--section", "t"]) == 0
    explicit = sections(read_records(summary))["t"]["rows"]
    assert [r["precision"] for r in explicit] == ["fp32", "fp32"] and explicit[1]["max_abs_diff"] < 1e-5


def test_benchmark_times_the_runner_replaying_the_graph_it_captured_first(small_model):
    """The runner row's first two calls come before the timing (the second captures), so even with no warm-up
    every timed call is a replay. A stand-in capture on the CPU counts the replays."""
    from segformer.benchmark.models import RunnerPath
    from segformer.benchmark.run import measure
    from segformer.runner import GraphCache

    captured, replays = [], []

    def capture(forward, example):
        captured.append(tuple(example.shape))

        def replay(x):
            replays.append(tuple(x.shape))
            return forward(x)

        return replay

    case = Case(variant="b0", height=64, width=64, batch_size=2, num_classes=5)
    fast = RunnerPath(small_model, case, compile=False)
    fast.runner.graphs = GraphCache(capture)
    results = measure({"ours": small_model, "ours-fast": fast}, case, repeats=3, warmup=0)
    assert captured == [(2, 3, 64, 64)]  # once, at the second call
    assert len(replays) == 1 + 1 + 3  # the capturing call, the output for agree %, the 3 timed calls
    assert len(results[1].latencies_s) == 3 and results[1].graphs and not results[0].graphs
    assert results[1].max_abs_diff < 1e-5


def test_the_summary_keeps_finished_sections_when_a_run_is_killed_mid_write(tmp_path):
    """A process appends section a, then is killed (SIGKILL) while it appends section b: a stays readable, b is
    not half there, and later appends go on after a torn last line."""
    path = tmp_path / "gpu.jsonl"
    child = f"""
import os, signal
import segformer.benchmark.summary as summary
summary.append_records({str(path)!r}, "a", [{{"x": 1}}, {{"x": 2}}])
summary.append_status({str(path)!r}, "a", "ok", 1.0)
dumps, calls = summary.json.dumps, []
def dying(record, **options):
    calls.append(record)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # killed while the section's records are being written
    return dumps(record, **options)
summary.json.dumps = dying
summary.append_records({str(path)!r}, "b", [{{"x": 3}}, {{"x": 4}}, {{"x": 5}}])
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    grouped = sections(read_records(path))
    assert list(grouped) == ["a"]
    assert [r["x"] for r in grouped["a"]["rows"]] == [1, 2] and grouped["a"]["status"]["status"] == "ok"
    with open(path, "a") as f:  # what a kill inside the write itself leaves: a line cut short
        f.write('{"section": "b", "kind": "row", "x"')
    append_records(path, "c", [{"x": 6}])
    grouped = sections(read_records(path))
    assert list(grouped) == ["a", "c"] and grouped["c"]["rows"] == [{"x": 6}]
    with open(path, "a") as f:
        f.write("not json\n")
    with pytest.raises(ValueError, match=r"gpu.jsonl:\d+: not a JSON object"):
        read_records(path)


def test_a_failing_section_prints_failed_and_the_next_one_runs(tmp_path):
    """gpu.sh's sections, as its section runner runs them: a failing, a hanging and a late section each print
    FAILED with their error, exit 0 so the next section runs, and are recorded; a good one is recorded ok."""
    path = tmp_path / "gpu.jsonl"
    runner = [sys.executable, str(BENCHMARKS / "gpu_section.py"), "--json", str(path)]
    failing = [sys.executable, "-c", "import sys; print('working', file=sys.stderr); raise ValueError('boom')"]
    hanging = [sys.executable, "-c", "import time; time.sleep(60)"]
    script = " && ".join(
        shlex.join(command)
        for command in (
            [*runner, "--name", "bad", "--", *failing],
            [*runner, "--name", "slow", "--timeout", "1", "--", *hanging],
            [*runner, "--name", "late", "--deadline", str(time.time() - 1), "--", "true"],
            [*runner, "--name", "good", "--", sys.executable, "-c", "print('figures')"],
        )
    )
    start = time.monotonic()
    done = subprocess.run(["bash", "-c", script + " && echo after"], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30  # the hanging command was stopped at its timeout
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "FAILED bad: ValueError: boom" in out
    assert re.search(r"FAILED slow: ran past its 1 s and was stopped", out)
    assert "FAILED late: not started" in out
    assert "figures" in out and "-- good: done" in out and out.rstrip().endswith("after")
    statuses = {name: entry["status"] for name, entry in sections(read_records(path)).items()}
    assert {name: s["status"] for name, s in statuses.items()} == {
        "bad": "failed",
        "slow": "failed",
        "late": "failed",
        "good": "ok",
    }
    assert statuses["bad"]["error"] == "ValueError: boom" and statuses["good"]["error"] is None


def test_gpu_sh_runs_the_chosen_sections_and_reports_the_ones_past_its_budget(tmp_path, monkeypatch):
    """gpu.sh --dry-run on one section: the machine row and its status land in --json (a path relative to the
    caller); with no budget left every section prints FAILED and the script still reaches its summary."""
    monkeypatch.delenv("SEGFORMER_DTYPE")
    expected = segformer.device.default_precision(torch.device("cpu"))
    script = str(BENCHMARKS / "gpu.sh")
    done = subprocess.run(
        ["bash", script, "--dry-run", "--sections", "machine", "--json", "out/gpu.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    grouped = sections(read_records(tmp_path / "out" / "gpu.jsonl"))
    assert list(grouped) == ["machine"] and grouped["machine"]["status"]["status"] == "ok"
    row = grouped["machine"]["rows"][0]
    assert (row["torch"], row["default_precision"], row["device"]) == (torch.__version__, expected, "cpu")
    assert "machine: ok" in done.stdout
    late = subprocess.run(
        ["bash", script, "--dry-run", "--budget", "0", "--sections", "machine latency", "--json", "late.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert late.returncode == 0 and late.stdout.count("FAILED") == 2, late.stdout
    assert "FAILED latency: not started" in late.stdout and "latency: failed" in late.stdout


def test_serve_load_lowers_only_its_client_threads_so_each_server_starts_at_the_same_priority(monkeypatch):
    """The clients run at nice 19 in their own threads; the main thread, which starts every server, keeps its
    priority (it once reniced itself, so the second server started at nice 19)."""
    serve_load = load_script("serve_load")
    client_priorities = []

    class Answer:
        status_code = 200

    class Client:  # stands in for httpx.Client: answers at once, notes the calling thread's nice value
        def __init__(self, **options):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def post(self, *args, **kwargs):
            client_priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            time.sleep(0.001)
            return Answer()

    monkeypatch.setattr(serve_load.httpx, "Client", Client)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert before < 19
    rate = serve_load.server_rate("http://127.0.0.1:1", b"png", clients=2, seconds=0.05)
    assert rate > 0 and set(client_priorities[1:]) == {19}  # the first post is the warm-up, from this thread
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"], capture_output=True, text=True
    )
    assert int(child.stdout) == before  # what the next server would start with


def test_end_to_end_summary_weights_the_intervals_after_the_skipped_iterations():
    module = load_script("gpu_end_to_end")
    records = [
        {"iter": 10, "sec_per_iter": 5.0, "data_wait": 0.9},  # compilation and worker start-up: left out
        {"iter": 20, "sec_per_iter": 0.1, "data_wait": 0.5},
        {"iter": 25, "mIoU": 0.1},
        {"iter": 40, "sec_per_iter": 0.2, "data_wait": 0.0},
    ]
    rate, wait = module.summarize(records, batch_size=16, after=10)
    # 10 iterations of 0.1 s and 20 of 0.2 s: 30 × 16 images in 5 s; 0.5 s waited
    assert rate == pytest.approx(30 * 16 / 5.0) and wait == pytest.approx(0.5 / 5.0)
    rate, wait = module.summarize(records, batch_size=16, after=11)  # only the interval from iteration 20 on
    assert rate == pytest.approx(20 * 16 / 4.0) and wait == 0.0
    with pytest.raises(ValueError, match="no logged interval starts at iteration 100"):
        module.summarize(records, batch_size=16, after=100)
