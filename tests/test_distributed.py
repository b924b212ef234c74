"""Training on several processes (torchrun, DDP over gloo on the CPU) and over two devices (the
paper's column split): the same optimisation as one process, exact elastic restarts, clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet import create_model, to_columns
from alexnet.errors import UserError
from alexnet.models.checkpoint import read_checkpoint
from alexnet.training.distributed import Context, ShardSampler, place_columns
from alexnet.training.optim import LARS, lars_param_groups
from alexnet.training.recipes import RECIPES
from alexnet.training.train import fit

# Deterministic given the weights: no random crops (input = resize), flips, lighting or dropout.
EXACT = ["--recipe", "small", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--schedule", "constant",
         "--no-flip", "--pca-std", "0", "--dropout", "0", "--input-size", "36", "--lr", "0.01", "--quiet"]  # fmt: skip


def _torchrun(
    nproc: int, args: list[str], *, env: dict | None = None, restarts: int = 0
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", "-m", "alexnet", "train", *args]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def _history(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize(("size", "world"), [(10, 2), (9, 2), (7, 3), (5, 1), (2, 4)])
def test_shards_cover_every_sample_exactly_once_per_epoch(size, world):
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            sampler = ShardSampler(size, rank=rank, world=world, seed=3)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(sampler) == len(shards[-1])
        flat = [i for s in shards for i in s]
        assert sorted(flat) == list(range(size))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_n_shards_of_batch_b_cover_what_one_process_with_batch_nb_covers():
    one = list(ShardSampler(24, seed=5))
    two = [list(ShardSampler(24, rank=r, world=2, seed=5)) for r in range(2)]
    for step in range(3):  # per-process batch 4, global batch 8
        together = two[0][4 * step : 4 * step + 4] + two[1][4 * step : 4 * step + 4]
        assert sorted(together) == sorted(one[8 * step : 8 * step + 8])


def test_each_epoch_has_its_own_order_and_the_same_on_every_run():
    a, b = ShardSampler(50, seed=1), ShardSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(ShardSampler(6, seed=1, shuffle=False)) == list(range(6))


def test_each_process_draws_its_own_augmentation_and_the_same_again_for_the_same_epoch():
    def draws(rank: int, epoch: int) -> torch.Tensor:
        Context(rank=rank, world=2).seed(seed=3, epoch=epoch)
        return torch.rand(8)

    rank0, rank1 = draws(0, epoch=5), draws(1, epoch=5)
    assert not torch.equal(rank0, rank1)  # two processes flip and crop different images differently
    assert torch.equal(draws(1, epoch=5), rank1) and torch.equal(draws(0, epoch=5), rank0)  # a resume repeats them
    assert not torch.equal(draws(0, epoch=6), rank0)


def test_only_rank_0_is_the_main_process():
    assert Context().is_main and Context(rank=0, world=2).is_main
    assert not Context(rank=1, world=2).is_main and not Context(rank=3, world=4).is_main


# ------------------------------------------------------------------------------------------- data parallel
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import write_images

    root = tmp_path_factory.mktemp("ddp") / "data"
    write_images(root / "train", 8, seed=0)  # 24 images: 3 steps of 8
    write_images(root / "val", 3, seed=1)
    return root


def test_two_processes_with_batch_2b_train_like_one_process_with_batch_2b(data, tmp_path):
    args = [str(data), *EXACT, "--epochs", "2", "--batch-size", "8"]
    one = tmp_path / "one"
    fit(data, one, dataclasses.replace(_config(args), epochs=2), quiet=True)
    result = _torchrun(2, [*args, "--output", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder: ") == 1  # said by rank 0 alone
    a, b = _weights(one), _weights(tmp_path / "two")
    for k in a:
        # The sums run in another order: up to 1.3e-5 apart after these 6 steps on an AVX-512 EPYC (1e-5 on
        # a Xeon); a wrong average (a sum, or one process's gradient) is off by lr x gradient, above 1e-3.
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=5e-5)
    h1, h2 = _history(one), _history(tmp_path / "two")
    for line1, line2 in zip(h1, h2, strict=True):  # metrics reduced over both processes
        assert line1["train_loss"] == pytest.approx(line2["train_loss"], rel=1e-4)
        assert line1["val_top1"] == pytest.approx(line2["val_top1"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in one.iterdir())


@pytest.mark.parametrize(("rank", "lines"), [("0", 1), ("1", 0)])
def test_under_torchrun_only_rank_0_prints_an_error(rank, lines, data, tmp_path, monkeypatch, capsys):
    from alexnet.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)  # every process meets the same refused flag; one says so
    assert main(["train", str(data), *EXACT, "--lr", "nan", "--output", str(tmp_path / "run")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == lines


def _config(args: list[str]):
    from alexnet.training.recipes import resolve_config

    overrides = {"workers": 0, "device": "cpu", "precision": "fp32", "schedule": "constant", "flip": False,
                 "pca_std": 0.0, "dropout": 0.0, "input_size": 36, "lr": 0.01, "batch_size": 8}  # fmt: skip
    return resolve_config("small", overrides=overrides)


def test_a_killed_process_is_restarted_by_torchrun_and_the_run_ends_as_if_nothing_happened(data, tmp_path):
    args = [str(data), *EXACT, "--epochs", "3", "--batch-size", "8"]
    begin = time.perf_counter()
    clean = _torchrun(2, [*args, "--output", str(tmp_path / "clean")])
    clean_s = time.perf_counter() - begin
    assert clean.returncode == 0, clean.stderr[-3000:]
    begin = time.perf_counter()
    # rank 1 dies (SIGKILL) at step 2 of epoch 2; torchrun restarts the group, which resumes after epoch 1
    killed = _torchrun(2, [*args, "--output", str(tmp_path / "killed")], restarts=1,
                       env={"ALEXNET_FAULT_INJECT": "2:2:1"})  # fmt: skip
    killed_s = time.perf_counter() - begin
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "resuming" in killed.stderr and "after epoch 1" in killed.stderr
    a, b = _weights(tmp_path / "clean"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: resume at an epoch boundary repeats every draw
    assert [h["epoch"] for h in _history(tmp_path / "killed")] == [1, 2, 3]
    print(f"elastic restart: {killed_s - clean_s:.1f} s lost ({clean_s:.1f} s clean, {killed_s:.1f} s with the kill)")


def test_a_run_resumes_on_another_number_of_processes(data, tmp_path):
    args = [str(data), *EXACT, "--batch-size", "8"]
    first = _torchrun(2, [*args, "--epochs", "1", "--output", str(tmp_path / "run")])
    assert first.returncode == 0, first.stderr[-3000:]
    fit(None, tmp_path / "run", dataclasses.replace(_config(args), epochs=2), resume=True, quiet=True)
    assert [h["epoch"] for h in _history(tmp_path / "run")] == [1, 2]


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(data, tmp_path):
    from alexnet.training.train import _fit

    cfg = dataclasses.replace(RECIPES["small"], batch_size=7, workers=0, device="cpu")
    with pytest.raises(UserError, match=r"--batch-size 7 \(the global batch\) does not split evenly over 2 processes"):
        _fit(Context(rank=0, world=2), data, tmp_path / "r", cfg, resume=False, quiet=True)  # before any collective


# ------------------------------------------------------------------------------------------- model parallel
def test_columns_on_two_devices_compute_what_the_grouped_network_computes():
    torch.manual_seed(0)
    grouped = create_model("alexnet2012", 10, dropout=0.0)
    split = place_columns(to_columns(grouped), [torch.device("cpu"), torch.device("cpu")])
    x = torch.randn(2, 3, 67, 67)
    torch.testing.assert_close(split(x), grouped(x), rtol=1e-4, atol=1e-5)
    split(x).square().sum().backward()
    grouped(x).square().sum().backward()
    torch.testing.assert_close(split.columns[0].convs[0].weight.grad, grouped.features.conv1.weight.grad[:48],
                               rtol=1e-3, atol=1e-5)  # fmt: skip


def test_one_epoch_with_the_columns_split_runs_and_saves_the_grouped_form(data, tmp_path):
    cfg = dataclasses.replace(
        RECIPES["paper2012"], epochs=1, batch_size=8, workers=0, device="cpu", precision="fp32",
        input_size=67, resize_size=72, model_parallel="cpu,cpu", schedule="constant",
    )  # fmt: skip
    fit(data, tmp_path / "run", cfg, quiet=True)
    from alexnet.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["model"] == "alexnet2012" and type(model).__name__ == "AlexNet"


def test_model_parallel_errors_are_clear(data, tmp_path):
    base = dict(epochs=1, batch_size=8, workers=0, device="cpu", precision="fp32", input_size=67, resize_size=72)
    with pytest.raises(UserError, match="cuda:5"):
        fit(data, tmp_path / "a", dataclasses.replace(RECIPES["paper2012"], model_parallel="cpu,cuda:5", **base))
    with pytest.raises(UserError, match="two devices"):
        fit(data, tmp_path / "b", dataclasses.replace(RECIPES["paper2012"], model_parallel="cpu", **base))
    with pytest.raises(UserError, match="unknown device 'meta'"):  # torch knows it; nothing here runs on it
        fit(data, tmp_path / "c", dataclasses.replace(RECIPES["paper2012"], model_parallel="cpu,meta", **base))
    assert not any((tmp_path / name).exists() for name in "abc")  # refused before anything is written
    with pytest.raises(UserError, match="needs --model alexnet2012"):
        dataclasses.replace(RECIPES["small"], model_parallel="cpu,cpu")


# ------------------------------------------------------------------------------------------- LARS
def test_lars_follows_its_formula_with_the_trust_ratio_and_excluded_biases():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    lr, momentum, decay, eta = 0.5, 0.9, 1e-2, 0.02
    opt = LARS(lars_param_groups(layer, decay), lr=lr, momentum=momentum, weight_decay=decay, eta=eta)
    grads = [(torch.randn(3, 5), torch.randn(3)) for _ in range(2)]
    v_w, v_b = torch.zeros(3, 5), torch.zeros(3)
    w, b = w0.clone(), b0.clone()
    for gw, gb in grads:
        layer.weight.grad, layer.bias.grad = gw.clone(), gb.clone()
        opt.step()
        trust = eta * w.norm() / (gw.norm() + decay * w.norm())  # the layer's local rate
        v_w = momentum * v_w + lr * trust * (gw + decay * w)
        w = w - v_w
        v_b = momentum * v_b + lr * gb  # bias: no trust ratio, no decay
        b = b - v_b
    torch.testing.assert_close(layer.weight.detach(), w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(layer.bias.detach(), b, rtol=1e-6, atol=1e-7)


def test_lars_takes_the_plain_step_where_a_weight_or_its_gradient_is_zero():
    lr, decay = 0.5, 0.1
    zero_w = torch.nn.Parameter(torch.zeros(2, 3))  # a zero-initialised layer: ||w|| = 0
    zero_g = torch.nn.Parameter(torch.full((2, 2), 2.0))  # a layer whose gradient is 0 this step
    opt = LARS([{"params": [zero_w, zero_g], "weight_decay": decay, "lars": True}], lr=lr, weight_decay=decay)
    zero_w.grad = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    zero_g.grad = torch.zeros(2, 2)
    opt.step()
    # trust 1: w - lr * (g + decay * w); a trust of eta * 0 / ||g|| would leave the zero weight stuck at 0,
    # and eta * ||w|| / (0 + decay * ||w||) = eta / decay would scale the decay step by 0.01 instead of 1
    torch.testing.assert_close(zero_w.detach(), torch.tensor([[-0.5, 1.0, -1.5], [-0.25, 0.0, 0.5]]))
    torch.testing.assert_close(zero_g.detach(), torch.full((2, 2), 2.0 - 0.5 * 0.1 * 2.0))  # 1.9


def test_lars_groups_put_batchnorm_and_biases_outside_the_adaptation():
    model = create_model("alexnet_bn", 10)
    weights, others = lars_param_groups(model, 5e-4)
    assert all(p.ndim > 1 for p in weights["params"]) and weights["lars"] and weights["weight_decay"] == 5e-4
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert bn <= {id(p) for p in others["params"]} and not others["lars"] and others["weight_decay"] == 0.0


def test_a_lars_run_trains_and_resumes(data, tmp_path):
    cfg = dataclasses.replace(_config([]), optimizer="lars", lr=1.0, nesterov=False, epochs=1, schedule="poly")
    fit(data, tmp_path / "run", cfg, quiet=True)
    fit(None, tmp_path / "run", dataclasses.replace(cfg, epochs=2), resume=True, quiet=True)
    history = _history(tmp_path / "run")
    assert [h["epoch"] for h in history] == [1, 2] and all(h["train_loss"] < 10 for h in history)
    assert history[1]["lr"] < history[0]["lr"]  # the poly decay


def _wrap_in_a_group_of_one(device: str) -> torch.nn.Module:
    import socket

    import torch.distributed as dist

    from alexnet.training.distributed import Context

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:  # a group of one is enough to build the wrapper; the context claims two to take the DDP path
        return Context(rank=0, world=2, device=torch.device(device)).wrap(create_model("alexnet_bn", 3).to(device))
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
def test_data_parallel_batchnorm_is_synchronised_on_gpus():
    kinds = {type(m).__name__ for m in _wrap_in_a_group_of_one("cuda:0").modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds


def test_data_parallel_on_cpus_keeps_batchnorm_per_process():
    wrapped = _wrap_in_a_group_of_one("cpu")
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    assert "SyncBatchNorm" not in {type(m).__name__ for m in wrapped.modules()}
