"""Training runs, checkpoints and exact resume, the recipes, and the evaluation loop's numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from alexnet import ModelCard, create_model
from alexnet.errors import TrainingDiverged, UserError
from alexnet.models.checkpoint import (
    load_checkpoint,
    read_checkpoint,
    read_metadata,
    resolve_checkpoint_path,
    save_checkpoint,
)
from alexnet.runtime.engine import evaluate, topk_correct
from alexnet.training.recipes import RECIPES, TrainConfig, config_to_dict, resolve_config
from alexnet.training.train import fit


def _cfg(**changes) -> TrainConfig:
    """The small recipe, made deterministic and quick: CPU, fp32, no workers, a step schedule."""
    base = dict(epochs=2, batch_size=8, workers=0, device="cpu", precision="fp32", schedule="step", step_size=1)
    return dataclasses.replace(RECIPES["small"], **{**base, **changes})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


# ----------------------------------------------------------------------------------------- recipes
def test_paper_recipe_is_section_5_of_the_paper():
    cfg = RECIPES["paper2012"]
    assert (cfg.model, cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.lr, cfg.epochs) == (
        "alexnet2012",
        128,
        0.9,
        5e-4,
        0.01,
        90,
    )
    assert cfg.schedule == "plateau" and cfg.plateau_factor == 0.1  # lr / 10 when val error stalls
    assert cfg.flip and cfg.pca_std == 0.1  # crops + flips, fancy PCA with sigma 0.1


def test_torchvision_recipe_is_its_reference_script():
    # torchvision/references/classification: lr 0.01 for alexnet, momentum 0.9, wd 1e-4, StepLR(30, 0.1), 90 epochs
    cfg = RECIPES["torchvision"]
    assert (cfg.model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.schedule, cfg.step_size, cfg.step_gamma) == (
        "alexnet",
        0.01,
        0.9,
        1e-4,
        "step",
        30,
        0.1,
    )


def test_config_file_then_flags_override_the_recipe(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.5\nbatch-size: 7\nflip: false\n")
    (tmp_path / "c.toml").write_text("lr = 0.25\nschedule = 'step'\n")
    cfg = resolve_config("small", tmp_path / "c.yaml", {"batch_size": 9})
    assert (cfg.recipe, cfg.model, cfg.lr, cfg.batch_size, cfg.flip) == ("small", "alexnet_small", 0.5, 9, False)
    assert resolve_config("paper2012", tmp_path / "c.toml").schedule == "step"


@pytest.mark.parametrize(
    "content, match",
    [("lr: [1, 2]\n", "lr expects float"), ("bogus: 1\n", "unknown config field"), ("schedule: cosine\n", "one of")],
)
def test_bad_config_files_are_user_errors(tmp_path, content, match):
    (tmp_path / "c.yaml").write_text(content)
    with pytest.raises(UserError, match=match):
        resolve_config("small", tmp_path / "c.yaml")


# ----------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    model = create_model("alexnet_small", 3)
    meta = {**ModelCard(32, 36, model="alexnet_small", classes=("a", "b", "c")).to_json(), "epoch": 4}
    save_checkpoint(tmp_path / "c.safetensors", model, meta)
    loaded, got = load_checkpoint(tmp_path / "c.safetensors")
    assert got["classes"] == ["a", "b", "c"] and got["epoch"] == 4
    assert read_metadata(tmp_path / "c.safetensors") == got  # the header alone gives the same metadata
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(UserError, match="holds a alexnet_small model, not alexnet"):
        load_checkpoint(tmp_path / "c.safetensors", expect_model="alexnet")
    with pytest.raises(UserError, match="3 classes, the data has 5"):
        load_checkpoint(tmp_path / "c.safetensors", expect_num_classes=5)


def test_checkpoint_is_not_a_pickle_and_other_files_are_refused(tmp_path):
    model = create_model("alexnet_small", 3)
    save_checkpoint(
        tmp_path / "c.safetensors", model, ModelCard(32, 36, model="alexnet_small", classes=("a",) * 3).to_json()
    )
    header_len = int.from_bytes((tmp_path / "c.safetensors").read_bytes()[:8], "little")
    assert json.loads((tmp_path / "c.safetensors").read_bytes()[8 : 8 + header_len])  # plain safetensors JSON
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UserError, match="not an alexnet checkpoint"):
        read_checkpoint(tmp_path / "pickle.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="no 'alexnet' metadata"):
        read_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="not found"):
        resolve_checkpoint_path(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------------------- runs
def test_a_run_writes_everything_it_promises(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = fit(tiny_data, run, _cfg(pca_std=0.1), quiet=True)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2]
    for key in ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"):
        assert all(isinstance(h[key], float) for h in lines), key
    assert [h["lr"] for h in lines] == pytest.approx([0.02, 0.002])  # StepLR(1, 0.1) from the small recipe's lr
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    assert yaml.safe_load((run / "config.yaml").read_text()) == config_to_dict(_cfg(pca_std=0.1))
    pca = json.loads((run / "pca.json").read_text())
    assert len(pca["eigval"]) == 3
    _, meta = read_checkpoint(run / "checkpoints" / "best.safetensors")
    assert meta["classes"] == ["blue", "green", "red"] and meta["model"] == "alexnet_small"
    assert (meta["input_size"], meta["resize_size"]) == (32, 36)
    assert meta["best_top1"] == max(h["val_top1"] for h in lines) == result["best_top1"]
    # best = highest validation top-1, a tie going to the lower validation loss
    assert meta["epoch"] == max(lines, key=lambda h: (h["val_top1"], -h["val_loss"]))["epoch"]
    assert "train_state" not in meta  # best holds weights only
    _, last = read_checkpoint(run / "checkpoints" / "last.safetensors")
    assert last["epoch"] == 2 and last["train_state"]["optimizer"]["param_groups"]


@pytest.mark.parametrize("workers", [0, 2])
def test_two_epochs_plus_two_resumed_equal_four_straight(tiny_data, tmp_path, workers):
    # Everything random is on: shuffling, crops, flips, PCA lighting, dropout; and a step lr schedule.
    cfg = _cfg(epochs=4, pca_std=0.1, flip=True, workers=workers)
    fit(tiny_data, tmp_path / "straight", cfg, quiet=True)
    fit(tiny_data, tmp_path / "split", dataclasses.replace(cfg, epochs=2), quiet=True)
    fit(tiny_data, tmp_path / "split", cfg, resume=True, quiet=True)
    a = _weights(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "split" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    split = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    drop = ("images_per_s", "seconds")
    assert [{k: v for k, v in json.loads(s).items() if k not in drop} for s in split] == [
        {k: v for k, v in json.loads(s).items() if k not in drop} for s in straight
    ]


def test_a_different_seed_gives_different_weights(tiny_data, tmp_path):
    fit(tiny_data, tmp_path / "a", _cfg(epochs=1), quiet=True)
    fit(tiny_data, tmp_path / "b", _cfg(epochs=1, seed=1), quiet=True)
    a = _weights(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    last = run / "checkpoints" / "last.safetensors"
    before, history = last.read_bytes(), (run / "metrics.jsonl").read_text()

    import alexnet.runtime.engine as engine

    real = engine.F.cross_entropy
    monkeypatch.setattr(engine.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 in epoch 2.*last good checkpoint"):
        fit(tiny_data, run, _cfg(epochs=2), resume=True, quiet=True)
    assert last.read_bytes() == before
    assert (run / "metrics.jsonl").read_text() == history


def test_an_existing_run_is_not_overwritten_without_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before


def test_resume_refuses_data_with_other_classes(tiny_data, tmp_path):
    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    other = tmp_path / "other"
    for name in ("x", "y"):
        (other / name).mkdir(parents=True)
        for f in sorted((tiny_data / "train" / "red").iterdir())[:2]:
            (other / name / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="trained on classes"):
        fit(other, run, _cfg(epochs=2), resume=True, quiet=True)


# ----------------------------------------------------------------------------------------- evaluation
def test_topk_counts_hits_among_the_k_best():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    assert topk_correct(logits, targets, ks=(1, 2, 5)) == [1, 2, 3]  # k capped at the class count


class _ByMeanColour(torch.nn.Module):
    """A 'model' whose logits are the mean of each input channel: easy to compute by hand."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) * 4.0


def test_ten_crop_is_the_average_softmax_of_the_ten_views_computed_by_hand():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    targets = torch.tensor([0, 2])
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    crop = 8
    result = evaluate(
        _ByMeanColour(), [(images, targets, 0)], crop=crop, mean=mean, std=std, device=torch.device("cpu"),
        num_classes=3, ten_crop=True,
    )  # fmt: skip
    # By hand: the four corners, the centre, and the same five of the mirrored image.
    x = images.float() / 255
    views = []
    for img in (x, x.flip(-1)):
        for top, left in ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2)):
            views.append(img[:, :, top : top + crop, left : left + crop])
    probs = [((v - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).mean(dim=(2, 3)).mul(4).softmax(1) for v in views]
    avg = torch.stack(probs).mean(0)
    expected_top1 = (avg.argmax(1) == targets).float().mean().item()
    expected_loss = torch.nn.functional.nll_loss(avg.log(), targets).item()
    assert result["top1"] == pytest.approx(expected_top1)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    centre = probs[4]
    assert result["center"]["loss"] == pytest.approx(torch.nn.functional.nll_loss(centre.log(), targets).item())
    confusion = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(targets, avg.argmax(1), strict=True):
        confusion[t, p] += 1
    assert result["confusion"] == confusion.tolist()


def test_evaluation_counts_per_class_accuracy_and_errors():
    images = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    images[:, 0] = 255  # channel 0 wins for every image
    targets = torch.tensor([0, 0, 1, 2])
    result = evaluate(
        _ByMeanColour(), [(images, targets, 1)], crop=4, mean=torch.zeros(3), std=torch.ones(3),
        device=torch.device("cpu"), num_classes=3,
    )  # fmt: skip
    assert result["top1"] == 0.5 and result["top1_error"] == 0.5
    assert result["per_class_top1"] == [1.0, 0.0, 0.0] and result["per_class_images"] == [2, 1, 1]
    assert result["skipped"] == 1


@pytest.mark.parametrize("schedule", ["plateau", "onecycle"])
def test_an_interrupted_run_resumes_exactly_with_any_schedule(tiny_data, tmp_path, monkeypatch, schedule):
    # The one-cycle schedule cannot be extended, so the run is interrupted instead: Ctrl-C after the
    # second epoch's checkpoint, then `--resume` with the same config.
    cfg = _cfg(epochs=3, schedule=schedule, plateau_patience=0)
    fit(tiny_data, tmp_path / "straight", cfg, quiet=True)

    import alexnet.training.rundir as rundir

    real, epochs_done = rundir.plot_curves, []

    def interrupt_after_two(history, path):
        real(history, path)
        epochs_done.append(len(history))
        if len(history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "plot_curves", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_data, tmp_path / "split", cfg, quiet=True)
    monkeypatch.setattr(rundir, "plot_curves", real)
    fit(tiny_data, tmp_path / "split", cfg, resume=True, quiet=True)
    assert epochs_done == [1, 2]
    a = _weights(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "split" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [json.loads(s)["lr"] for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [json.loads(s)["lr"] for s in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
def test_a_run_on_cuda_trains_resumes_and_its_checkpoint_loads_on_the_cpu(tiny_data, tmp_path):
    run = tmp_path / "run"
    # precision auto: bf16 autocast on Ampere or newer, fp16 with loss scaling before; pinned memory.
    fit(tiny_data, run, _cfg(epochs=1, device="cuda", precision="auto"), quiet=True)
    fit(tiny_data, run, _cfg(epochs=2, device="cuda", precision="auto"), resume=True, quiet=True)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2]
    assert all(h["train_loss"] == h["train_loss"] for h in lines)  # not NaN
    model, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert next(model.parameters()).device.type == "cpu" and meta["epoch"] == 2
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 32, 32))).all()


# ------------------------------------------------------------------------------ found by trying to break it
def test_resuming_a_one_cycle_run_with_another_batch_size_is_refused_up_front(tiny_data, tmp_path):
    from alexnet.training.train import continue_config

    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=2, schedule="onecycle"), quiet=True)
    with pytest.raises(UserError, match="cannot change its batch-size"):
        continue_config(run, {"batch_size": 2})
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    # The same schedule over other data (another number of batches per epoch) is refused when it loads.
    more = tmp_path / "more"
    from conftest import write_images

    write_images(more / "train", 16, seed=3)
    write_images(more / "val", 3, seed=4)
    with pytest.raises(UserError, match="spans 6 optimiser steps"):
        fit(more, run, _cfg(epochs=2, schedule="onecycle"), resume=True, quiet=True)
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before


@pytest.mark.parametrize("epochs", [2, 3, 4, 5])
def test_one_cycle_runs_of_a_few_steps_train(tiny_data, tmp_path, epochs):
    # one batch an epoch: 2 to 5 optimiser steps in all
    result = fit(tiny_data, tmp_path / "run", _cfg(epochs=epochs, schedule="onecycle", batch_size=64), quiet=True)
    lrs = [h["lr"] for h in result["history"]]
    assert len(lrs) == epochs and max(lrs) <= 0.02 + 1e-12 and all(lr > 0 for lr in lrs)


def test_a_one_cycle_run_of_one_step_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(UserError, match="at least 2 optimiser steps"):
        fit(tiny_data, tmp_path / "run", _cfg(epochs=1, schedule="onecycle", batch_size=64), quiet=True)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epochs", 0, "--epochs must be at least 1"),
        ("label_smoothing", 2.0, "--label-smoothing must be in"),
        ("label_smoothing", -0.5, "--label-smoothing must be in"),
        ("lr", float("nan"), "--lr must be a positive finite number"),
        ("lr", float("inf"), "--lr must be a positive finite number"),
        ("lr", 0.0, "--lr must be a positive finite number"),
        ("weight_decay", -1e-4, "--weight-decay"),
        ("momentum", 1.0, "--momentum"),
        ("batch_size", 0, "--batch-size"),
        ("input_size", 100_000, "--input-size must be 0"),
        ("dropout", 1.0, "--dropout"),
        ("seed", -1, "--seed"),
        ("momentum", 0.0, "--nesterov needs a --momentum above 0"),
    ],
)
def test_out_of_range_fields_are_refused_naming_the_flag(field, value, match):
    with pytest.raises(UserError, match=match):
        resolve_config("small", overrides={field: value})


def test_a_single_class_dataset_is_refused_with_the_reason(tmp_path):
    from conftest import write_images

    write_images(tmp_path / "d", 4)
    for name in ("green", "blue"):
        for f in (tmp_path / "d" / name).iterdir():
            f.unlink()
        (tmp_path / "d" / name).rmdir()
    with pytest.raises(UserError, match="single class folder .red.*at least two classes"):
        fit(tmp_path / "d", tmp_path / "run", _cfg(), quiet=True)


def test_a_restart_removes_temporary_files_a_killed_write_left(tiny_data, tmp_path):
    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    stale = [run / "checkpoints" / ".last.safetensors.x1y2.tmp", run / ".metrics.jsonl.abc.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    fit(tiny_data, run, _cfg(epochs=2), resume=True, quiet=True)
    assert not any(p.exists() for p in stale)


def test_resuming_a_finished_run_says_so_and_trains_nothing(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    capsys.readouterr()
    result = fit(tiny_data, run, _cfg(epochs=1), resume=True, quiet=True)
    assert "already finished its 1 epochs; pass --epochs N" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before and len(result["history"]) == 1


def test_a_corrupt_metrics_file_is_named_on_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    fit(tiny_data, run, _cfg(epochs=1), quiet=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss"')
    with pytest.raises(UserError, match=f"cannot read {run / 'metrics.jsonl'}"):
        fit(tiny_data, run, _cfg(epochs=2), resume=True, quiet=True)


def test_ctrl_c_says_which_checkpoint_was_kept_and_how_to_resume(tiny_data, tmp_path, capsys, monkeypatch):
    import alexnet.training.rundir as rundir

    real = rundir.plot_curves

    def interrupt_in_epoch_two(history, path):
        real(history, path)
        if len(history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "plot_curves", interrupt_in_epoch_two)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_data, run, _cfg(epochs=3), quiet=True)
    err = capsys.readouterr().err
    assert f"{run / 'checkpoints' / 'last.safetensors'} holds epoch 2" in err
    assert f"alexnet train --resume {run}" in err


def test_a_run_says_what_it_is_about_to_do(tiny_data, tmp_path, capsys):
    fit(tiny_data, tmp_path / "run", _cfg(epochs=2), quiet=True)
    first = capsys.readouterr().err.splitlines()[0]
    for part in ("alexnet_small", "3.2M parameters", "2 epochs", "24 images", "3 classes", "cpu", "fp32"):
        assert part in first


def test_the_time_estimate_is_told_once_after_the_first_steps(monkeypatch, capsys):
    import alexnet.training.progress as progress
    from alexnet.runtime.engine import Meter

    reporter = progress.Reporter(quiet=True)
    reporter.epochs_left = 90
    clock = iter(range(0, 1000, 2))  # every reading of the clock is 2 s later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    with reporter.bar(0, 90, "train", 100, estimate=True) as on_step:
        meter = Meter()
        for _ in range(30):
            meter.steps += 1
            meter.images += 128
            on_step(meter, 1.0)
    lines = [s for s in capsys.readouterr().err.splitlines() if s.startswith("about")]
    assert len(lines) == 1 and "per training epoch" in lines[0] and "for the 90 epochs to go" in lines[0]


def test_resolve_run_takes_a_folder_or_a_bundled_dataset_and_refuses_what_a_resumed_run_cannot_change(tmp_path):
    from alexnet.errors import FlagError
    from alexnet.training.train import resolve_run

    source, cfg, run_dir = resolve_run(str(tmp_path), recipe="small", overrides={"epochs": 3}, output=tmp_path / "r")
    assert (source, cfg.recipe, cfg.epochs, run_dir) == (str(tmp_path), "small", 3, tmp_path / "r")
    assert resolve_run(str(tmp_path))[2].parent == Path("runs")  # runs/<model>-<time> by default
    with pytest.raises(FlagError, match="not both"):
        resolve_run(str(tmp_path), dataset="digits")
    with pytest.raises(FlagError, match="give a data folder"):
        resolve_run()
    with pytest.raises(FlagError, match="leave out --output"):
        resolve_run(resume=tmp_path / "a", output=tmp_path / "b")
    with pytest.raises(FlagError, match="keeps its recipe"):
        resolve_run(resume=tmp_path / "a", recipe="small")
