"""Per-image torchvision v2 pipelines of the paper's augmentation: the independent reference that the
batch ops (alexnet.data.transforms.batch_augment, the evaluation's crops) are checked against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from alexnet.data.transforms import PCA, _as_pca, _downsample
from alexnet.models.card import ModelCard


def _is_plain_tensor(x: Any) -> bool:
    return type(x) is Tensor


class PCALighting(v2.Transform):
    """Fancy PCA (section 4.1): add ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, std)``.

    ``alpha`` (3 values from ``torch.randn(3) * std``, the global torch RNG like every v2 transform) is drawn
    once per call and shared by all pixels of the image. Input: float images in [0, 1], ``(..., 3, H, W)``,
    so place it after ``ToDtype(torch.float32, scale=True)`` and before ``Normalize``.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Video, _is_plain_tensor)

    def __init__(self, eigval: Any, eigvec: Any, std: float = 0.1) -> None:
        super().__init__()
        self.eigval, self.eigvec = _as_pca(eigval, eigvec)
        self.std = float(std)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        if any(isinstance(x, PIL.Image.Image) for x in flat_inputs):
            raise TypeError(
                "PCALighting needs float tensors in [0, 1]: put it after v2.ToDtype(torch.float32, scale=True)"
            )

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"alpha": torch.randn(3) * self.std}

    def transform(self, inpt: Tensor, params: dict[str, Any]) -> Tensor:
        if not inpt.is_floating_point():
            raise TypeError(f"PCALighting needs float images in [0, 1], got {inpt.dtype}")
        eigval = self.eigval.to(inpt.device, inpt.dtype)
        eigvec = self.eigvec.to(inpt.device, inpt.dtype)
        rgb = eigvec @ (params["alpha"].to(inpt.device, inpt.dtype) * eigval)
        out = inpt.as_subclass(Tensor) + rgb.view(3, 1, 1)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class _StackCrops:
    """TenCrop returns a tuple of crops; the model wants one (10, 3, H, W) tensor. (A class, not a lambda,
    so DataLoader workers started with ``spawn`` can pickle it.)"""

    def __call__(self, crops: Sequence[Tensor]) -> Tensor:
        return torch.stack([c.as_subclass(Tensor) for c in crops])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _sizes(data_cfg: ModelCard, resize_size: int | None, input_size: int | None) -> tuple[int, int]:
    resize = resize_size or data_cfg.resize_size
    crop = input_size or data_cfg.input_size
    if crop > resize:
        raise ValueError(f"input size {crop} is larger than resize size {resize}")
    return resize, crop


def _to_normalized(data_cfg: ModelCard) -> list[Any]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data_cfg.mean), list(data_cfg.std))]


def train_transform(
    data_cfg: ModelCard,
    *,
    resize_size: int | None = None,
    input_size: int | None = None,
    pca: PCA | tuple[Any, Any] | None = None,
    pca_std: float = 0.1,
    flip: bool = True,
) -> v2.Compose:
    """Per-image training augmentation: down-sample, random crop, random mirror, PCA lighting, normalise.

    Sizes default to ``data_cfg``'s (the model's data contract); ``pca=None`` or ``pca_std=0`` turns the
    lighting off. Returns float ``(3, input_size, input_size)``.
    """
    resize, crop = _sizes(data_cfg, resize_size, input_size)
    steps: list[Any] = [*_downsample(resize), v2.RandomCrop(crop)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if pca is not None and pca_std > 0:
        steps.append(PCALighting(*pca, std=pca_std))
    steps.append(v2.Normalize(list(data_cfg.mean), list(data_cfg.std)))
    return v2.Compose(steps)


def eval_transform(data_cfg: ModelCard, *, resize_size: int | None = None, input_size: int | None = None) -> v2.Compose:
    """Down-sample, centre ``input_size`` crop, normalise: float ``(3, input_size, input_size)``."""
    resize, crop = _sizes(data_cfg, resize_size, input_size)
    return v2.Compose([*_downsample(resize), v2.CenterCrop(crop), *_to_normalized(data_cfg)])


def ten_crop_transform(
    data_cfg: ModelCard, *, resize_size: int | None = None, input_size: int | None = None
) -> v2.Compose:
    """The paper's test-time views (section 4.1): float ``(10, 3, input_size, input_size)``.

    Order as torchvision's ``TenCrop``: top-left, top-right, bottom-left, bottom-right, centre, then the
    same five of the horizontally mirrored image.
    """
    resize, crop = _sizes(data_cfg, resize_size, input_size)
    # Normalise once before cropping: it is per pixel, so the order does not change the result.
    return v2.Compose([*_downsample(resize), *_to_normalized(data_cfg), v2.TenCrop(crop), _StackCrops()])
