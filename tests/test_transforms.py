"""The paper's augmentation (section 4.1) checked against its definitions, written out here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from alexnet.data.transforms import IMAGENET_PCA, batch_augment, decode_transform
from alexnet.models.card import ModelCard
from reference_transforms import PCALighting, eval_transform, ten_crop_transform, train_transform

# Unusual numbers so that a pipeline reading ImageNet's constants instead of the config would fail.
CFG = ModelCard(input_size=6, resize_size=8, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
MEAN = torch.tensor(CFG.mean).view(3, 1, 1)
STD = torch.tensor(CFG.std).view(3, 1, 1)


def _normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255 - MEAN) / STD


def _random_uint8(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _candidates(img: torch.Tensor, crop: int, flips: bool = True) -> list[torch.Tensor]:
    """Every crop (and mirrored crop) of a (3, H, W) image."""
    h, w = img.shape[-2:]
    out = []
    for top, left in itertools.product(range(h - crop + 1), range(w - crop + 1)):
        patch = img[:, top : top + crop, left : left + crop]
        out.append(patch)
        if flips:
            out.append(patch.flip(-1))
    return out


def _match(sample: torch.Tensor, candidates: list[torch.Tensor], atol: float = 0.0) -> list[int]:
    return [i for i, c in enumerate(candidates) if torch.allclose(sample, c, atol=atol, rtol=0)]


# --------------------------------------------------------------------------------------------
# PCA lighting
# --------------------------------------------------------------------------------------------
def test_imagenet_pca_is_the_published_decomposition():
    assert IMAGENET_PCA.eigval.tolist() == pytest.approx([0.2175, 0.0188, 0.0045])
    assert IMAGENET_PCA.eigvec[0].tolist() == pytest.approx([-0.5675, 0.7192, 0.4009])
    assert IMAGENET_PCA.eigvec[2].tolist() == pytest.approx([-0.5836, -0.6948, 0.4203])
    # Columns are the eigenvectors: orthonormal, and the largest is the brightness direction (1, 1, 1).
    v = IMAGENET_PCA.eigvec
    torch.testing.assert_close(v.T @ v, torch.eye(3), atol=2e-3, rtol=0)
    assert torch.allclose(v[:, 0].abs(), torch.full((3,), 3**-0.5), atol=0.01)


def test_pca_lighting_matches_its_definition():
    eigval = torch.tensor([0.3, 0.02, 0.005])
    eigvec = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))[0]
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    out = PCALighting(eigval, eigvec, std=0.1)(image)

    torch.manual_seed(123)
    alpha = torch.randn(3) * 0.1
    rgb = sum(alpha[i] * eigval[i] * eigvec[:, i] for i in range(3))  # sum_i alpha_i lambda_i p_i
    torch.testing.assert_close(out, image + rgb.view(3, 1, 1))
    assert not torch.allclose(out, image)


def test_pca_lighting_adds_one_offset_per_image_and_keeps_the_tv_tensor_type():
    image = tv_tensors.Image(torch.rand(3, 4, 4))
    out = PCALighting(*IMAGENET_PCA, std=0.5)(image)
    assert isinstance(out, tv_tensors.Image)
    offset = out - image
    assert torch.allclose(offset, offset[:, :1, :1].expand_as(offset), atol=1e-6)


def test_pca_lighting_refuses_integer_and_pil_images():
    t = PCALighting(*IMAGENET_PCA)
    with pytest.raises(TypeError, match="float"):
        t(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="ToDtype"):
        t(Image.new("RGB", (4, 4)))


# --------------------------------------------------------------------------------------------
# Per-image pipelines
# --------------------------------------------------------------------------------------------
def test_decode_transform_resizes_the_shorter_side_and_takes_the_central_square():
    img = Image.fromarray(np.arange(20 * 40 * 3, dtype=np.uint8).reshape(20, 40, 3) % 251)
    out = decode_transform(10)(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 10, 10)
    wide = decode_transform(10)(Image.new("RGB", (40, 20)))
    assert wide.shape == (3, 10, 10)


def test_eval_transform_is_the_centre_crop_of_the_downsampled_image_normalised_with_the_config():
    img = _random_uint8(3, 8, 8)
    out = eval_transform(CFG)(img)
    torch.testing.assert_close(out, _normalize(img[:, 1:7, 1:7]))


def test_train_transform_outputs_a_normalised_crop_or_mirrored_crop():
    img = _random_uint8(3, 8, 8)
    candidates = [_normalize(c) for c in _candidates(img, 6)]
    t = train_transform(CFG)
    seen = set()
    torch.manual_seed(0)
    for _ in range(60):
        matches = _match(t(img), candidates, atol=1e-6)
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # the crop and the flip are random


def test_train_transform_without_flip_never_mirrors():
    img = _random_uint8(3, 8, 8)
    mirrored = [_normalize(c) for c in _candidates(img, 6)][1::2]
    t = train_transform(CFG, flip=False)
    torch.manual_seed(0)
    assert all(not _match(t(img), mirrored, atol=1e-6) for _ in range(30))


def test_train_transform_upscales_tiny_images():
    digit = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), mode="L").convert("RGB")
    out = train_transform(CFG, resize_size=36, input_size=32, pca=IMAGENET_PCA)(digit)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="larger"):
        train_transform(CFG, input_size=9)
    with pytest.raises(ValueError, match="larger"):
        batch_augment(_random_uint8(2, 3, 4, 4), crop=5, mean=CFG.mean, std=CFG.std)


def test_ten_crop_is_four_corners_centre_and_their_mirrors_in_torchvision_order():
    img = _random_uint8(3, 8, 8)
    out = ten_crop_transform(CFG, input_size=4)(img)
    assert out.shape == (10, 3, 4, 4)
    x = _normalize(img)
    m = x.flip(-1)  # the mirrored image; its corners are the mirrors of the opposite corners
    expected = [
        x[:, :4, :4], x[:, :4, 4:], x[:, 4:, :4], x[:, 4:, 4:], x[:, 2:6, 2:6],
        m[:, :4, :4], m[:, :4, 4:], m[:, 4:, :4], m[:, 4:, 4:], m[:, 2:6, 2:6],
    ]  # fmt: skip
    torch.testing.assert_close(out, torch.stack(expected))
    torch.testing.assert_close(out[5], x[:, :4, 4:].flip(-1))


# --------------------------------------------------------------------------------------------
# Whole-batch augmentation
# --------------------------------------------------------------------------------------------
def test_batch_augment_without_randomness_is_exactly_the_normalisation():
    images = _random_uint8(4, 3, 8, 8)
    out = batch_augment(images, crop=8, flip=False, pca=None, mean=CFG.mean, std=CFG.std)
    expected = (images.float() / 255 - MEAN) / STD
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_batch_augment_gives_each_sample_its_own_crop_or_mirrored_crop():
    images = _random_uint8(64, 3, 7, 9)
    out = batch_augment(images, crop=5, mean=CFG.mean, std=CFG.std, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 5, 5)
    chosen = []
    for img, sample in zip(images, out, strict=True):
        matches = _match(sample, [_normalize(c) for c in _candidates(img, 5)], atol=1e-6)
        assert len(matches) == 1
        chosen.append(matches[0])
    mirrored = sum(c % 2 for c in chosen)
    assert 16 < mirrored < 48  # about half
    assert len(set(c // 2 for c in chosen)) > 8  # offsets vary between samples


def test_batch_augment_covers_every_offset_and_flips_half_the_time():
    # A ramp image: the value at the crop's top-left corner gives the offset; the mirror shows in the row.
    ramp = torch.arange(6 * 6, dtype=torch.uint8).view(1, 1, 6, 6).expand(4000, 3, 6, 6)
    out = batch_augment(ramp, crop=4, mean=(0, 0, 0), std=(1 / 255,) * 3, generator=torch.Generator().manual_seed(1))
    first, last = out[:, 0, 0, 0], out[:, 0, 0, 3]
    mirrored = first > last
    corner = torch.where(mirrored, last, first).round().long()
    counts = torch.bincount(corner, minlength=36).view(6, 6)[:3, :3]  # offsets 0..2 in each direction
    assert counts.sum() == 4000 and counts.min() > 4000 / 9 * 0.8
    assert abs(mirrored.float().mean().item() - 0.5) < 0.04


def test_batch_augment_without_flip_never_mirrors():
    ramp = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6).expand(500, 3, 6, 6)
    out = batch_augment(ramp, crop=4, flip=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert (out[:, 0, 0, 0] < out[:, 0, 0, 3]).all()


def test_batch_augment_lighting_is_eigvec_times_alpha_eigval_with_alpha_of_the_given_std():
    eigval, eigvec = IMAGENET_PCA
    images = _random_uint8(3000, 3, 2, 2)
    out = batch_augment(
        images, crop=2, flip=False, pca=IMAGENET_PCA, pca_std=0.1, mean=CFG.mean, std=CFG.std,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    offset = out * STD + MEAN - images.float() / 255  # (N, 3, 2, 2): the lighting alone
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-5)  # one colour per image
    rgb = offset[:, :, 0, 0]
    alpha = torch.linalg.solve(eigvec, rgb.T).T / eigval  # invert rgb = eigvec @ (alpha * eigval)
    torch.testing.assert_close(rgb, (alpha * eigval) @ eigvec.T, atol=1e-5, rtol=0)
    assert alpha.mean(0).abs().max() < 0.01
    assert alpha.std(0).tolist() == pytest.approx([0.1] * 3, abs=0.006)
    assert alpha.T.corrcoef().sub(torch.eye(3)).abs().max() < 0.06  # independent draws


def test_batch_and_per_image_lighting_have_the_same_colour_covariance():
    flat = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    n = 2000
    batch = batch_augment(
        flat.expand(n, 3, 4, 4), crop=4, pca=IMAGENET_PCA, pca_std=0.1, mean=CFG.mean, std=CFG.std,
        generator=torch.Generator().manual_seed(0),
    )[:, :, 0, 0]  # fmt: skip
    t = train_transform(CFG, resize_size=4, input_size=4, pca=IMAGENET_PCA, pca_std=0.1)
    torch.manual_seed(0)
    single = torch.stack([t(flat)[:, 0, 0] for _ in range(n)])
    expected = IMAGENET_PCA.eigvec @ torch.diag((0.1 * IMAGENET_PCA.eigval) ** 2) @ IMAGENET_PCA.eigvec.T
    for sample in (batch, single):
        cov = (sample * STD.view(1, 3)).T.cov()
        torch.testing.assert_close(cov, expected, atol=4e-5, rtol=0.1)


def test_batch_augment_is_reproducible_with_a_generator():
    images = _random_uint8(16, 3, 10, 10)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return batch_augment(images, crop=7, pca=IMAGENET_PCA, mean=CFG.mean, std=CFG.std, generator=g)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


@pytest.mark.cuda
def test_batch_augment_on_cuda_matches_the_cpu_with_the_same_cpu_generator():
    images = _random_uint8(32, 3, 12, 12)
    kw = dict(crop=9, pca=IMAGENET_PCA, mean=CFG.mean, std=CFG.std)
    cpu = batch_augment(images, generator=torch.Generator().manual_seed(0), **kw)
    gpu = batch_augment(images.cuda(), generator=torch.Generator().manual_seed(0), **kw)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
