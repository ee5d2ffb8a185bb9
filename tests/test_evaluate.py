"""evaluate: mirror views and the test-time flip."""



import pytest
import torch

from sppnet import data as data_mod
from sppnet.inference import mirror, predict_batches
from sppnet.models import build_model
from sppnet.sizing import Native

from conftest import make_dataset

RECIPE_FAST = ["--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def recipe_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 14, "jade": 12, "sky": 10}, size=(48, 36), vary=True)


def test_mirror_flips_each_padded_image_within_its_width():
    images = torch.arange(2 * 1 * 2 * 5, dtype=torch.float32).view(2, 1, 2, 5)
    sizes = torch.tensor([[2, 3], [2, 5]])
    images[0, :, :, 3:] = 0
    out = mirror(images, sizes)
    torch.testing.assert_close(out[0, :, :, :3], images[0, :, :, :3].flip(-1))
    assert (out[0, :, :, 3:] == 0).all()
    torch.testing.assert_close(out[1], images[1].flip(-1))
    torch.testing.assert_close(mirror(images), images.flip(-1))


def test_flip_view_averages_the_two_softmaxes(recipe_dataset):
    model = build_model("spp", num_classes=3).eval()
    store, _, _ = data_mod.ImageStore.from_dataset(data_mod.scan(recipe_dataset).subset(range(6)), Native(32).store_size)
    plain, labels, _ = predict_batches(model, Native(32).batches(store, 4, shuffle=False), torch.device("cpu"))
    both, _, _ = predict_batches(model, Native(32).batches(store, 4, shuffle=False), torch.device("cpu"), flip=True)
    assert both.shape == plain.shape and not torch.allclose(both, plain)
    torch.testing.assert_close(both.sum(1), torch.ones(len(labels)))
