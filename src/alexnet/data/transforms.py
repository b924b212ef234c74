"""The paper's augmentation as whole-batch tensor ops on the training device.

Section 2: every image is down-sampled to 256x256 (shorter side rescaled to 256, central 256x256 patch).
Section 4.1: training sees random 224x224 patches of it (227 in practice) and their horizontal reflections,
plus PCA colour noise ("fancy PCA"); testing averages ten patches (four corners, centre, their mirrors).

Order of operations::

    uint8 RGB -> resize shorter side + centre crop (resize x resize) -> random crop -> random flip
      -> float in [0, 1] -> PCA lighting -> (x - mean) / std

PCA lighting runs on [0, 1] floats before normalisation because the eigen-decomposition is of RGB pixels in
[0, 1] (ImageNet's published values are on that scale). Nothing is clamped: the paper adds the noise as is.

:func:`decode_transform` runs in the DataLoader workers (decode and down-sample only); :func:`batch_augment`
does the random crops, flips, lighting and normalisation on whole uint8 batches on the training device, as
airbench does, so the workers never become the bottleneck.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2

__all__ = ["PCA", "IMAGENET_PCA", "decode_transform", "batch_augment"]


class PCA(NamedTuple):
    """Eigen-decomposition of the 3x3 RGB pixel covariance: ``eigvec[:, i]`` has eigenvalue ``eigval[i]``."""

    eigval: Tensor  # (3,), descending
    eigvec: Tensor  # (3, 3), columns are the eigenvectors, rows are R, G, B


# The values every ImageNet replication uses (fb.resnet.torch, timm, ...), RGB in [0, 1].
IMAGENET_PCA = PCA(
    eigval=torch.tensor([0.2175, 0.0188, 0.0045]),
    eigvec=torch.tensor(
        [
            [-0.5675, 0.7192, 0.4009],
            [-0.5808, -0.0045, -0.8140],
            [-0.5836, -0.6948, 0.4203],
        ]
    ),
)


def _as_pca(eigval: Any, eigvec: Any) -> PCA:
    eigval = torch.as_tensor(eigval, dtype=torch.float32)
    eigvec = torch.as_tensor(eigvec, dtype=torch.float32)
    if eigval.shape != (3,) or eigvec.shape != (3, 3):
        raise ValueError(
            f"PCA lighting needs eigval (3,) and eigvec (3, 3), got {tuple(eigval.shape)}, {tuple(eigvec.shape)}"
        )
    return PCA(eigval, eigvec)


def _downsample(resize: int) -> list[Any]:
    # Section 2: shorter side to `resize`, then the central resize x resize patch. Resizing the uint8 tensor
    # (antialiased) rather than the PIL image keeps every later step on tensors.
    return [v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(resize)]


def decode_transform(resize_size: int) -> v2.Compose:
    """PIL RGB -> uint8 ``(3, resize_size, resize_size)``: the paper's down-sampled image (section 2).

    The worker-side half of the batch pipeline; :func:`batch_augment` (training) or a centre crop plus
    normalisation (evaluation) finish the job on the device.
    """
    return v2.Compose(_downsample(resize_size))


def _channel_vector(values: Any, like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).view(1, 3, 1, 1)


def batch_augment(
    images: Tensor,
    *,
    crop: int,
    flip: bool = True,
    pca: PCA | tuple[Any, Any] | None = None,
    pca_std: float = 0.1,
    mean: Any,
    std: Any,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training augmentation for a whole batch, as tensor ops on the batch's device.

    ``images``: uint8 ``(N, 3, H, W)`` (float input is taken to be in [0, 1]). Each sample gets its own
    random ``crop`` x ``crop`` window and, with ``flip``, a mirror with probability 1/2; then PCA lighting
    with its own ``alpha ~ N(0, pca_std)``; then ``(x - mean) / std``. Returns float32 ``(N, 3, crop, crop)``.

    ``generator`` makes the draws reproducible; it may live on the CPU while the batch is on a GPU.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"batch_augment needs (N, 3, H, W) images, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    device = images.device
    draw_on = generator.device if generator is not None else device

    top = torch.randint(0, h - crop + 1, (n,), generator=generator, device=draw_on).to(device)
    left = torch.randint(0, w - crop + 1, (n,), generator=generator, device=draw_on).to(device)
    mirrored = (torch.rand(n, generator=generator, device=draw_on) < 0.5).to(device) if flip else None
    rgb = None
    if pca is not None and pca_std > 0:
        eigval, eigvec = (t.to(device) for t in _as_pca(*pca))
        alpha = (torch.randn(n, 3, generator=generator, device=draw_on) * pca_std).to(device)
        rgb = (alpha * eigval) @ eigvec.T  # row i: eigvec @ (alpha_i * eigval)
    mean, std = _channel_vector(mean, images), _channel_vector(std, images)
    if device.type == "cpu":
        return _augment_each(images, crop, top, left, mirrored, rgb, mean, std)

    steps = torch.arange(crop, device=device)
    rows = top[:, None] + steps  # (N, crop)
    if mirrored is not None:
        # A mirrored crop reads its columns right to left: the flip costs nothing extra.
        cols = left[:, None] + torch.where(mirrored[:, None], crop - 1 - steps, steps)
    else:
        cols = left[:, None] + steps
    # Two gathers with broadcast (expanded, not materialised) indices: rows, then columns of each sample.
    x = images.gather(2, rows[:, None, :, None].expand(n, c, crop, w))
    x = x.gather(3, cols[:, None, None, :].expand(n, c, crop, crop))

    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    if rgb is not None:
        x.add_(rgb[:, :, None, None])
    return x.sub_(mean).div_(std)


def _augment_each(
    images: Tensor,
    crop: int,
    top: Tensor,
    left: Tensor,
    mirrored: Tensor | None,
    rgb: Tensor | None,
    mean: Tensor,
    std: Tensor,
) -> Tensor:
    """:func:`batch_augment` on the CPU, sample by sample: a crop is a view, and each sample's arithmetic
    runs while it is in cache; the same operations in the same order, so the same values as the gathers
    (which read an int64 index per pixel, twice as slow on a CPU; on a GPU one kernel beats N small ones)."""
    n = images.shape[0]
    out = torch.empty(n, 3, crop, crop, dtype=torch.float32)
    scale = images.dtype == torch.uint8
    flips = mirrored.tolist() if mirrored is not None else [False] * n
    mean, std = mean.view(3, 1, 1), std.view(3, 1, 1)
    for i, (t, left_i, mirror) in enumerate(zip(top.tolist(), left.tolist(), flips, strict=True)):
        view = images[i, :, t : t + crop, left_i : left_i + crop]
        x = out[i]
        x.copy_(view.flip(-1) if mirror else view)
        if scale:
            x.div_(255)
        if rgb is not None:
            x.add_(rgb[i].view(3, 1, 1))
        x.sub_(mean).div_(std)
    return out
