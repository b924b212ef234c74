"""ImageNet's classes and devkit: the wnid order and the words, meta.mat's IDs mapped to wnids; the words travel
from a prepared miniature ImageNet through training to predict and evaluate; the paper's error table."""

from __future__ import annotations

import json

import pytest

from alexnet.cli import main
from alexnet.data.imagenet import class_words, error_table, imagenet_words, read_devkit
from alexnet.models.card import ModelCard
from imagenet_miniature import CLASSES, SYNSETS, TRUTH, WORDS, archives, devkit, make_images


@pytest.fixture(scope="module")
def images() -> tuple[dict, dict]:
    return make_images()


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
    path.write_bytes(devkit(TRUTH))
    kit = read_devkit(path)
    assert kit.wnids == {1: "n02119789", 2: "n02100735", 3: "n02110185", 4: "n02096294", 5: "n01440764"}
    assert kit.words["n02119789"] == "kit fox, Vulpes macrotis" and "n02075296" not in kit.words
    assert kit.truth == tuple(TRUTH)


# --------------------------------------------------------------------------------------------
# The names travel with the model; the paper's table
# --------------------------------------------------------------------------------------------
def test_a_model_trained_on_the_miniature_predicts_words_and_evaluate_prints_the_papers_table(images, tmp_path, capsys):
    # the devkit's words, not ImageNet's table (which has the same wnids), must reach the model
    synsets = [(i, w, words.upper(), n) for i, w, words, n in SYNSETS]
    src = archives(tmp_path / "archives", *images, synsets=synsets)
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
