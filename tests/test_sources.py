"""The sources prepare reads in place: miniature archives (a tar of per-synset tars, a val tar, a devkit with a real
meta.mat written by scipy), Kaggle's layout and a flat folder with a labels file prepare into the dataset the
same images in class folders give; a wrong devkit or a damaged archive is one line; a killed prepare resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.data import prepared
from alexnet.data.prepare import prepare_dataset
from alexnet.data.prepared import PreparedDataset
from alexnet.errors import UserError
from imagenet_miniature import (
    CLASSES,
    OPTIONS,
    SRC_ROOT,
    SYNSETS,
    TRUTH,
    VAL_LABELS,
    WORDS,
    archives,
    devkit,
    encode,
    folders,
    make_images,
    meta_mat,
    photo,
    same_dataset,
    shards,
    tar,
    tree_bytes,
)


@pytest.fixture(scope="module")
def images() -> tuple[dict, dict]:
    return make_images()


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """The class folders, prepared: what every layout must give."""
    tmp = tmp_path_factory.mktemp("reference")
    dst = tmp / "dst"
    prepare_dataset(folders(tmp / "src", *images), dst, OPTIONS, workers=0, quiet=True)
    return dst


# --------------------------------------------------------------------------------------------
# Every layout gives the class folders' dataset
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_the_archives_prepare_into_the_dataset_of_the_same_images_in_class_folders(
    images, reference, tmp_path, workers
):
    src = archives(tmp_path / "archives", *images)
    dst = tmp_path / "dst"
    result = prepare_dataset(src, dst, OPTIONS, workers=workers, quiet=True)
    same_dataset(dst, reference)
    train, val = PreparedDataset(dst, "train"), PreparedDataset(dst, "val")
    assert train.classes == val.classes == CLASSES and train.words == val.words == WORDS
    assert train.targets == [0] * 3 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 3  # one unreadable file left out
    for i in range(len(val)):  # each validation image's colour names it
        k = round(int(val.image(i)[0].float().mean()) / 30)
        assert val.target(i) == VAL_LABELS[k], k
    assert result["skipped"] == 1
    report = (dst / "skipped.tsv").read_text().splitlines()
    assert report[1].startswith(f"{src / 'ILSVRC2012_img_train.tar'}/n02119789.tar/n02119789_80.JPEG\t")


def test_kaggles_layout_prepares_into_the_dataset_of_the_same_images_in_class_folders(images, reference, tmp_path):
    train, val = images
    src = tmp_path / "kaggle"
    data = src / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid, files in train.items():
        (data / "train" / wnid).mkdir(parents=True)
        for name, content in files.items():
            (data / "train" / wnid / name).write_bytes(content)
    (data / "val").mkdir(parents=True)
    solution = ["ImageId,PredictionString"]
    for k, (name, content) in enumerate(val.items(), 1):
        (data / "val" / name).write_bytes(content)
        wnid = CLASSES[VAL_LABELS[k]]
        solution.append(f"{name[:-5]},{wnid} 1 2 10 12 {wnid} 3 4 9 9")
    (src / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")
    (src / "LOC_synset_mapping.txt").write_text("".join(f"{w} {t}\n" for _, w, t, n in SYNSETS if n == 0))
    prepare_dataset(src, tmp_path / "dst", OPTIONS, workers=0, quiet=True)
    same_dataset(tmp_path / "dst", reference)
    assert PreparedDataset(tmp_path / "dst", "val").words == WORDS


def test_a_flat_folder_with_a_labels_file_prepares_like_class_folders(tmp_path):
    # y.png comes before sub/ in a class folder (a folder's files first), after it by name
    rows = {"a.png": "cat", "sub/b.png": "cat", "y.png": "cat", "d.png": "dog", "e.png": "dog", "zz.png": "ant"}
    flat, folders = tmp_path / "flat", tmp_path / "folders"
    for n, (name, cls) in enumerate(rows.items()):
        content = encode(Image.fromarray(photo(n)), "PNG")
        for path in (flat / name, folders / cls / name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    (flat / "unlisted.png").write_bytes(encode(Image.fromarray(photo(9)), "PNG"))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class\n" + "".join(f"{name},{cls}\n" for name, cls in rows.items()))
    prepare_dataset(flat, tmp_path / "a", OPTIONS, workers=0, quiet=True, labels=labels)
    prepare_dataset(folders, tmp_path / "b", OPTIONS, workers=0, quiet=True)
    same_dataset(tmp_path / "a", tmp_path / "b")
    ds = PreparedDataset(tmp_path / "a", prepared.ALL)
    assert ds.classes == ["ant", "cat", "dog"] and ds.targets == [0, 1, 1, 1, 2, 2] and ds.words == []


def test_one_archive_as_src_and_the_devkits_two_files_given_apart(images, reference, tmp_path):
    src = archives(tmp_path / "archives", *images)
    kit = tmp_path / "kit"
    (kit / "data").mkdir(parents=True)
    (kit / "data" / "meta.mat").write_bytes(meta_mat(SYNSETS))
    (kit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in TRUTH))
    prepare_dataset(src / "ILSVRC2012_img_val.tar", tmp_path / "val", OPTIONS, workers=0, quiet=True, devkit=kit)
    assert shards(tmp_path / "val") == {k: v for k, v in shards(reference).items() if k.startswith("val/")}
    prepare_dataset(src / "ILSVRC2012_img_train.tar", tmp_path / "train", OPTIONS, workers=0, quiet=True)
    assert shards(tmp_path / "train") == {k: v for k, v in shards(reference).items() if k.startswith("train/")}
    assert PreparedDataset(tmp_path / "train", "train").words == WORDS  # ImageNet's own table, without a devkit


# --------------------------------------------------------------------------------------------
# A wrong devkit or a damaged archive: one line naming the file, nothing prepared lost
# --------------------------------------------------------------------------------------------
def cut_inner(train: dict, at: str) -> dict:
    """The per-synset tars with the kit fox's cut short: in a member's data, or exactly after a header."""
    inner = {w: tar(list(files.items())) for w, files in train.items()}
    whole = inner["n02119789"]
    inner["n02119789"] = whole[: len(whole) // 3] if at == "data" else whole[: 512 * 3]
    return inner


@pytest.mark.parametrize(
    "broken, message",
    [
        ("truth_long", r"ILSVRC2012_validation_ground_truth.txt has 8 labels for 7 images in .*ILSVRC2012_img_val.tar"),
        ("truth_short", r"ILSVRC2012_validation_ground_truth.txt has 6 labels for 7 images"),
        ("inner_node", r"ground_truth.txt, line 3: ILSVRC2012_ID 1001 is not one of the 5 classes of .*meta.mat"),
        ("unknown_wnid", r"ILSVRC2012_img_train.tar: n09999999.tar is not a synset of .*meta.mat"),
        ("cut_data", r"ILSVRC2012_img_train.tar: n02119789.tar is truncated or damaged"),
        ("cut_header", r"ILSVRC2012_img_train.tar: n02119789.tar is truncated or damaged"),
        ("gzip", r"ILSVRC2012_img_train.tar is gzip-compressed"),
    ],
)
def test_a_mismatched_devkit_or_a_damaged_archive_is_one_error_naming_the_file(
    images, tmp_path, capsys, broken, message
):
    train, val = images
    src = archives(tmp_path / "archives", train, val)
    dst = tmp_path / "dst"
    prepare_dataset(src, dst, OPTIONS, workers=0, quiet=True)
    before = tree_bytes(dst)
    kit, archive = src / "ILSVRC2012_devkit_t12.tar.gz", src / "ILSVRC2012_img_train.tar"
    if broken.startswith("truth"):
        kit.write_bytes(devkit([*TRUTH, 2] if broken == "truth_long" else TRUTH[:-1]))
    elif broken == "inner_node":
        kit.write_bytes(devkit([1, 5, 1001, 1, 4, 2, 5]))
    elif broken == "unknown_wnid":
        inner = [(f"{w}.tar", tar(list(f.items()))) for w, f in train.items()]
        stray = tar([("n09999999_1.JPEG", val["ILSVRC2012_val_00000001.JPEG"])])
        archive.write_bytes(tar([*inner, ("n09999999.tar", stray)]))
    elif broken.startswith("cut"):
        inner = cut_inner(train, broken[4:])
        archive.write_bytes(tar([(f"{w}.tar", inner[w]) for w in inner]))
    else:
        import gzip

        archive.write_bytes(gzip.compress(archive.read_bytes()))
    with pytest.raises(UserError, match=message):
        prepare_dataset(src, dst, OPTIONS, workers=0, quiet=True)
    assert tree_bytes(dst) == before  # the dataset already prepared is untouched
    capsys.readouterr()
    assert main(["prepare", str(src), str(tmp_path / "other"), "-q"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet prepare: error:") and not (tmp_path / "other").exists()


def test_a_prepare_killed_half_way_resumes_from_the_archives_to_the_uninterrupted_result(images, tmp_path):
    """The job is killed (os._exit, as SIGKILL leaves it: no clean-up) half way through its second train shard,
    with one shard written and one half-written; the next run finishes it from the archives."""
    src = archives(tmp_path / "archives", *images)
    dst = tmp_path / "dst"
    script = f"""
import os
from alexnet.data import prepared
from alexnet.data.prepare import PrepareOptions, prepare_dataset
add, seen = prepared.ShardWriter.add, []
def dying_add(self, *args):
    seen.append(1)
    if len(seen) == 6:
        os._exit(9)
    add(self, *args)
prepared.ShardWriter.add = dying_add
prepare_dataset({str(src)!r}, {str(dst)!r}, PrepareOptions(size=16, shard_images=4), workers=0, quiet=True)
"""
    env = {**os.environ, "PYTHONPATH": str(SRC_ROOT)}
    job = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert job.returncode == 9, job.stderr.decode()[-2000:]
    assert (dst / "train" / "00000.shard").exists() and list((dst / "train").glob(".*.tmp"))
    assert not (dst / prepared.MANIFEST).exists()
    result = prepare_dataset(src, dst, OPTIONS, workers=0, quiet=True)
    assert 0 < result["converted"] < result["images"] + result["skipped"]  # the first shard was kept
    prepare_dataset(src, tmp_path / "straight", OPTIONS, workers=0, quiet=True)
    assert tree_bytes(dst) == tree_bytes(tmp_path / "straight")
