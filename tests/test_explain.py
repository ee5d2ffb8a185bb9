"""explain: Grad-CAM maps and pyramid shares that point at the evidence, at any size, padded or not."""

import json

import numpy as np
import pytest
import torch

from sppnet.cli import main
from sppnet.explain import evidence_maps, explain, explain_top
from sppnet.models import build_model
from sppnet.predict import Predictor

from conftest import make_dataset, write_image

COLOURS = np.array([(230, 30, 30), (30, 200, 40), (40, 60, 230)], dtype=np.float32)
PATCH = 16


SHORT = 64  # every image's shorter side: the predictor's size, so it sees the images as made


def random_shape(rng) -> tuple[int, int]:
    """Mixed aspect ratios: the shorter side SHORT, the longer one up to 200 px, either way round."""
    long = int(rng.integers(SHORT, 201))
    return (SHORT, long) if rng.random() < 0.5 else (long, SHORT)


def synthetic(rng, n: int, size=None):
    """Dark grey noise of a random shape, a PATCH x PATCH patch of the class's colour at a random
    spot. Returns (images (H, W, 3) uint8, labels, patch corners (x, y))."""
    images, labels, corners = [], [], []
    for _ in range(n):
        h, w = size or random_shape(rng)
        grey = rng.integers(0, 128, (h, w, 1)).repeat(3, axis=2).astype(np.float32)
        label = int(rng.integers(0, len(COLOURS)))
        x, y = int(rng.integers(0, w - PATCH + 1)), int(rng.integers(0, h - PATCH + 1))
        grey[y:y + PATCH, x:x + PATCH] = COLOURS[label] + rng.normal(0, 8, (PATCH, PATCH, 3))
        images.append(np.clip(grey, 0, 255).astype(np.uint8))
        labels.append(label)
        corners.append((x, y))
    return images, labels, corners


@pytest.fixture(scope="module")
def trained():
    """A tiny SPP model trained for a few seconds on the synthetic task."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("spp", num_classes=3, widths=(8, 16, 16), hidden=32, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(100):
        images, labels, _ = synthetic(rng, 16, random_shape(rng))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return Predictor(model, ["red", "green", "blue"], train_size=SHORT)


def _peak_in_patch(heatmap, corner, slack=4) -> bool:
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cx, cy = corner
    return cx - slack <= x < cx + PATCH + slack and cy - slack <= y < cy + PATCH + slack


def _patch_bins(corner, shape, stride=8, level=4) -> tuple[set, set]:
    """The level's bins (rows, columns) whose span on the feature map holds part of the patch
    (bin i spans [floor(i * n / level), ceil((i + 1) * n / level)) of a map n cells long)."""
    h, w = shape[0] // stride, shape[1] // stride

    def holding(first, last, length):
        return {i for i in range(level) if (i * length) // level <= last and first < -(-((i + 1) * length) // level)}

    x, y = corner
    return holding(y // stride, (y + PATCH - 1) // stride, h), holding(x // stride, (x + PATCH - 1) // stride, w)


def _localisation(trained, images, labels, corners, heat_of=None):
    """Shares of the correctly classified images whose map peak lies in the patch, and whose
    largest level-4 share is a bin holding the patch."""
    hits = bins = right = 0
    for image, label, corner in zip(images, labels, corners):
        explanation = explain_top(trained, image)[0]
        if trained.class_names.index(explanation.prediction.class_name) != label:
            continue
        right += 1
        heat = explanation.heatmap if heat_of is None else heat_of(image)
        hits += _peak_in_patch(heat, corner)
        shares = np.array(explanation.pyramid[4]) if heat_of is None else _centre_shares()
        rows, cols = _patch_bins(corner, image.shape[:2])
        r, c = np.unravel_index(int(np.argmax(shares)), shares.shape)
        bins += r in rows and c in cols
    return right / len(images), hits / max(right, 1), bins / max(right, 1)


def _centre_blob(image) -> np.ndarray:
    """A map that ignores the image: a blob in its centre."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))


def _centre_shares() -> np.ndarray:
    shares = np.zeros((4, 4))
    shares[1:3, 1:3] = 0.25
    shares[1, 1] += 1e-3
    return shares


def test_maps_point_at_the_evidence_and_an_image_blind_map_does_not(trained):
    images, labels, corners = synthetic(np.random.default_rng(1), 60)
    accuracy, peak_hits, bin_hits = _localisation(trained, images, labels, corners)
    assert accuracy >= 0.95
    assert peak_hits >= 0.90, peak_hits
    assert bin_hits >= 0.80, bin_hits
    # The same criteria reject a map that ignores the image.
    _, blob_hits, blob_bins = _localisation(trained, images, labels, corners, heat_of=_centre_blob)
    assert blob_hits < 0.5 and blob_bins < 0.5, (blob_hits, blob_bins)


def test_a_padded_batch_gives_each_image_the_map_it_gets_alone(trained):
    images, labels, _ = synthetic(np.random.default_rng(2), 3)
    xs = [torch.from_numpy(im).permute(2, 0, 1).float() for im in images]
    height, width = max(x.shape[1] for x in xs), max(x.shape[2] for x in xs)
    batch = torch.zeros(3, 3, height, width)
    for i, x in enumerate(xs):
        batch[i, :, : x.shape[1], : x.shape[2]] = x
    sizes = torch.tensor([list(x.shape[1:]) for x in xs])
    target = torch.tensor(labels)
    maps, pyramid = evidence_maps(trained.model, batch, sizes, target)
    for i, x in enumerate(xs):
        alone, alone_pyramid = evidence_maps(trained.model, x[None], None, target[i:i + 1])
        assert maps[i].shape == x.shape[1:]
        torch.testing.assert_close(maps[i], alone[0], atol=1e-5, rtol=0)
        for level in pyramid:
            torch.testing.assert_close(pyramid[level][i], alone_pyramid[level][0], atol=1e-5, rtol=0)


def test_target_changes_the_map_and_nothing_leaks_into_the_model(trained):
    image = synthetic(np.random.default_rng(3), 1)[0][0]
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    trained.model.train()
    predicted = explain(trained, image)
    other = next(c for c in trained.class_names if c != predicted.class_name)
    targeted = explain(trained, image, target=other)
    assert trained.model.training  # the mode is restored
    trained.model.eval()
    assert targeted.class_name == other and not np.allclose(targeted.heatmap, predicted.heatmap)
    assert all(p.grad is None for p in trained.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in trained.model.state_dict().items())
    assert predicted.heatmap.shape == image.shape[:2] and 0 <= predicted.heatmap.min() <= predicted.heatmap.max() <= 1
    assert all(abs(sum(map(sum, shares)) - 1) < 1e-5 for shares in predicted.pyramid.values())
    with pytest.raises(ValueError, match="--class 'purple' is not one of"):
        explain(trained, image, target="purple")


@pytest.mark.parametrize("name,kwargs,levels", [("gap", {}, []), ("flatten", {"input_size": 64}, []),
                                                ("spp", {"levels": (1, 3)}, [1, 3])])
def test_every_head_is_explained(name, kwargs, levels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, widths=(4, 8, 8), hidden=8, **kwargs).eval()
    predictor = Predictor(model, ["a", "b"], 64)
    image = np.random.default_rng(0).integers(0, 256, (64, 64 if name == "flatten" else 97, 3), dtype=np.uint8)
    explanation = explain(predictor, image)
    assert explanation.heatmap.shape == image.shape[:2]
    assert sorted(explanation.pyramid) == levels


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 6, "jade": 6, "sky": 6}, size=(48, 36))
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--size", "32", "--batch-size", "8"]) == 0
    return out


def test_cli_writes_a_picture_per_image_and_one_line_per_bad_file(run, tmp_path, capsys):
    good = write_image(tmp_path / "in" / "a.png", (70, 40))
    write_image(tmp_path / "in" / "b.jpg", (40, 90))
    (tmp_path / "in" / "c.png").write_bytes(b"not an image")
    code = main(["explain", str(run), str(tmp_path / "in"), "--out", str(tmp_path / "maps"), "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("\n") == 1 and "c.png" in captured.err
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["a.explain.png", "b.explain.png"]
    assert (tmp_path / "maps" / "a.explain.png").read_bytes()[:4] == b"\x89PNG"
    assert "a.explain.png" in captured.out
    assert main(["explain", str(run), str(good), "--out", str(tmp_path / "j"), "--json", "--class", "sky"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["explanations"][0]["class"] == "sky" and set(answer["explanations"][0]["pyramid"]) == {"1", "2", "4"}
    assert answer["picture"].endswith("a.explain.png")


def test_cli_refuses_an_unknown_class(run, tmp_path, capsys):
    image = write_image(tmp_path / "a.png", (40, 40))
    assert main(["explain", str(run), str(image), "--class", "purple", "--out", str(tmp_path / "m")]) == 2
    assert "--class 'purple' is not one of the run's classes" in capsys.readouterr().err


def test_top_k_explains_each_class_as_a_single_target_would(trained):
    image = synthetic(np.random.default_rng(5), 1)[0][0]
    top = explain_top(trained, image, k=3)  # one pass through the conv layers for all three
    assert [e.probability for e in top] == sorted((e.probability for e in top), reverse=True)
    for explanation in top:
        alone = explain_top(trained, image, target=explanation.class_name)[0]
        np.testing.assert_allclose(explanation.model_heatmap, alone.model_heatmap, atol=1e-6)
        for level, shares in explanation.pyramid.items():
            np.testing.assert_allclose(shares, alone.pyramid[level], atol=1e-6)
