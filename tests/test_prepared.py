"""The prepared format: validation on opening, sharding across workers and ranks, reading at another size,
decoding on the device, PCA, and training and evaluation on a prepared dataset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms.v2 import functional as TF

from alexnet.cli import main
from alexnet.data import prepared
from alexnet.data.loaders import collate, compute_pca, make_datasets
from alexnet.data.prepare import PrepareOptions, prepare_dataset
from alexnet.data.prepared import DeviceDecodeLoader, EncodedItems, PreparedDataset, PreparedWarning, collate_encoded
from alexnet.errors import UserError
from alexnet.models.checkpoint import read_checkpoint
from alexnet.models.registry import create_model, get_spec
from alexnet.runtime.inference import Classifier, evaluate_folder, load_classifier
from alexnet.training.distributed import Context, ShardSampler
from alexnet.training.recipes import resolve_config
from alexnet.training.train import fit, load_data
from conftest import write_images


def _numbered(root: Path, n: int, classes: int = 3) -> Path:
    """``n`` images of varied shapes; image ``i`` has a flat red ``i % 256`` and green ``i // 256``, so a
    loaded image tells which source it came from (a flat channel stays flat when resized), and a blue
    channel that differs along rows and columns, so a transposed image does not pass for the right one."""
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (9, 14) if i % 2 else (17, 11)
        pixels = np.zeros((h, w, 3), dtype=np.uint8)
        pixels[..., 0], pixels[..., 1] = i % 256, i // 256
        y, x = np.mgrid[0:h, 0:w]
        pixels[..., 2] = 16 * x + 3 * y
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def _ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist()


@pytest.fixture
def numbered(tmp_path: Path) -> Path:
    """36 images in 3 classes, prepared raw at 8 px in shards of 5 (the last one short)."""
    dst = tmp_path / "numbered"
    prepare_dataset(_numbered(tmp_path / "src", 36), dst, PrepareOptions(size=8, shard_images=5), workers=0, quiet=True)
    return dst


# --------------------------------------------------------------------------------------------
# Opening checks the dataset
# --------------------------------------------------------------------------------------------
def test_a_truncated_or_missing_shard_is_a_clear_error_naming_it(numbered):
    shard = numbered / prepared.ALL / "00003.shard"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(UserError, match=rf"truncated shard {shard}: {len(data) - 100} bytes, the manifest says"):
        PreparedDataset(numbered, prepared.ALL)
    shard.unlink()
    with pytest.raises(UserError, match=rf"missing shard {shard}"):
        PreparedDataset(numbered, prepared.ALL)
    run = numbered.parent / "run"
    assert main(["train", str(numbered), "--recipe", "small", "--epochs", "1", "--output", str(run), "-q"]) == 1


def test_a_split_folder_given_for_the_dataset_names_the_folder_to_pass(numbered, tmp_path):
    cfg = resolve_config("small", None, {"workers": 0, "device": "cpu"})
    with pytest.raises(UserError, match=rf"is a split of the prepared dataset {numbered}: pass {numbered}"):
        load_data(numbered / prepared.ALL, tmp_path, cfg, Context())
    card = get_spec("alexnet_small").card.trained("alexnet_small", ["c0", "c1", "c2"])
    clf = Classifier.from_module(create_model("alexnet_small", 3), card, "untrained", torch.device("cpu"))
    with pytest.raises(UserError, match="is a split of the prepared dataset"):
        evaluate_folder(clf, numbered / prepared.ALL)


def test_a_shard_with_a_wrong_header_or_a_lying_index_is_refused(numbered):
    shard = numbered / prepared.ALL / "00000.shard"
    data = bytearray(shard.read_bytes())
    shard.write_bytes(b"NOTSHARD" + data[8:])
    with pytest.raises(UserError, match=rf"{shard} is not a shard"):
        PreparedDataset(numbered, prepared.ALL)
    index_start = prepared.HEADER_BYTES
    lying = bytearray(data)
    lying[index_start : index_start + 8] = (10**9).to_bytes(8, "little")  # image 0 starts past the end
    shard.write_bytes(bytes(lying))
    with pytest.raises(UserError, match=rf"shard {shard} is damaged"):
        PreparedDataset(numbered, prepared.ALL)


def test_an_unknown_version_or_a_foreign_manifest_is_refused(numbered):
    path = numbered / prepared.MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(UserError, match="format version 99; this alexnet reads version 1"):
        PreparedDataset(numbered, prepared.ALL)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(UserError, match="not a prepared-dataset manifest"):
        PreparedDataset(numbered, prepared.ALL)
    path.write_text("{ half")
    with pytest.raises(UserError, match=f"cannot read {path}"):
        PreparedDataset(numbered, prepared.ALL)


def test_verify_finds_a_changed_byte_that_opening_does_not_read(numbered):
    prepared.verify(numbered)
    shard = numbered / prepared.ALL / "00001.shard"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    PreparedDataset(numbered, prepared.ALL)  # sizes, header and index are intact
    with pytest.raises(UserError, match=rf"shard {shard} is damaged: its data do not match"):
        prepared.verify(numbered)


def test_a_label_equal_to_the_class_count_is_refused_on_opening(numbered):
    shard = numbered / prepared.ALL / "00002.shard"
    data = bytearray(shard.read_bytes())
    label_at = prepared.HEADER_BYTES + 16  # image 0's record: offset u8, nbytes u4, height u2, width u2, label u4
    assert int.from_bytes(data[label_at : label_at + 4], "little") == 0  # item 10: c0's 11th file, 0030.png
    data[label_at : label_at + 4] = (2).to_bytes(4, "little")  # the last of the 3 classes: still valid
    shard.write_bytes(bytes(data))
    assert PreparedDataset(numbered, prepared.ALL).targets[10] == 2
    data[label_at : label_at + 4] = (3).to_bytes(4, "little")  # labels are 0, 1, 2: 3 is none of them
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"shard {shard} is damaged: a label is not one of the 3 classes"):
        PreparedDataset(numbered, prepared.ALL)


def test_an_unknown_encoding_in_the_manifest_is_one_line(numbered, capsys):
    path = numbered / prepared.MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), "encoding": "png"}))
    with pytest.raises(UserError, match=r"names an unknown encoding 'png' \(known: \('raw', 'jpeg'\)\)"):
        PreparedDataset(numbered, prepared.ALL)
    run = numbered.parent / "run"
    code = main(["train", str(numbered), "--recipe", "small", "--workers", "0", "--output", str(run), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "unknown encoding 'png'" in err


def test_an_item_is_the_central_square_of_its_resized_source_rows_and_columns_kept(numbered, tmp_path):
    ds = PreparedDataset(numbered, prepared.ALL)
    order = sorted(range(36), key=lambda i: (i % 3, i))
    for k in (0, 1, 2, 3):  # odd sources are 9x14 (stored 8 x int(8 * 14 / 9) = 8x12), even ones 17x11 (12x8)
        i = order[k]
        assert tuple(ds.image(k).shape) == ((3, 8, 12) if i % 2 else (3, 12, 8))
        source = torch.from_numpy(np.array(Image.open(tmp_path / "src" / f"c{i % 3}" / f"{i:04d}.png")))
        resized = TF.resize(source.permute(2, 0, 1), 8, antialias=True)
        top, left = (resized.shape[1] - 8) // 2, (resized.shape[2] - 8) // 2  # 2 (of 4 extra rows or columns)
        assert torch.equal(ds[k][0], resized[:, top : top + 8, left : left + 8]), i


# --------------------------------------------------------------------------------------------
# Sharding across loader workers and data-parallel ranks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_times_ranks_read_every_sample_exactly_once(numbered, workers):
    ds = PreparedDataset(numbered, prepared.ALL)
    ds[0]  # maps opened here must not be the ones the forked workers read through
    for world in (1, 2, 3, 5):
        seen = []
        for rank in range(world):  # the trainer's sampler through the trainer's prepared loader
            sampler = ShardSampler(len(ds), rank=rank, world=world, seed=7)
            sampler.set_epoch(1)
            loader = prepared.make_loader(ds, 4, sampler=sampler, workers=workers)
            rank_ids = [i for batch in loader for i in _ids(batch.images)]
            assert len(rank_ids) in (36 // world, 36 // world + 1)
            seen += rank_ids
        assert sorted(seen) == list(range(36)), world
    # PyTorch's own DistributedSampler splits it too (it pads to a multiple of the ranks)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, collate_fn=collate)
        seen += [i for batch in loader for i in _ids(batch.images)]
    assert sorted(seen) == list(range(36))
    # and each item is its own source: class c{i % 3}, read back in the sorted order of the files
    order = sorted(range(36), key=lambda i: (i % 3, i))
    assert [_ids(ds[k][0][None])[0] for k in range(36)] == order
    assert ds.targets == [i % 3 for i in order]


# --------------------------------------------------------------------------------------------
# What the loader yields
# --------------------------------------------------------------------------------------------
def test_a_split_read_at_another_size_is_resized_with_one_warning(tmp_path):
    src = tmp_path / "src"
    write_images(src, 2, size=40)
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=24), workers=0, quiet=True)
    with pytest.warns(PreparedWarning, match="prepared at 24 px and is read at 12 px.*--size 12"):
        ds = PreparedDataset(tmp_path / "dst", prepared.ALL, resize=12)
    stored = ds.image(0)
    expected = TF.center_crop(TF.resize(stored, 12, antialias=True), [12, 12])
    assert torch.equal(ds[0][0], expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PreparedDataset(tmp_path / "dst", prepared.ALL, resize=24)  # the stored size: no warning


def test_decoding_jpeg_batches_on_the_device_gives_the_images_the_workers_decode(tmp_path):
    src = tmp_path / "src"
    write_images(src, 5, size=40)
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=32, encoding="jpeg"), workers=0, quiet=True)
    ds = PreparedDataset(tmp_path / "dst", prepared.ALL, resize=28)
    plain = DataLoader(ds, batch_size=4, collate_fn=collate)
    encoded = DataLoader(EncodedItems(ds), batch_size=4, collate_fn=collate_encoded)
    on_device = DeviceDecodeLoader(encoded, torch.device("cpu"), 28)
    assert len(on_device) == len(plain) == 4
    for a, b in zip(plain, on_device, strict=True):
        assert a.images.shape == (a.targets.numel(), 3, 28, 28)
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not prepared.decodes_on(ds, "cpu") and prepared.decodes_on(ds, "cuda")
    raw = PreparedDataset(tmp_path / "dst", prepared.ALL)
    raw.encoding = "raw"
    assert not prepared.decodes_on(raw, "cuda")


@pytest.mark.cuda
def test_on_cuda_jpeg_shards_are_decoded_there_and_match_the_cpu_within_jpeg_noise(tmp_path):
    src = tmp_path / "src"
    write_images(src, 5, size=40)
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=32, encoding="jpeg"), workers=0, quiet=True)
    ds = PreparedDataset(tmp_path / "dst", prepared.ALL)
    loader = prepared.make_loader(ds, 4, shuffle=False, workers=0, device="cuda")
    cpu = prepared.make_loader(ds, 4, shuffle=False, workers=0, device="cpu")
    for a, b in zip(loader, cpu, strict=True):
        assert a.images.device.type == "cuda"
        assert (a.images.cpu().int() - b.images.int()).abs().float().mean() < 2  # nvJPEG's IDCT differs slightly


def test_the_pca_of_a_prepared_split_is_the_eigendecomposition_of_its_pixels(numbered, tmp_path):
    src = tmp_path / "colour"
    write_images(src, 4, size=20)
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=16), workers=0, quiet=True)
    ds = PreparedDataset(tmp_path / "dst", prepared.ALL)
    pca = compute_pca(ds, n_samples=len(ds))
    pixels = np.concatenate([ds[i][0].reshape(3, -1).T.numpy() / 255.0 for i in range(len(ds))])
    eigval, eigvec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    np.testing.assert_allclose(pca.eigval.numpy(), eigval[::-1], rtol=1e-4, atol=1e-7)
    for k in range(3):  # each eigenvector up to its sign
        v = eigvec[:, 2 - k]
        np.testing.assert_allclose(np.abs(pca.eigvec[:, k].numpy() @ v), 1.0, atol=1e-4)


def test_a_val_split_of_a_prepared_folder_holds_the_images_the_folder_split_holds(tmp_path):
    src = _numbered(tmp_path / "src", 30)
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=8), workers=0, quiet=True)
    train, val, classes = prepared.make_datasets(tmp_path / "dst", resize=8, val_split=0.3, seed=3)
    f_train, f_val, f_classes = make_datasets(src, val_split=0.3, seed=3)
    assert classes == f_classes
    for ours, theirs in ((train, f_train), (val, f_val)):
        assert ours.targets == theirs.targets
        ids = [_ids(ours[k][0][None])[0] for k in range(len(ours))]
        assert ids == [int(p.stem) for p, _ in theirs.samples]


# --------------------------------------------------------------------------------------------
# Training and evaluation on a prepared dataset
# --------------------------------------------------------------------------------------------
def test_training_on_a_prepared_dataset_gives_the_weights_its_folder_gives_and_evaluates(tiny_data, tmp_path):
    """Prepared at the model's resize size, the stored pixels are the folder pipeline's own: with the same
    seed the runs are equal, PCA lighting included (its statistics come from the images as served)."""
    dst = tmp_path / "prepared"
    assert main(["prepare", str(tiny_data), str(dst), "--size", "36", "--workers", "0", "-q"]) == 0
    flags = {"epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu", "precision": "fp32"}
    cfg = resolve_config("small", None, flags)
    assert cfg.pca_std > 0 and cfg.pca == "dataset"
    fit(tiny_data, tmp_path / "folder", cfg, quiet=True)
    args = ["--recipe", "small", "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    args += ["--device", "cpu", "--precision", "fp32", "--output", str(tmp_path / "p"), "-q"]
    assert main(["train", str(dst), *args]) == 0
    a, _ = read_checkpoint(tmp_path / "folder" / "checkpoints" / "last.safetensors")
    b, meta = read_checkpoint(tmp_path / "p" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta["data"] == str(dst.resolve())

    clf = load_classifier(tmp_path / "p", device="cpu")
    on_prepared = evaluate_folder(clf, dst, precision="fp32", workers=0)
    on_folder = evaluate_folder(clf, tiny_data, precision="fp32", workers=0)
    assert on_prepared["folder"] == str(dst / "val") and on_prepared["images"] == on_folder["images"] == 9
    assert on_prepared["top1"] == on_folder["top1"] and on_prepared["loss"] == pytest.approx(on_folder["loss"])


def test_evaluation_maps_a_prepared_splits_classes_onto_the_models_by_name(tmp_path):
    card = get_spec("alexnet_small").card.trained("alexnet_small", ["blue", "green", "red"])
    clf = Classifier.from_module(create_model("alexnet_small", 3), card, "untrained", torch.device("cpu"))
    src = tmp_path / "two"
    write_images(src, 3, size=40)
    for p in (src / "blue").iterdir():
        p.unlink()
    (src / "blue").rmdir()
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=36), workers=0, quiet=True)
    result = evaluate_folder(clf, tmp_path / "dst", precision="fp32", workers=0)
    assert result["per_class_images"] == [0, 3, 3]


def test_evaluating_a_split_without_images_is_an_error_not_a_score(numbered, capsys):
    card = get_spec("alexnet_small").card.trained("alexnet_small", ["c0", "c1", "c2"])
    clf = Classifier.from_module(create_model("alexnet_small", 3), card, "untrained", torch.device("cpu"))
    path = numbered / prepared.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["splits"][prepared.ALL].update(shards=[], images=0, bytes=0)
    path.write_text(json.dumps(manifest))
    with warnings.catch_warnings(), pytest.raises(UserError, match=rf"^{numbered / prepared.ALL} holds no images"):
        warnings.simplefilter("ignore", PreparedWarning)  # prepared at 8 px, read at 36
        evaluate_folder(clf, numbered, precision="fp32", workers=0)


# --------------------------------------------------------------------------------------------
# Damaged or tampered datasets: refused in one line, never read as wrong pixels or labels
# --------------------------------------------------------------------------------------------
def _patch(shard: Path, at: int, value: bytes) -> None:
    data = bytearray(shard.read_bytes())
    data[at : at + len(value)] = value
    shard.write_bytes(bytes(data))


def _record(j: int) -> int:
    """Where image ``j``'s index record starts: offset u8, nbytes u4, height u2, width u2, label u4."""
    return prepared.HEADER_BYTES + 20 * j


def _reseal(root: Path) -> None:
    """Write each shard's current CRC-32 into the manifest, as a faulty writer or a tamperer would."""
    import zlib

    path = root / prepared.MANIFEST
    manifest = json.loads(path.read_text())
    for split in manifest["splits"].values():
        for s in split["shards"]:
            data = (root / s["file"]).read_bytes()
            s["crc32"] = zlib.crc32(data[int.from_bytes(data[16:24], "little") :])
    path.write_text(json.dumps(manifest))


def _batches_of(ds: PreparedDataset, workers: int) -> list:
    from alexnet.runtime.engine import Meter, _batches

    return list(_batches(prepared.make_loader(ds, 4, workers=workers), Meter(), torch.device("cpu")))


def test_changed_or_zeroed_data_are_found_by_the_checksum_when_their_shard_is_first_read(numbered):
    intact = PreparedDataset(numbered, prepared.ALL)
    _batches_of(intact, workers=2)
    assert intact._checked.all()  # checked by the loader's workers, once for the whole run
    shard = numbered / prepared.ALL / "00001.shard"  # items 5-9
    start = int.from_bytes(shard.read_bytes()[16:24], "little")
    _patch(shard, start + 100, b"\x01")
    ds = PreparedDataset(numbered, prepared.ALL)  # opening reads no image data
    assert ds[4][1] == ds.targets[4]  # shard 0 is intact
    with pytest.raises(UserError, match=rf"^shard {shard} is damaged: its data do not match the manifest's CRC-32"):
        ds[5]
    _patch(shard, start, bytes(shard.stat().st_size - start))  # all zeros, the size kept
    with pytest.raises(UserError, match=rf"^shard {shard} is damaged"):
        PreparedDataset(numbered, prepared.ALL)[9]
    with pytest.raises(UserError) as info:  # from a loader worker: the same one line, in this process
        _batches_of(PreparedDataset(numbered, prepared.ALL), workers=2)
    assert str(info.value).startswith(f"shard {shard} is damaged") and "\n" not in str(info.value)


def test_the_pca_sample_leaves_the_checksums_to_the_first_read_by_training(numbered, tmp_path):
    """A thousand images of ImageNet's training set touch most of its shards: the PCA's sample reads only its
    images, unchecked, and a damaged shard it read is still found by the first read after it."""
    from alexnet.data.loaders import load_or_compute_pca

    shard = numbered / prepared.ALL / "00001.shard"  # items 5-9
    _patch(shard, int.from_bytes(shard.read_bytes()[16:24], "little") + 100, b"\x01")
    ds = PreparedDataset(numbered, prepared.ALL)
    load_or_compute_pca(tmp_path / "run", ds, n_samples=36)  # every image, the damaged shard's included
    assert (tmp_path / "run" / "pca.json").exists() and not ds._checked.any()
    assert ds[4][1] == ds.targets[4] and ds._checked[0]  # shard 0: checked now, and intact
    with pytest.raises(UserError, match=rf"^shard {shard} is damaged"):
        ds[5]


def test_the_checksum_is_checked_on_a_file_system_without_locks(numbered, monkeypatch):
    import errno

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")  # as NFS without its lock service answers

    monkeypatch.setattr(prepared.fcntl, "flock", no_locks)
    ds = PreparedDataset(numbered, prepared.ALL)
    assert ds[0][1] == ds.targets[0]
    shard = numbered / prepared.ALL / "00001.shard"
    _patch(shard, shard.stat().st_size - 1, b"\x07")
    with pytest.raises(UserError, match=rf"^shard {shard} is damaged: its data do not match"):
        PreparedDataset(numbered, prepared.ALL)[5]


def test_a_data_offset_into_the_index_or_offsets_that_do_not_lay_out_the_data_are_refused_on_opening(numbered):
    shard = numbered / prepared.ALL / "00002.shard"
    saved = shard.read_bytes()
    for offset in (0, prepared.HEADER_BYTES, 8192):  # the header, the index, past the end
        _patch(shard, 16, offset.to_bytes(8, "little"))
        with pytest.raises(UserError, match=rf"^shard {shard} is damaged: its header's data offset {offset} "):
            PreparedDataset(numbered, prepared.ALL)
    shard.write_bytes(saved)
    for j in range(5):  # every image at offset 0: all of them would read image 0's pixels
        _patch(shard, _record(j), bytes(8))
    with pytest.raises(UserError, match=rf"^shard {shard} is damaged: its index does not lay out its data"):
        PreparedDataset(numbered, prepared.ALL)


def test_a_raw_images_size_in_the_index_must_match_its_bytes_and_the_prepared_size(numbered):
    shard = numbered / prepared.ALL / "00000.shard"
    saved = shard.read_bytes()
    height, width = (int.from_bytes(saved[_record(0) + k : _record(0) + k + 2], "little") for k in (12, 14))
    assert {height, width} == {8, 12}  # 8 px on the shorter side
    for h, w in ((65535, width), (0, width), (height * width // 4, 4)):  # the last: the same 3*h*w bytes
        _patch(shard, _record(0) + 12, h.to_bytes(2, "little") + w.to_bytes(2, "little"))
        with pytest.raises(UserError, match=rf"^shard {shard} is damaged: image 0 is {h}x{w} in its index"):
            PreparedDataset(numbered, prepared.ALL)


def test_a_huge_image_count_in_a_header_is_checked_against_the_file_size_before_any_read(numbered):
    import tracemalloc

    shard = numbered / prepared.ALL / "00003.shard"
    _patch(shard, 12, (2**31).to_bytes(4, "little"))
    path = numbered / prepared.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["splits"][prepared.ALL]["shards"][3]["images"] = 2**31
    path.write_text(json.dumps(manifest))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=rf"^shard {shard} is damaged: its header counts 2147483648 images"):
            PreparedDataset(numbered, prepared.ALL)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # its index would be 43 GB


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda m: m.pop("splits"), '"splits" is missing or not a table'),
        (lambda m: m["splits"]["all"].pop("classes"), "splits.all.classes is missing or not a list of names"),
        (lambda m: m["splits"]["all"].update(shards="abc"), "splits.all.shards is missing or not a list"),
        (lambda m: m["splits"]["all"]["shards"][1].update(bytes="abc"), r"splits.all.shards\[1\].bytes is missing"),
        (lambda m: m["splits"]["all"]["shards"][1].pop("file"), r"splits.all.shards\[1\].file is missing"),
        (lambda m: m.update(size=-3), '"size" is missing or not a number of pixels'),
    ],
)
def test_a_manifest_with_a_missing_or_mistyped_key_is_one_line_naming_it(numbered, capsys, damage, said):
    path = numbered / prepared.MANIFEST
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=rf"^{path} is damaged: {said}"):
        PreparedDataset(numbered, prepared.ALL)
    code = main(["train", str(numbered), "--recipe", "small", "--workers", "0", "--output", str(numbered.parent / "r")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "is damaged" in err


def test_shard_paths_outside_the_dataset_folder_are_refused_and_their_sizes_not_told(numbered, tmp_path):
    other = tmp_path / "other" / "00000.shard"
    other.parent.mkdir()
    other.write_bytes((numbered / prepared.ALL / "00000.shard").read_bytes())
    (numbered / "link.shard").symlink_to(other)
    path = numbered / prepared.MANIFEST
    saved = path.read_text()
    for file in ("../other/00000.shard", "/etc/passwd", "/dev/zero", "link.shard"):
        manifest = json.loads(saved)
        manifest["splits"][prepared.ALL]["shards"][0]["file"] = file
        path.write_text(json.dumps(manifest))
        with pytest.raises(UserError, match="names a shard outside the dataset folder") as info:
            PreparedDataset(numbered, prepared.ALL)
        assert "bytes" not in str(info.value) and str(Path("/etc/passwd").stat().st_size) not in str(info.value)


@pytest.fixture
def jpeg_set(tmp_path: Path) -> Path:
    """6 images in 3 classes, prepared as JPEG at 8 px in shards of 5."""
    dst = tmp_path / "jpeg"
    options = PrepareOptions(size=8, encoding="jpeg", shard_images=5)
    prepare_dataset(_numbered(tmp_path / "src", 6), dst, options, workers=0, quiet=True)
    return dst


def _jpeg_at(shard: Path, j: int) -> int:
    """Where image ``j``'s JPEG file starts in the shard."""
    data = shard.read_bytes()
    return int.from_bytes(data[16:24], "little") + int.from_bytes(data[_record(j) : _record(j) + 8], "little")


def test_a_corrupt_jpeg_in_a_shard_is_one_line_naming_the_shard_and_the_image(jpeg_set):
    shard = jpeg_set / prepared.ALL / "00000.shard"
    start = _jpeg_at(shard, 1)
    huffman = shard.read_bytes().index(b"\xff\xc4", start)  # a Huffman table: the header is intact up to it
    _patch(shard, huffman + 4, b"\xff\xff")
    _patch(shard, _jpeg_at(shard, 2), b"\0\0")  # the first 2 bytes of image 2
    _reseal(jpeg_set)  # the checksums agree: only decoding finds it
    ds = PreparedDataset(jpeg_set, prepared.ALL)
    ds[0]
    with pytest.raises(UserError, match=rf"^image 1 of shard {shard} is damaged: it cannot be decoded \(Bogus"):
        ds[1]
    with pytest.raises(UserError, match=rf"^image 2 of shard {shard} is damaged: it is not a JPEG file"):
        ds[2]
    with pytest.raises(UserError) as info:
        _batches_of(ds, workers=0)
    assert str(info.value).startswith(f"image 1 of shard {shard} is damaged") and "\n" not in str(info.value)


def test_a_jpeg_whose_header_claims_other_dimensions_than_its_index_is_refused_before_decoding(jpeg_set, monkeypatch):
    shard = jpeg_set / prepared.ALL / "00000.shard"
    frame = shard.read_bytes().index(b"\xff\xc0", _jpeg_at(shard, 0))  # image 0's frame header (SOF0)
    _patch(shard, frame + 5, (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big"))  # 900 Mpixel, 2.7 GB
    _reseal(jpeg_set)
    decoded = []
    monkeypatch.setattr(prepared, "decode_jpeg", lambda *args, **kwargs: decoded.append(args))
    ds = PreparedDataset(jpeg_set, prepared.ALL)
    said = rf"^image 0 of shard {shard} is damaged: its JPEG header says 30000x30000, its index 12x8"
    for read in (ds.image, EncodedItems(ds).__getitem__):  # decoded here, or on the device in batches
        with pytest.raises(UserError, match=said):
            read(0)
    assert decoded == []
