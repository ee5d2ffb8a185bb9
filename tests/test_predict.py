"""predict: the Predictor's test-time flip."""



import torch

from sppnet.models import build_model


RECIPE_FAST = ["--batch-size", "8", "--epochs", "1"]


def test_predictor_flip_averages_the_mirror_image():
    from sppnet.predict import Predictor

    torch.manual_seed(0)
    model = build_model("spp", num_classes=3).eval()
    x = torch.rand(1, 3, 40, 56) * 255
    plain = Predictor(model, ["a", "b", "c"], 40).probabilities(x)
    mirrored = Predictor(model, ["a", "b", "c"], 40).probabilities(x.flip(-1))
    both = Predictor(model, ["a", "b", "c"], 40, flip=True).probabilities(x)
    torch.testing.assert_close(both, 0.5 * (plain + mirrored))
    assert not torch.allclose(plain, mirrored)
