"""The training and evaluation loops against hand computations: the metrics a user reads must be the
metrics of the model, not of the loop's bookkeeping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.runtime.engine import evaluate, train_one_epoch

CPU = torch.device("cpu")


class _FixedLogits(nn.Module):
    """Logits read from the image itself: the first row of channel 0 holds them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :]


def _images_with_logits(logits: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, C, C) images whose first row reproduces ``logits`` once normalised with mean 0 and
    std 1/255 (so the normalised value is the pixel value)."""
    n, c = logits.shape
    images = torch.zeros(n, 3, c, c, dtype=torch.uint8)
    images[:, 0, 0, :] = logits.to(torch.uint8)
    return images


def _pixel_values() -> tuple[torch.Tensor, torch.Tensor]:
    """mean 0, std 1/255: normalisation gives back the pixel values."""
    return torch.zeros(3), torch.full((3,), 1 / 255)


def test_top1_and_top5_equal_a_hand_count_with_a_target_ranked_third_and_sixth():
    logits = torch.tensor(
        [
            [90, 80, 70, 60, 50, 40, 30],  # target 0: rank 1
            [90, 80, 70, 60, 50, 40, 30],  # target 2: rank 3
            [90, 80, 70, 60, 50, 40, 30],  # target 5: rank 6
            [10, 20, 30, 40, 50, 60, 70],  # target 4: rank 3
        ],
        dtype=torch.float32,
    )
    targets = torch.tensor([0, 2, 5, 4])
    images = _images_with_logits(logits)
    mean, std = _pixel_values()
    result = evaluate(
        _FixedLogits(), [(images, targets, 0)], crop=7, mean=mean, std=std, device=CPU, num_classes=7
    )  # fmt: skip
    ranks = [1, 3, 6, 3]  # by hand, from the rows above
    assert result["top1"] == pytest.approx(sum(r == 1 for r in ranks) / 4)  # 0.25
    assert result["top5"] == pytest.approx(sum(r <= 5 for r in ranks) / 4)  # 0.75
    assert result["top5_error"] == pytest.approx(0.25)


def test_evaluation_loss_over_unequal_batches_is_the_mean_over_samples():
    torch.manual_seed(0)
    logits = torch.randint(0, 60, (4, 3)).float()
    targets = torch.tensor([0, 1, 2, 1])
    images = _images_with_logits(logits)
    batches = [(images[:3], targets[:3], 0), (images[3:], targets[3:], 0)]  # 3 samples, then 1
    mean, std = _pixel_values()
    result = evaluate(_FixedLogits(), batches, crop=3, mean=mean, std=std, device=CPU, num_classes=3)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_training_loss_over_unequal_batches_is_the_mean_over_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 1])
    batches = [(images[:3], targets[:3], 0), (images[3:], targets[3:], 0)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, so the loss is known
    x = images.float() / 255
    with torch.no_grad():
        expected = F.cross_entropy(model(x), targets).item()
    result = train_one_epoch(model, batches, optimizer, lambda b: b.float() / 255, device=CPU)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["images"] == 4


class _Dropping(nn.Module):
    """A net with dropout: in train mode two evaluations differ; in eval mode they do not."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_evaluation_runs_the_model_in_eval_mode_whatever_mode_it_was_left_in():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 4, 4), dtype=torch.uint8)
    targets = torch.randint(0, 3, (16,))
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    model = _Dropping()
    kwargs = dict(crop=4, mean=mean, std=std, device=CPU, num_classes=3)
    model.train()
    first = evaluate(model, [(images, targets, 0)], **kwargs)
    model.train()
    second = evaluate(model, [(images, targets, 0)], **kwargs)
    with torch.no_grad():
        x = (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        by_hand = F.nll_loss(model.eval()(x).softmax(1).log(), targets).item()
    assert first["loss"] == second["loss"] == pytest.approx(by_hand, rel=1e-5)


class _LeftMinusRight(nn.Module):
    """Not mirror-invariant: class 0's logit is the left half's mean minus the right half's (x4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        d = (x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3))) * 4
        return torch.stack([d, -d, torch.zeros_like(d)], dim=1)


def test_ten_crop_includes_the_mirrors_for_a_model_that_is_not_mirror_invariant():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    images[:, :, :, :6] //= 4  # darker left halves: the mirror views give the opposite answer
    targets = torch.tensor([0, 1, 2])
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    crop = 8
    result = evaluate(
        _LeftMinusRight(), [(images, targets, 0)], crop=crop, mean=mean, std=std, device=CPU, num_classes=3,
        ten_crop=True,
    )  # fmt: skip
    x = (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    corners = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2))
    views = [img[:, :, t : t + crop, left : left + crop] for img in (x, x.flip(-1)) for t, left in corners]
    probs = torch.stack([_LeftMinusRight()(v).softmax(1) for v in views]).mean(0)
    unmirrored = torch.stack([_LeftMinusRight()(v).softmax(1) for v in views[:5]]).mean(0)
    expected = F.nll_loss(probs.log(), targets).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(F.nll_loss(unmirrored.log(), targets).item() - expected) > 1e-3  # the mirrors matter here


def test_a_batch_whose_every_file_was_unreadable_counts_as_skipped():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batches = [
        (images, torch.tensor([0, 1]), 1),
        (torch.empty(0), torch.empty(0, dtype=torch.long), 4),  # all four files of this batch failed
    ]
    mean, std = torch.zeros(3), torch.ones(3)
    result = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), batches, crop=4, mean=mean, std=std,
                      device=CPU, num_classes=3)  # fmt: skip
    assert result["skipped"] == 5 and result["images"] == 2
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = train_one_epoch(model, batches, optimizer, lambda b: b.float() / 255, device=CPU)
    assert trained["skipped"] == 5
