"""The paper's pictures: valid PNGs of the promised size, whose content is checked against hand computations
(kernel colours read back from the picture, top-5 against a hand-prepared forward pass, fc7 vectors and
neighbours against the layers applied one by one and numpy's distances)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

from alexnet import ModelCard, create_model
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.insight.features import FeatureExtractor, distances, fc7_model, find_neighbors, nearest
from alexnet.insight.visualize import (
    TRUE_COLOUR,
    activations_figure,
    confused_classes,
    conv_activations,
    curves_figure,
    filters_figure,
    labelled_samples,
    neighbors_figure,
    predictions_figure,
)
from alexnet.models.alexnet import named_layers
from alexnet.models.checkpoint import save_checkpoint
from alexnet.runtime.inference import Classifier, load_classifier

CARD = ModelCard(32, 40, model="alexnet_small", classes=("blue", "green", "red"))  # the tiny_data classes


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return create_model("alexnet_small", 3).eval()


@pytest.fixture
def clf(small):
    return Classifier.from_module(small, CARD, "test", torch.device("cpu"))


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def cells(picture: np.ndarray, min_area: int) -> list[np.ndarray]:
    """The pixels of each non-white region of at least ``min_area`` pixels, top to bottom, left to right."""
    labels, n = ndimage.label((picture < 250).any(axis=2))
    regions = [np.argwhere(labels == i + 1) for i in range(n)]
    regions = [r for r in regions if len(r) >= min_area]
    height = int(np.median([np.ptp(r[:, 0]) + 1 for r in regions]))
    key = [(round(r[:, 0].min() / height), r[:, 1].min()) for r in regions]
    return [picture[r[:, 0], r[:, 1]] for _, r in sorted(zip(key, regions, strict=True), key=lambda x: x[0])]


def expected_colours(weight: torch.Tensor) -> np.ndarray:
    """Each kernel scaled by its own minimum and maximum, written out: (w - min) / (max - min), as RGB 0-255."""
    w = weight.double().numpy()
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    hi = w.max(axis=(1, 2, 3), keepdims=True)
    return ((w - lo) / (hi - lo)).mean(axis=(2, 3)) * 255  # per-channel constants: the mean is the value


def plant_colour_kernels(model: torch.nn.Module, seed: int) -> torch.Tensor:
    """Give every conv1 kernel one value per colour channel (a flat colour patch), distinct per kernel."""
    conv1 = named_layers(model)[0][1]
    rgb = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (conv1.out_channels, 3, 1, 1)))
    with torch.no_grad():
        conv1.weight.copy_(rgb.float().expand_as(conv1.weight))
    return conv1.weight.detach().clone()


# --------------------------------------------------------------------------------------------- filters
def test_the_filters_grid_has_one_cell_per_kernel_in_its_own_colour(tmp_path):
    model = create_model("alexnet_small", 3).eval()
    weight = plant_colour_kernels(model, 0)
    clf = Classifier.from_module(model, CARD, "test", torch.device("cpu"))
    fig = filters_figure(clf, tmp_path / "filters.png")
    picture = read_png(tmp_path / "filters.png")
    assert picture.shape[:2] == (fig.height, fig.width)
    found = cells(picture, min_area=1000)  # kernels, not the letters of the title
    assert len(found) == 48  # alexnet_small: 48 kernels of 5x5, a 6x8 grid
    for got, want in zip(found, expected_colours(weight), strict=True):
        assert np.abs(np.median(got, axis=0) - want).max() <= 2
    assert "48 conv1 kernels 5x5" in fig.summary


def test_the_paper_network_shows_its_two_columns_as_two_blocks_of_48(tmp_path):
    model = create_model("alexnet2012", 2).eval()
    weight = plant_colour_kernels(model, 1)
    card = ModelCard(227, 256, model="alexnet2012", classes=("a", "b"))
    clf = Classifier.from_module(model, card, "test", torch.device("cpu"))
    fig = filters_figure(clf, tmp_path / "filters.png")
    picture = read_png(tmp_path / "filters.png")
    found = cells(picture, min_area=1000)
    assert len(found) == 96 and fig.details["blocks"] == 2 and fig.details["cols"] == 16
    for got, want in zip(found, expected_colours(weight), strict=True):  # kernels 0-47 on top: column 1
        assert np.abs(np.median(got, axis=0) - want).max() <= 2
    # The blocks: the gap between rows 3 and 4 (the columns) is wider than between rows within a column.
    rows = np.flatnonzero((picture < 250).any(axis=2).mean(axis=1) > 0.6)  # kernel rows, not text
    gaps = np.diff(rows)[np.diff(rows) > 1]
    assert len(gaps) == 5 and gaps[2] > 3 * max(gaps[[0, 1, 3, 4]])


def test_filters_refuse_an_onnx_model_in_one_line(tmp_path):
    onnx_like = Classifier(lambda x: x, CARD, "model.onnx", module=None)
    with pytest.raises(UserError, match="needs the network's weights"):
        filters_figure(onnx_like, tmp_path / "f.png")


# --------------------------------------------------------------------------------------------- predictions
def reference_probabilities(model, path, card=CARD) -> torch.Tensor:
    """By hand: shorter side to 40 (antialiased), central 40x40, central 32x32, (x - mean) / std, softmax."""
    x = TF.pil_to_tensor(Image.open(path).convert("RGB"))
    x = TF.center_crop(TF.resize(x, 40, antialias=True), [40, 40])[:, 4:36, 4:36].float() / 255
    x = (x - torch.tensor(card.mean).view(3, 1, 1)) / torch.tensor(card.std).view(3, 1, 1)
    with torch.no_grad():
        return model(x[None]).softmax(1)[0]


def test_predictions_show_the_models_top_classes_with_the_true_class_in_red(clf, small, tiny_data, tmp_path):
    fig = predictions_figure(clf, tiny_data, tmp_path / "p.png", count=6, precision="fp32")
    picture = read_png(tmp_path / "p.png")
    assert picture.shape[:2] == (fig.height, fig.width) == (2 * 440, 4 * 330)
    records = fig.details["records"]
    assert len(records) == 6 and {r["true"] for r in records} == {"red", "green", "blue"}  # spread over classes
    assert all("/val/" in r["file"] for r in records)  # the held-out part, not the training images
    for r in records:
        probs = reference_probabilities(small, r["file"])
        order = probs.argsort(descending=True).tolist()
        assert [name for name, _ in r["top"]] == [CARD.classes[i] for i in order]
        assert [p for _, p in r["top"]] == pytest.approx(probs[order].tolist(), rel=1e-4)


def test_the_true_class_bar_is_red_and_as_long_as_its_probability(tiny_data, tmp_path):
    """A model that ignores the image: fc8 = 0, biases (0, 1, 2), so every image gets the softmax of (0, 1, 2)
    and the true class's bar (the only red one) has that class's length, whichever class it is."""
    model = create_model("alexnet_small", 3).eval()
    fc8 = named_layers(model)[-1][1]
    with torch.no_grad():
        fc8.weight.zero_()
        fc8.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    clf = Classifier.from_module(model, CARD, "test", torch.device("cpu"))
    fig = predictions_figure(clf, tiny_data, tmp_path / "p.png", count=6, precision="fp32")
    picture = read_png(tmp_path / "p.png")
    red = np.array([int(TRUE_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    mask = ndimage.binary_closing(np.abs(picture.astype(int) - red).max(axis=2) <= 3, iterations=3)  # the text
    labels, _ = ndimage.label(mask)
    bars = []
    for box in ndimage.find_objects(labels):
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        if h * w > 100 and (labels[box] > 0).mean() > 0.9:  # filled rectangles, not red pixels of the photos
            bars.append((box[0].start * 2 // picture.shape[0], box[1].start, w))  # (panel row, x, width)
    bars.sort()
    true_p = [p[CARD.classes.index(r["true"])] for r in fig.details["records"]]
    assert len(bars) == 6
    widths = np.array([w for _, _, w in bars])
    unit = widths[np.argmax(true_p)] / max(true_p)  # pixels for probability 1, from the longest bar
    assert np.abs(widths - unit * np.array(true_p)).max() <= 4, (widths, true_p)  # a few pixels of edge


@pytest.fixture
def prepared_tiny(tiny_data, tmp_path):
    """tiny_data prepared at the card's resize size (40): its stored pixels are the folder loader's own."""
    from alexnet.data.prepare import PrepareOptions, prepare_dataset

    prepare_dataset(tiny_data, tmp_path / "prepared", PrepareOptions(size=40), workers=0, quiet=True)
    return tmp_path / "prepared"


def test_predictions_of_a_prepared_dataset_are_those_of_its_held_out_images(clf, small, tiny_data, prepared_tiny,
                                                                             tmp_path):  # fmt: skip
    fig = predictions_figure(clf, prepared_tiny, tmp_path / "p.png", count=6, precision="fp32")
    assert read_png(tmp_path / "p.png").shape[:2] == (fig.height, fig.width) == (2 * 440, 4 * 330)
    sources = sorted((tiny_data / "val").glob("*/*.png"))  # the val split's items, in the order prepared
    records = fig.details["records"]
    assert len(records) == 6 and {r["true"] for r in records} == {"red", "green", "blue"}
    for r in records:
        assert r["file"].startswith(f"{prepared_tiny / 'val'} image ")
        source = sources[int(r["file"].rsplit(" ", 1)[1])]
        assert r["true"] == source.parent.name
        probs = reference_probabilities(small, source)
        order = probs.argsort(descending=True).tolist()
        assert [name for name, _ in r["top"]] == [CARD.classes[i] for i in order]
        assert [p for _, p in r["top"]] == pytest.approx(probs[order].tolist(), rel=1e-4)


def test_neighbors_of_a_prepared_dataset_are_its_folders_neighbours(clf, tiny_data, prepared_tiny, tmp_path):
    kw = dict(count=3, k=4, workers=0, precision="fp32")
    on_folder = neighbors_figure(clf, tiny_data, tmp_path / "f.png", **kw)
    on_prepared = neighbors_figure(clf, prepared_tiny, tmp_path / "p.png", **kw)
    assert "3 queries x 4 nearest of 24 training images" in on_prepared.summary
    # the same pixels, the same order of the images: the same neighbours at the same distances
    assert on_prepared.details["indices"].tolist() == on_folder.details["indices"].tolist()
    torch.testing.assert_close(on_prepared.details["distances"], on_folder.details["distances"])


def test_the_command_draws_predictions_and_neighbors_of_a_prepared_dataset(checkpoint, prepared_tiny, tmp_path,
                                                                           capsys):  # fmt: skip
    for what in ("predictions", "neighbors"):
        argv = ["visualize", str(checkpoint), what, str(prepared_tiny), "--output", str(tmp_path / "out")]
        assert main([*argv, "--workers", "0", "--precision", "fp32"]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'out' / what}.png")


# --------------------------------------------------------------------------------------------- fc7 features
def hand_fc7(model, x: torch.Tensor) -> torch.Tensor:
    """fc6 and fc7 applied by hand: relu(W7 relu(W6 flatten(avgpool(features(x))) + b6) + b7)."""
    fc6, fc7 = (m for name, m in named_layers(model) if name in ("fc6", "fc7"))
    with torch.no_grad():
        h = torch.flatten(model.avgpool(model.features(x)), 1)
        return F.relu(F.linear(F.relu(F.linear(h, fc6.weight, fc6.bias)), fc7.weight, fc7.bias))


@pytest.mark.parametrize("name", ["alexnet_small", "alexnet", "alexnet2012"])
def test_fc7_model_stops_after_the_last_hidden_relu_and_shares_the_weights(name):
    torch.manual_seed(0)
    model = create_model(name, 5).eval()
    size = model.spec.card.input_size
    x = torch.randn(2, 3, size, size)
    cut = fc7_model(model)
    with torch.no_grad():
        got = cut(x)
    assert got.shape == (2, model.spec.fc[-1]) and (got >= 0).all()
    torch.testing.assert_close(got, hand_fc7(model, x), rtol=1e-5, atol=1e-5)
    assert cut.features is model.features and sum(p.numel() for p in cut.parameters()) < sum(
        p.numel() for p in model.parameters()
    )


def test_features_in_the_fast_mode_agree_with_the_hand_computed_ones(small):
    clf = Classifier.from_module(small, CARD, "test", torch.device("cpu"))
    x = torch.randn(8, 3, 32, 32)
    for mode in ("onednn-fp32", "onednn-bf16"):
        got = FeatureExtractor(clf, mode, example=x)(x)
        want = hand_fc7(small, x)
        cos = F.cosine_similarity(got, want, dim=1)
        assert cos.min() > (0.9999 if mode.endswith("fp32") else 0.99), (mode, cos)


def test_distances_and_nearest_against_numpy():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 16)), rng.normal(size=(30, 16))
    euclid = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    cosine = 1 - (q @ g.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(g, axis=1)[None]
    qt, gt = torch.from_numpy(q).float(), torch.from_numpy(g).float()
    np.testing.assert_allclose(distances(qt, gt).numpy(), euclid, rtol=1e-5)
    np.testing.assert_allclose(distances(qt, gt, "cosine").numpy(), cosine, atol=1e-6)
    idx, d = nearest(qt, gt, 3)
    assert idx.tolist() == np.argsort(euclid, axis=1)[:, :3].tolist()
    np.testing.assert_allclose(d.numpy(), np.sort(euclid, axis=1)[:, :3], rtol=1e-5)


def test_a_training_image_is_its_own_nearest_neighbour_at_distance_zero(clf, small, tiny_data):
    gallery, _ = labelled_samples(tiny_data / "train")
    queries = [gallery[3], gallery[17]]
    outside, _ = labelled_samples(tiny_data / "val")
    found = find_neighbors(clf, gallery, queries + outside[:1], k=4, workers=0, precision="fp32")
    idx, dist = found["indices"], found["distances"]
    assert idx[:, 0].tolist()[:2] == [3, 17] and dist[:2, 0].tolist() == [0.0, 0.0]
    assert (dist[2] > 0).all()  # a validation image is nobody's copy
    # The ranking against numpy on the hand-computed fc7 vectors of every training image.
    x = torch.stack([clf.preprocess(clf.decode(p)[None])[0] for p, _ in gallery + outside[:1]])
    feats = hand_fc7(small, x).double().numpy()
    want = np.sqrt(((feats[[3, 17, -1]][:, None] - feats[None, :-1]) ** 2).sum(-1))
    np.testing.assert_allclose(dist.numpy(), np.sort(want, axis=1)[:, :4], rtol=1e-3, atol=1e-4)
    assert found["timing"]["images"] == len(gallery)


def test_neighbors_figure_has_a_row_per_query(clf, tiny_data, tmp_path):
    fig = neighbors_figure(
        clf, tiny_data, tmp_path / "n.png", count=3, k=4, workers=0, metric="cosine", precision="fp32"
    )
    picture = read_png(tmp_path / "n.png")
    assert picture.shape[:2] == (fig.height, fig.width) == (round(100 * (2.0 * 3 + 0.5)), round(100 * 1.75 * 5))
    assert fig.details["indices"].shape == (3, 4) and "3 queries x 4 nearest of 24 training images" in fig.summary


# --------------------------------------------------------------------------------------------- the rest
def test_curves_of_a_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    rows = [
        {"epoch": e, "lr": 0.01 / e, "train_loss": 2.0 / e, "train_top1": 0.2 * e, "train_top5": 0.3 * e,
         "val_loss": 2.1 / e, "val_top1": 0.15 * e, "val_top5": 0.25 * e}
        for e in (1, 2, 3)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "checkpoints" / "best.safetensors").touch()
    fig = curves_figure(run / "checkpoints" / "best.safetensors", tmp_path / "c.png")  # a checkpoint's run
    assert read_png(tmp_path / "c.png").shape[:2] == (fig.height, fig.width) == (360, 1200)
    assert "3 epochs" in fig.summary and "val top-1 45.0%" in fig.summary
    with pytest.raises(UserError, match="not a run folder"):
        curves_figure(tmp_path, tmp_path / "c.png")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"epoch": "x", "train_loss": null}', "line 2: epoch is 'x', not a whole number"),
        ('{"epoch": 2, "train_loss": "2.5"}', "line 2: train_loss is '2.5', not a number"),
        ('{"epoch": 2, "val_top1": [0.5]}', "line 2: val_top1 is [0.5], not a number"),
    ],
)
def test_curves_of_a_metrics_file_with_a_value_that_is_no_number_is_one_line(line, words, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.3, "lr": 0.01}\n' + line + "\n")
    assert main(["visualize", str(run), "curves", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run / 'metrics.jsonl'} {words}" in err, err


def test_curves_draw_what_there_is_when_a_value_is_null(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": null, "val_loss": 2.0, "val_top1": 0.5}\n')
    fig = curves_figure(run, tmp_path / "c.png")
    assert fig.summary.endswith("1 epochs of " + f"{run}: loss, top-1/top-5 error, lr (val top-1 50.0%)")


def test_confused_classes_picks_the_classes_of_the_largest_confusions():
    m = np.diag(np.full(40, 10))
    m[3, 7], m[12, 3], m[30, 31], m[5, 6] = 9, 8, 7, 1
    shown, pairs = confused_classes(m, limit=5)
    assert shown == [3, 7, 12, 30, 31] and pairs[:3] == [(3, 7, 9), (12, 3, 8), (30, 31, 7)]
    assert confused_classes(m[:4, :4], limit=5)[0] == [0, 1, 2, 3]


def test_a_thousand_class_confusion_shows_only_the_most_confused_classes(tmp_path):
    from alexnet.insight.visualize import plot_confusion

    m = np.diag(np.full(1000, 20))
    m[10, 500], m[600, 10], m[999, 0] = 7, 5, 3
    fig = plot_confusion(m, [f"class {i}" for i in range(1000)], tmp_path / "m.png", limit=4)
    assert fig.details["shown"] == ["class 10", "class 500", "class 600", "class 999"]  # of the 3 largest
    assert "the 4 most confused of 1000 classes on 20015 images" in fig.summary
    assert read_png(tmp_path / "m.png").shape[:2] == (fig.height, fig.width)
    assert fig.width < 1400 and fig.height < 1000  # a few rows, not a thousand


def test_confusion_figure_on_a_folder(clf, tiny_data, tmp_path):
    from alexnet.insight.visualize import confusion_figure

    fig = confusion_figure(clf, tiny_data, tmp_path / "m.png", workers=0, precision="fp32")
    assert read_png(tmp_path / "m.png").shape[:2] == (fig.height, fig.width)
    assert fig.details["shown"] == ["blue", "green", "red"] and "on 9 images" in fig.summary


def test_activations_are_each_conv_layers_relu_output(clf, small, tiny_data, tmp_path):
    image = tiny_data / "val" / "red" / "000.png"
    x = clf.preprocess(clf.decode(image)[None])
    maps = conv_activations(small, x[0])
    assert [(n, tuple(a.shape)) for n, a in maps] == [
        ("conv1", (48, 32, 32)), ("conv2", (128, 15, 15)), ("conv3", (192, 7, 7)), ("conv4", (192, 7, 7)),
        ("conv5", (128, 7, 7)),
    ]  # fmt: skip
    conv1 = named_layers(small)[0][1]
    torch.testing.assert_close(maps[0][1], F.relu(F.conv2d(x, conv1.weight, conv1.bias, padding=2))[0])
    fig = activations_figure(clf, image, tmp_path / "a.png")
    assert read_png(tmp_path / "a.png").shape[:2] == (fig.height, fig.width) == (1240, 1800)


# --------------------------------------------------------------------------------------------- command line
@pytest.fixture
def checkpoint(small, tmp_path):
    save_checkpoint(tmp_path / "best.safetensors", small, CARD.to_json())
    return tmp_path / "best.safetensors"


def test_the_command_writes_one_png_per_call_and_says_so_in_one_line(checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "pictures"
    for what, extra in (("filters", []), ("predictions", [str(tiny_data)]), ("activations", [str(next(
            (tiny_data / "val" / "blue").iterdir()))])):  # fmt: skip
        assert main(["visualize", str(checkpoint), what, *extra, "--output", str(out), "--workers", "0"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"wrote {out / what}.png (") and "\n" not in line
        Image.open(out / f"{what}.png").verify()


def test_torchvision_format_weights_without_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(create_model("alexnet").state_dict(), tmp_path / "alexnet.pth")
    argv = ["visualize", "filters", "--model", "alexnet", "--weights", str(tmp_path / "alexnet.pth")]
    assert main([*argv, "--output", str(tmp_path)]) == 0
    assert "64 conv1 kernels 11x11 as a 8x8 grid" in capsys.readouterr().out


def test_command_errors_are_one_line(checkpoint, tmp_path, capsys, unwritable_dir):
    cases = [  # exit status 2: the command line alone is wrong; 1: a file or folder is
        ([str(checkpoint), "predictions"], "needs DATA", 2),
        ([str(checkpoint), "pictures"], "say what to draw", 2),
        ([str(checkpoint), "filters", "extra"], "takes no DATA", 2),
        ([str(checkpoint), "activations", str(tmp_path / "missing.png")], "cannot read image", 1),
        (["curves", str(tmp_path)], "not a run folder", 1),
        ([str(checkpoint), "filters", "--output", str(unwritable_dir)], "cannot write", 1),
        ([str(tmp_path / "missing.safetensors"), "filters"], "checkpoint not found", 1),
    ]
    for argv, words, code in cases:
        if "--output" not in argv:
            argv = [*argv, "--output", str(tmp_path / "out")]
        assert main(["visualize", *argv]) == code, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)


def test_load_classifier_reads_the_checkpoint_the_figures_use(checkpoint, small):
    clf = load_classifier(checkpoint, device="cpu")
    cut = fc7_model(clf.module)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(cut(x), hand_fc7(small, x))


def test_parse_request_splits_checkpoint_figure_and_data_and_says_what_is_missing():
    from alexnet.errors import FlagError
    from alexnet.insight.visualize import parse_request

    assert parse_request(["run/best.safetensors", "neighbors", "data"]) == ("run/best.safetensors", "neighbors", "data")
    assert parse_request(["filters"]) == (None, "filters", None)
    assert parse_request(["run", "curves"]) == ("run", "curves", None)
    for parts, message in [
        (["ckpt", "pictures"], "say what to draw"),
        (["ckpt", "predictions"], "needs DATA"),
        (["ckpt", "activations"], "needs IMAGE"),
        (["ckpt", "filters", "data"], "takes no DATA"),
        (["ckpt", "confusion", "a", "b"], "at most one DATA"),
    ]:
        with pytest.raises(FlagError, match=message):
            parse_request(parts)
