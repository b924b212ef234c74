"""The departures from the 2012 recipe that keep a fresh network from blowing up, the plateau rule, the
chance warning: each is a config field, and with all of them off the run is the paper's."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch
from torch import nn

from alexnet.models.registry import get_spec
from alexnet.runtime.engine import recompute_bn_stats, train_one_epoch
from alexnet.training.health import above_chance, chance_warning
from alexnet.training.progress import RunWarning
from alexnet.training.recipes import RECIPES, TrainConfig
from alexnet.training.schedule import EpochScore, make_schedule
from alexnet.training.train import fit

DEPARTURES = ("init", "warmup_epochs", "clip_grad_norm", "plateau_min_epochs", "plateau_after_learning")


def test_the_dataclass_defaults_are_the_2012_setting_and_the_exact_recipe_keeps_them():
    plain = TrainConfig()
    assert (plain.warmup_epochs, plain.clip_grad_norm, plain.plateau_min_epochs) == (0.0, 0.0, 0)
    assert not plain.plateau_after_learning and plain.init == ""  # the model's own: alexnet2012's is "paper"
    assert RECIPES["paper2012_exact"] == dataclasses.replace(plain, recipe="paper2012_exact")


def test_paper2012_differs_from_the_exact_setting_only_in_the_named_departures():
    paper, exact = RECIPES["paper2012"], RECIPES["paper2012_exact"]
    changed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(paper, f.name) != getattr(exact, f.name)}
    assert changed <= {"recipe", *DEPARTURES}
    assert (paper.model, paper.init, paper.lr, paper.momentum, paper.weight_decay, paper.batch_size) == (
        "alexnet2012",
        "kaiming",
        0.01,
        0.9,
        5e-4,
        128,
    )


def test_paper2012s_departures_are_the_ones_the_readme_names_field_by_field():
    paper, exact = RECIPES["paper2012"], RECIPES["paper2012_exact"]
    # the departures table: init paper -> kaiming, clip_grad_norm 0 -> 5, plateau_min_epochs 0 -> 4,
    # plateau_after_learning off -> on; warm-up off in both
    assert (paper.init, paper.clip_grad_norm, paper.plateau_min_epochs, paper.plateau_after_learning) == (
        "kaiming",
        5.0,
        4,
        True,
    )
    assert (exact.clip_grad_norm, exact.plateau_min_epochs, exact.plateau_after_learning) == (0.0, 0, False)
    assert exact.init in ("", "paper") and paper.warmup_epochs == exact.warmup_epochs == 0.0
    # what both keep: the paper's schedule, 90 epochs, shorter side 256, random 227 crops, flips, PCA sigma 0.1
    for cfg in (paper, exact):
        assert (cfg.schedule, cfg.plateau_factor, cfg.epochs, cfg.optimizer, cfg.nesterov) == (
            "plateau",
            0.1,
            90,
            "sgd",
            False,
        )
        assert (cfg.model, cfg.resize_size, cfg.input_size, cfg.flip, cfg.pca_std) == ("alexnet2012", 0, 0, True, 0.1)
    card = get_spec("alexnet2012").card  # the sizes 0 stands for
    assert (card.resize_size, card.input_size) == (256, 227)


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=lr)


def _lrs_of_steps(schedule, opt, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])  # the lr the optimizer step uses
        opt.step()
        schedule.step_update()
    return seen


def test_linear_warmup_ramps_the_lr_over_its_steps_then_leaves_it_alone():
    opt = _optimizer()
    cfg = dataclasses.replace(TrainConfig(), lr=0.1, warmup_epochs=0.4, schedule="constant")
    schedule = make_schedule(cfg, opt, steps_per_epoch=10, num_classes=3)  # 4 warm-up steps
    assert _lrs_of_steps(schedule, opt, 6) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    opt.param_groups[0]["lr"] = 0.01  # an epoch schedule after the warm-up is not undone
    schedule.step_update()
    assert opt.param_groups[0]["lr"] == 0.01


def test_a_fractional_warmup_rounds_its_steps_up():
    opt = _optimizer(0.3)
    cfg = dataclasses.replace(TrainConfig(), lr=0.3, warmup_epochs=0.25, schedule="constant")
    schedule = make_schedule(cfg, opt, steps_per_epoch=10, num_classes=3)  # 2.5 steps -> 3: lr/3, 2lr/3, lr
    assert _lrs_of_steps(schedule, opt, 5) == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_a_resumed_run_continues_the_warmup_ramp_where_it_was():
    cfg = dataclasses.replace(TrainConfig(), lr=0.1, warmup_epochs=1.5, schedule="step", step_size=30)
    opt = _optimizer()
    schedule = make_schedule(cfg, opt, steps_per_epoch=10, num_classes=3)  # 15 warm-up steps
    first = _lrs_of_steps(schedule, opt, 10)
    state, opt_state = schedule.state_dict(), opt.state_dict()
    straight = _lrs_of_steps(schedule, opt, 10)
    opt2 = _optimizer()
    again = make_schedule(cfg, opt2, steps_per_epoch=10, num_classes=3)
    opt2.load_state_dict(opt_state)
    again.load_state_dict(state)
    assert _lrs_of_steps(again, opt2, 10) == pytest.approx(straight)
    assert first[0] == pytest.approx(0.1 / 15) and straight[4:] == pytest.approx([0.1] * 6)


def test_gradient_clipping_bounds_the_step_and_is_reported():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = [(torch.randn(8, 4) * 100, torch.randint(0, 3, (8,)), 0)]
    out = train_one_epoch(model, loader, opt, lambda x: x, device=torch.device("cpu"), clip_grad_norm=0.5)
    assert out["grad_norm_max"] > 0.5 and out["clipped"] == 1.0
    assert (model.weight.detach() - before).norm() <= 0.5 + 1e-5  # lr 1: the step is the clipped gradient
    plain = train_one_epoch(model, loader, opt, lambda x: x, device=torch.device("cpu"))
    assert "clipped" not in plain


def test_above_chance_is_three_standard_errors_of_a_guess():
    assert not above_chance(0.125, 12, 360) and above_chance(0.13, 12, 360)  # 1/12 + 3 * 1.46% = 12.7%
    assert above_chance(0.0015, 1000, 50_000) and not above_chance(0.0014, 1000, 50_000)  # 0.1% + 0.042%


def _line(train_loss: float, val_loss: float, val_top1: float) -> dict:
    return {"train_loss": train_loss, "train_top1": 0.1, "val_loss": val_loss, "val_top1": val_top1}


def test_chance_warning_names_a_blow_up_and_two_epochs_at_chance():
    k, chance = 12, math.log(12)
    at_chance = _line(2.49, 2.48, 0.083)  # measured: the paper's init on photos, every epoch after the first
    assert "blew up" in chance_warning([_line(11.1, 2.53, 0.083)], k, 360)  # its first epoch
    assert chance_warning([at_chance], k, 360) is None  # one epoch at chance is normal at the start
    assert "at chance for two epochs" in chance_warning([at_chance, at_chance], k, 360)
    # the cause named: a blow-up earlier in the run, or steps too few/small to have moved anything yet
    blown = [_line(11.1, 2.53, 0.083), at_chance, at_chance]
    assert "killed by the blow-up" in chance_warning(blown, k, 360)
    assert "smaller --batch-size" in chance_warning([at_chance, at_chance], k, 360)
    learning = _line(2.47, 2.43, 0.169)  # Caffe's init, epoch 2: top-1 clearly above chance
    assert chance_warning([at_chance, learning], k, 360) is None
    # measured: Caffe's init with clipping at 10, epochs 1-2: still at chance, but the loss falls (by 2%)
    starting = [_line(2.489, 2.476, 0.122), _line(2.477, 2.428, 0.111)]
    assert chance_warning(starting, k, 360) is None
    assert "at chance" in chance_warning([starting[0], _line(2.477, 2.476 - 0.009 * chance, 0.111)], k, 360)
    assert chance_warning([_line(chance, chance, 0.3)] * 2, k, 360) is None
    no_val = {"train_loss": 2.48, "train_top1": 0.085, "val_loss": None, "val_top1": None}
    assert "train loss" in chance_warning([no_val, no_val], k, 1200)


def test_the_blow_up_warning_starts_at_one_and_a_half_times_chance():
    k, chance = 12, math.log(12)  # 2.4849
    assert "blew up" in chance_warning([_line(1.6 * chance, 2.0, 0.5)], k, 360)  # 3.976 > 1.5 x 2.4849 = 3.727
    assert chance_warning([_line(1.4 * chance, 2.0, 0.5)], k, 360) is None  # 3.479 < 3.727


def test_one_epoch_at_chance_after_a_learning_epoch_is_no_warning():
    k = 12
    learning = _line(2.47, 2.43, 0.169)  # 16.9% > 1/12 + 3 x 1.46% = 12.7%: clearly above chance
    at_chance = _line(2.49, 2.48, 0.083)  # |2.48 - ln 12| = 0.005 < 3% of 2.4849, top-1 at 1/12
    # the loss rose (2.43 -> 2.48): no longer falling, but only the last epoch sits at chance
    assert chance_warning([learning, at_chance], k, 360) is None
    assert "at chance for two epochs" in chance_warning([learning, at_chance, at_chance], k, 360)


def _plateau_cuts(cfg: TrainConfig, scores: list[EpochScore]) -> list[int]:
    opt = _optimizer(0.1)
    schedule = make_schedule(cfg, opt, steps_per_epoch=10, num_classes=12)
    cuts, lr = [], 0.1
    for epoch, score in enumerate(scores, start=1):
        schedule.step(epoch, score)
        if opt.param_groups[0]["lr"] < lr:
            cuts.append(epoch)
            lr = opt.param_groups[0]["lr"]
    return cuts


def test_plateau_rule_waits_for_min_epochs_and_for_learning():
    at_chance = EpochScore(error=1 - 0.083, top1=0.083, images=360)
    flat = EpochScore(error=0.5, top1=0.5, images=360)
    paper = dataclasses.replace(TrainConfig(), plateau_patience=2)
    assert _plateau_cuts(paper, [at_chance] * 10) == [4, 7, 10]  # the 2012 rule cuts a network at chance
    gated = dataclasses.replace(paper, plateau_min_epochs=4, plateau_after_learning=True)
    assert _plateau_cuts(gated, [at_chance] * 10) == []  # never learned: no plateau
    assert _plateau_cuts(gated, [flat] * 10) == [8]  # watched from epoch 5 on: best at 5, patience 2
    assert _plateau_cuts(dataclasses.replace(paper, plateau_min_epochs=4), [flat] * 10) == [8]
    assert _plateau_cuts(dataclasses.replace(paper, plateau_after_learning=True), [at_chance] * 3 + [flat] * 5) == [7]


def test_once_the_network_has_left_chance_the_plateau_rule_keeps_watching_when_it_falls_back():
    at_chance = EpochScore(error=1 - 0.083, top1=0.083, images=360)
    learned = EpochScore(error=0.5, top1=0.5, images=360)
    cfg = dataclasses.replace(TrainConfig(), plateau_patience=1, plateau_after_learning=True)
    # epoch 1 is not watched (never learned); epoch 2 sets the best error 0.5; epochs 3, 4 are worse: the second
    # bad epoch exceeds patience 1 -> cut at 4 (the count restarts); epochs 5, 6 worse again -> cut at 6
    assert _plateau_cuts(cfg, [at_chance, learned, at_chance, at_chance, at_chance, at_chance]) == [4, 6]


def test_a_run_at_chance_warns_and_keeps_its_lr(tiny_data, tmp_path):
    cfg = dataclasses.replace(
        RECIPES["small"], epochs=3, batch_size=8, workers=0, device="cpu", precision="fp32", lr=1e-9,
        schedule="plateau", plateau_patience=0, plateau_after_learning=True,
    )  # fmt: skip
    with pytest.warns(RunWarning, match="at chance"):
        fit(tiny_data, tmp_path / "run", cfg, quiet=True)  # three epochs at chance
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["lr"] for h in lines] == [1e-9, 1e-9, 1e-9]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six classes of the bundled real photographs (600 training, 180 validation patches)."""
    from alexnet.data.datasets import prepare_photos

    root = prepare_photos(tmp_path_factory.mktemp("cache"))
    subset = tmp_path_factory.mktemp("photos6")
    for split in ("train", "val"):
        for name in sorted(p.name for p in (root / split).iterdir())[:6]:
            (subset / split).mkdir(exist_ok=True)
            (subset / split / name).symlink_to(root / split / name)
    return subset


def _small_paper_run(photos, tmp_path, recipe: str, epochs: int) -> list[dict]:
    # The paper's network at its minimum input on real photographs, a tenth of the cost per image; batch 32
    # gives the few hundred images enough steps per epoch.
    cfg = dataclasses.replace(
        RECIPES[recipe], epochs=epochs, batch_size=32, input_size=67, resize_size=72, workers=0, device="cpu",
        precision="auto",
    )  # fmt: skip
    fit(photos, tmp_path / recipe, cfg, quiet=True)
    return [json.loads(s) for s in (tmp_path / recipe / "metrics.jsonl").read_text().splitlines()]


def test_the_paper_recipe_leaves_chance_where_the_exact_2012_setting_stays(photos, tmp_path):
    with pytest.warns(RunWarning, match="blew up"):
        exact = _small_paper_run(photos, tmp_path, "paper2012_exact", epochs=1)
    assert exact[0]["train_loss"] > 1.5 * math.log(6)  # the blow-up of the first steps
    assert not any(above_chance(h["val_top1"], 6, 180) for h in exact)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)  # neither a blow-up nor a stall
        paper = _small_paper_run(photos, tmp_path, "paper2012", epochs=2)
    assert paper[0]["train_loss"] < 1.5 * math.log(6)
    assert any(above_chance(h["val_top1"], 6, 180) for h in paper), [h["val_top1"] for h in paper]


# --------------------------------------------------------------------------------------------
# BatchNorm statistics of the current weights
# --------------------------------------------------------------------------------------------
def test_recomputed_bn_statistics_are_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01)
    model = nn.Sequential(conv, bn, nn.ReLU())
    bn.running_mean.fill_(100.0)  # stale averages from long ago
    loader = [(torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8), torch.zeros(5, dtype=torch.long), 0)
              for _ in range(3)]  # fmt: skip
    used = recompute_bn_stats(model, loader, lambda x: x.float() / 255, batches=2, device=torch.device("cpu"))
    assert used == 2
    with torch.no_grad():
        outs = [conv(images.float() / 255) for images, _, _ in loader[:2]]  # the third batch is not used
    mean = torch.stack([y.mean((0, 2, 3)) for y in outs]).mean(0)
    var = torch.stack([y.var((0, 2, 3), unbiased=True) for y in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.01 and model.training  # its settings and mode are given back
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert recompute_bn_stats(plain, loader, lambda x: x.float(), batches=2, device=torch.device("cpu")) == 0


def test_the_alexnet_bn_recipe_validates_on_statistics_of_the_current_weights(tiny_data, tmp_path):
    from alexnet.models.checkpoint import load_checkpoint
    from alexnet.runtime.quantize import sample_images

    cfg = dataclasses.replace(
        RECIPES["alexnet_bn"], epochs=1, batch_size=8, input_size=57, resize_size=60, workers=0, device="cpu",
        precision="fp32", pca_std=0.0,
    )  # fmt: skip
    assert cfg.bn_recompute_batches > 0
    card = fit(tiny_data, tmp_path / "run", cfg, quiet=True)["card"]
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors", map_location="cpu")
    layers = list(model.modules())
    bn = next(m for m in layers if isinstance(m, nn.BatchNorm2d))
    conv, relu = layers[layers.index(bn) - 2 : layers.index(bn)]
    assert isinstance(conv, nn.Conv2d) and isinstance(relu, nn.ReLU)  # the blog's order: BatchNorm after the ReLU
    # relu(conv1)'s mean output on the training images by hand (centre crops: the training crops of these uniform
    # colour images have about the same mean). Keras' momentum would have moved the running mean 3% of the way
    # there in 3 steps.
    images, _, _, _ = sample_images(tiny_data / "train", card, 100)
    with torch.no_grad():
        by_hand = torch.relu(conv(images)).mean((0, 2, 3))
    assert 0.8 < float(bn.running_mean.norm() / by_hand.norm()) < 1.25
