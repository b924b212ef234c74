"""ImageNet as it comes: miniature archives (a tar of per-synset tars, a val tar, a devkit with a real meta.mat
written by scipy), Kaggle's layout and a flat folder with a labels file prepare into the dataset the same images
in class folders give; the devkit's IDs go through meta.mat; class names travel to predict and evaluate."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from alexnet import prepared
from alexnet.card import ModelCard
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.imagenet import class_words, error_table, imagenet_words, read_devkit
from alexnet.prepare import PrepareOptions, prepare_dataset
from alexnet.prepared import PreparedDataset

SRC_ROOT = Path(__file__).resolve().parents[1] / "src"
OPTIONS = PrepareOptions(size=16, shard_images=4)

# The miniature devkit, in the devkit's own order: ILSVRC2012_ID, WNID, words, children. IDs 1-4 are the real
# devkit's first four synsets (1 is kit fox, not tench); two inner nodes of the hierarchy are no classes.
SYNSETS = [
    (1, "n02119789", "kit fox, Vulpes macrotis", 0),
    (2, "n02100735", "English setter", 0),
    (3, "n02110185", "Siberian husky", 0),
    (4, "n02096294", "Australian terrier", 0),
    (5, "n01440764", "tench, Tinca tinca", 0),
    (1001, "n02075296", "carnivore", 4),
    (1002, "n01473806", "aquatic vertebrate", 1),
]
# Class index = sorted wnid: written out by hand.
CLASSES = ["n01440764", "n02096294", "n02100735", "n02110185", "n02119789"]
WORDS = ["tench, Tinca tinca", "Australian terrier", "English setter", "Siberian husky", "kit fox, Vulpes macrotis"]
# Validation image k (ILSVRC2012_val_0000000k) has ground-truth ID TRUTH[k - 1]; its label, by hand:
TRUTH = [1, 5, 3, 1, 4, 2, 5]
VAL_LABELS = {1: 4, 2: 0, 3: 3, 4: 4, 5: 1, 6: 2, 7: 0}
# Member names in an order the tars do not sort: the prepared order is the class folders' (sorted) one.
TRAIN_NAMES = ["512", "10026", "3"]


def _photo(seed: int, h: int = 18, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), np.full((h, w), 40.0 * (seed % 6))], -1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _images() -> tuple[dict[str, dict[str, bytes]], dict[str, bytes]]:
    """Train images per wnid (with a CMYK JPEG, a grayscale one, a PNG named .JPEG and an unreadable file, as
    the real set has) and the validation images, each a uniform colour that names it."""
    train: dict[str, dict[str, bytes]] = {}
    for c, wnid in enumerate(CLASSES):
        files = {}
        for k, n in enumerate(TRAIN_NAMES):
            rgb = Image.fromarray(_photo(10 * c + k, 18 + k, 24 - 2 * c))
            files[f"{wnid}_{n}.JPEG"] = _encode(rgb)
        train[wnid] = files
    train[CLASSES[1]][f"{CLASSES[1]}_77.JPEG"] = _encode(Image.fromarray(_photo(91)).convert("CMYK"))
    train[CLASSES[2]][f"{CLASSES[2]}_78.JPEG"] = _encode(Image.fromarray(_photo(92)).convert("L"))
    train[CLASSES[3]][f"{CLASSES[3]}_79.JPEG"] = _encode(Image.fromarray(_photo(93)), "PNG")
    train[CLASSES[4]][f"{CLASSES[4]}_80.JPEG"] = b"\xff\xd8 not a whole JPEG"
    val = {
        f"ILSVRC2012_val_{k:08d}.JPEG": _encode(Image.new("RGB", (20 + k, 16), (30 * k, 100, 150)))
        for k in range(1, len(TRUTH) + 1)
    }
    return train, val


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_330_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _meta_mat(synsets: list[tuple[int, str, str, int]]) -> bytes:
    """meta.mat as the devkit stores it: a struct array ``synsets`` with the devkit's fields."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]  # fmt: skip
    rows = [(i, w, words, f"gloss of {w}", n, np.zeros((1, n)), 0, 1300 if n == 0 else 0) for i, w, words, n in synsets]
    out = io.BytesIO()
    savemat(out, {"synsets": np.array(rows, dtype=[(f, "O") for f in fields]).reshape(-1, 1)})
    return out.getvalue()


def _devkit(truth: list[int], synsets: list = SYNSETS) -> bytes:
    ground_truth = "".join(f"{t}\n" for t in truth).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in [
            ("ILSVRC2012_devkit_t12/COPYING", b"the devkit's licence"),
            ("ILSVRC2012_devkit_t12/data/meta.mat", _meta_mat(synsets)),
            ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth),
        ]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _archives(root: Path, train: dict, val: dict, *, truth: list[int] = TRUTH, synsets: list = SYNSETS) -> Path:
    """ILSVRC2012_img_train.tar (synsets in reverse order, members unsorted), ILSVRC2012_img_val.tar (reversed)
    and the devkit, in ``root``."""
    root.mkdir(parents=True)
    inner = {w: _tar(list(files.items())) for w, files in train.items()}
    (root / "ILSVRC2012_img_train.tar").write_bytes(_tar([(f"{w}.tar", inner[w]) for w in reversed(list(inner))]))
    (root / "ILSVRC2012_img_val.tar").write_bytes(_tar(list(reversed(list(val.items())))))
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(_devkit(truth, synsets))
    return root


def _folders(root: Path, train: dict, val: dict) -> Path:
    """The same images in class folders: the reference."""
    for wnid, files in train.items():
        for name, data in files.items():
            (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
            (root / "train" / wnid / name).write_bytes(data)
    for k, (name, data) in enumerate(val.items(), 1):
        folder = root / "val" / CLASSES[VAL_LABELS[k]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root


def _shards(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.shard"))}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _same_dataset(a: Path, b: Path) -> None:
    """The same shard bytes, and a manifest equal but for the source, its digest and the words."""
    assert _shards(a) and _shards(a) == _shards(b)
    ma, mb = prepared.read_manifest(a), prepared.read_manifest(b)
    for m in (ma, mb):
        for key in ("source", "digest"):
            m.pop(key)
        for split in m["splits"].values():
            split.pop("words", None)
    assert ma == mb


@pytest.fixture(scope="module")
def images() -> tuple[dict, dict]:
    return _images()


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """The class folders, prepared: what every layout must give."""
    tmp = tmp_path_factory.mktemp("reference")
    dst = tmp / "dst"
    prepare_dataset(_folders(tmp / "src", *images), dst, OPTIONS, workers=0, quiet=True)
    return dst


# --------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------
def test_the_class_table_is_imagenets_1000_wnids_in_sorted_order_with_the_names_torchvision_gives():
    from torchvision.models import AlexNet_Weights

    table = imagenet_words()
    wnids = list(table)
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and table["n01440764"] == "tench, Tinca tinca"
    assert wnids[281] == "n02123045" and table["n02123045"] == "tabby, tabby cat"
    categories = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    # torchvision's short name is one of the devkit's synonyms, but for its two renamed duplicates
    differ = [i for i, c in enumerate(categories) if c.lower() not in table[wnids[i]].lower().split(", ")]
    assert differ == [134, 639] and categories[134] == "crane bird" and table[wnids[517]] == "crane"


def test_class_words_come_from_the_dataset_else_imagenets_table_else_none():
    assert class_words(["n02123045", "n01440764"]) == ("tabby, tabby cat", "tench, Tinca tinca")
    assert class_words(["n02123045", "cat"]) == ()
    assert class_words(["a", "b"], ["x", "y"]) == ("x", "y")
    card = ModelCard(224, 256, classes=("n02123045", "dog"), words=("tabby, tabby cat", ""))
    assert card.label(0) == "tabby, tabby cat (n02123045)" and card.name(0, short=True) == "tabby"
    assert card.label(1) == "dog" and ModelCard.from_json(card.to_json()) == card
    assert "words" not in ModelCard(224, 256, classes=("a",)).to_json()  # cards without words are as before


def test_meta_mat_maps_the_devkits_ids_to_wnids_and_keeps_only_the_synsets_without_children(tmp_path):
    path = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    path.write_bytes(_devkit(TRUTH))
    kit = read_devkit(path)
    assert kit.wnids == {1: "n02119789", 2: "n02100735", 3: "n02110185", 4: "n02096294", 5: "n01440764"}
    assert kit.words["n02119789"] == "kit fox, Vulpes macrotis" and "n02075296" not in kit.words
    assert kit.truth == tuple(TRUTH)


# --------------------------------------------------------------------------------------------
# Every layout gives the class folders' dataset
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_the_archives_prepare_into_the_dataset_of_the_same_images_in_class_folders(
    images, reference, tmp_path, workers
):
    src = _archives(tmp_path / "archives", *images)
    dst = tmp_path / "dst"
    result = prepare_dataset(src, dst, OPTIONS, workers=workers, quiet=True)
    _same_dataset(dst, reference)
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
    _same_dataset(tmp_path / "dst", reference)
    assert PreparedDataset(tmp_path / "dst", "val").words == WORDS


def test_a_flat_folder_with_a_labels_file_prepares_like_class_folders(tmp_path):
    # y.png comes before sub/ in a class folder (a folder's files first), after it by name
    rows = {"a.png": "cat", "sub/b.png": "cat", "y.png": "cat", "d.png": "dog", "e.png": "dog", "zz.png": "ant"}
    flat, folders = tmp_path / "flat", tmp_path / "folders"
    for n, (name, cls) in enumerate(rows.items()):
        content = _encode(Image.fromarray(_photo(n)), "PNG")
        for path in (flat / name, folders / cls / name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    (flat / "unlisted.png").write_bytes(_encode(Image.fromarray(_photo(9)), "PNG"))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class\n" + "".join(f"{name},{cls}\n" for name, cls in rows.items()))
    prepare_dataset(flat, tmp_path / "a", OPTIONS, workers=0, quiet=True, labels=labels)
    prepare_dataset(folders, tmp_path / "b", OPTIONS, workers=0, quiet=True)
    _same_dataset(tmp_path / "a", tmp_path / "b")
    ds = PreparedDataset(tmp_path / "a", prepared.ALL)
    assert ds.classes == ["ant", "cat", "dog"] and ds.targets == [0, 1, 1, 1, 2, 2] and ds.words == []


def test_one_archive_as_src_and_the_devkits_two_files_given_apart(images, reference, tmp_path):
    src = _archives(tmp_path / "archives", *images)
    kit = tmp_path / "kit"
    (kit / "data").mkdir(parents=True)
    (kit / "data" / "meta.mat").write_bytes(_meta_mat(SYNSETS))
    (kit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in TRUTH))
    prepare_dataset(src / "ILSVRC2012_img_val.tar", tmp_path / "val", OPTIONS, workers=0, quiet=True, devkit=kit)
    assert _shards(tmp_path / "val") == {k: v for k, v in _shards(reference).items() if k.startswith("val/")}
    prepare_dataset(src / "ILSVRC2012_img_train.tar", tmp_path / "train", OPTIONS, workers=0, quiet=True)
    assert _shards(tmp_path / "train") == {k: v for k, v in _shards(reference).items() if k.startswith("train/")}
    assert PreparedDataset(tmp_path / "train", "train").words == WORDS  # ImageNet's own table, without a devkit


# --------------------------------------------------------------------------------------------
# A wrong devkit or a damaged archive: one line naming the file, nothing prepared lost
# --------------------------------------------------------------------------------------------
def _cut_inner(train: dict, at: str) -> dict:
    """The per-synset tars with the kit fox's cut short: in a member's data, or exactly after a header."""
    inner = {w: _tar(list(files.items())) for w, files in train.items()}
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
    src = _archives(tmp_path / "archives", train, val)
    dst = tmp_path / "dst"
    prepare_dataset(src, dst, OPTIONS, workers=0, quiet=True)
    before = _files(dst)
    kit, archive = src / "ILSVRC2012_devkit_t12.tar.gz", src / "ILSVRC2012_img_train.tar"
    if broken.startswith("truth"):
        kit.write_bytes(_devkit([*TRUTH, 2] if broken == "truth_long" else TRUTH[:-1]))
    elif broken == "inner_node":
        kit.write_bytes(_devkit([1, 5, 1001, 1, 4, 2, 5]))
    elif broken == "unknown_wnid":
        inner = [(f"{w}.tar", _tar(list(f.items()))) for w, f in train.items()]
        stray = _tar([("n09999999_1.JPEG", val["ILSVRC2012_val_00000001.JPEG"])])
        archive.write_bytes(_tar([*inner, ("n09999999.tar", stray)]))
    elif broken.startswith("cut"):
        inner = _cut_inner(train, broken[4:])
        archive.write_bytes(_tar([(f"{w}.tar", inner[w]) for w in inner]))
    else:
        import gzip

        archive.write_bytes(gzip.compress(archive.read_bytes()))
    with pytest.raises(UserError, match=message):
        prepare_dataset(src, dst, OPTIONS, workers=0, quiet=True)
    assert _files(dst) == before  # the dataset already prepared is untouched
    capsys.readouterr()
    assert main(["prepare", str(src), str(tmp_path / "other"), "-q"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet prepare: error:") and not (tmp_path / "other").exists()


def test_a_prepare_killed_half_way_resumes_from_the_archives_to_the_uninterrupted_result(images, tmp_path):
    """The job is killed (os._exit, as SIGKILL leaves it: no clean-up) half way through its second train shard,
    with one shard written and one half-written; the next run finishes it from the archives."""
    src = _archives(tmp_path / "archives", *images)
    dst = tmp_path / "dst"
    script = f"""
import os
from alexnet import prepared
from alexnet.prepare import PrepareOptions, prepare_dataset
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
    assert _files(dst) == _files(tmp_path / "straight")


# --------------------------------------------------------------------------------------------
# The names travel with the model; the paper's table
# --------------------------------------------------------------------------------------------
def test_a_model_trained_on_the_miniature_predicts_words_and_evaluate_prints_the_papers_table(images, tmp_path, capsys):
    # the devkit's words, not ImageNet's table (which has the same wnids), must reach the model
    synsets = [(i, w, words.upper(), n) for i, w, words, n in SYNSETS]
    src = _archives(tmp_path / "archives", *images, synsets=synsets)
    data, run = tmp_path / "prepared", tmp_path / "run"
    assert main(["prepare", str(src), str(data), "--size", "36", "-q", "--workers", "0"]) == 0
    train = ["train", str(data), "--recipe", "small", "--epochs", "1", "--batch-size", "8", "--workers", "0", "-q"]
    assert main([*train, "--output", str(run), "--precision", "fp32", "--pca-std", "0"]) == 0
    image = tmp_path / "fox.jpg"
    image.write_bytes(images[0]["n02119789"]["n02119789_3.JPEG"])
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--top-k", "5", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    words = [w.upper() for w in WORDS]
    for wnid, name in zip(CLASSES, words, strict=True):
        assert f"  {name} ({wnid})" in out
    assert main(["predict", str(run), str(image), "--json", "--precision", "fp32"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert {(t["class"], t["words"]) for t in top} == set(zip(CLASSES, words, strict=True))
    evaluate = ["evaluate", str(run), str(data), "--ten-crop", "--precision", "fp32", "--workers", "0"]
    assert main([*evaluate, "--output", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "Krizhevsky et al. 2012, 1 CNN" in out and "40.7%" in out and "18.2%" in out
    assert "Caffe's bvlc_alexnet" in out and "42.9%" in out and "19.8%" in out
    assert "5 classes, 7 images" in out
    table = json.loads((tmp_path / "eval" / "metrics.json").read_text())["table"]
    assert [(r["name"], r["crops"]) for r in table["rows"][:2]] == [("this model", 1), ("this model", 10)]
    per_class = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,words,images,top1" and per_class[1].startswith('n01440764,"TENCH, TINCA TINCA",2,')


def test_the_error_table_puts_the_runs_errors_next_to_the_papers_caffes_and_torchvisions():
    result = {"top1_error": 0.40, "top5_error": 0.18, "images": 50_000,
              "center": {"top1_error": 0.43, "top5_error": 0.20}}  # fmt: skip
    table = error_table(result, 1000)
    rows = {(r["name"], r["crops"]): (r["top1_error"], r["top5_error"]) for r in table["rows"]}
    assert rows[("this model", 1)] == (0.43, 0.20) and rows[("this model", 10)] == (0.40, 0.18)
    assert rows[("Krizhevsky et al. 2012, 1 CNN", 10)] == (0.407, 0.182)
    assert rows[("Caffe's bvlc_alexnet", 1)] == (0.429, 0.198)
    assert rows[("torchvision's alexnet weights", 1)] == pytest.approx((1 - 0.56522, 1 - 0.79066))
    assert table["comparable"] and not error_table(result, 999)["comparable"]
