import pytest
import torch

from fishertune.evaluation import slide_inference, whole_inference


class Pointwise(torch.nn.Module):
    """Per-pixel linear model: the same logits whatever the window, so slide == whole."""

    def __init__(self, num_classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        self.shapes = []

    def forward(self, pixel_values):
        self.shapes.append(tuple(pixel_values.shape[-2:]))
        return {"logits": self.conv(pixel_values)}

    def semantic_logits(self, outputs, size):
        assert tuple(outputs["logits"].shape[-2:]) == tuple(size)
        return outputs["logits"]


class LocalRow(Pointwise):
    """Logit 0 = the row index inside the window: exposes where windows are and how they average."""

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        return {"logits": torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(b, 2, h, w).clone()}


def test_slide_equals_whole_for_a_pointwise_model():
    model = Pointwise()
    x = torch.randn(2, 3, 37, 53)
    torch.testing.assert_close(slide_inference(model, x, 4, crop_size=16, stride=11), whole_inference(model, x))
    torch.testing.assert_close(
        slide_inference(model, x, 4, crop_size=(20, 16), stride=(7, 16)), whole_inference(model, x)
    )


def test_window_grid_and_averaging_by_hand():
    # H=6, crop 3, stride 2 (mmseg's grid: (6 - 3 + 2 - 1) // 2 + 1 = 3 rows of windows): windows
    # cover rows [0,3), [2,5) and [3,6) (the last one shifted back to end at the border).
    # Local row ids averaged: row2 (2 + 0)/2, row3 (1 + 0)/2, row4 (2 + 1)/2.
    out = slide_inference(LocalRow(), torch.zeros(1, 3, 6, 4), 2, crop_size=(3, 4), stride=(2, 4))
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([0.0, 1.0, 1.0, 0.5, 1.5, 2.0]))
    # H=5: (5 - 3 + 1) // 2 + 1 = 2 windows, [0,3) and [2,5).
    out = slide_inference(LocalRow(), torch.zeros(1, 3, 5, 4), 2, crop_size=(3, 4), stride=(2, 4))
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0]))
    probs = slide_inference(Pointwise(), torch.randn(1, 3, 9, 9), 4, crop_size=5, stride=3, average="probs")
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 9, 9))


def test_small_image_is_padded_to_the_window():
    model = Pointwise()
    x = torch.randn(1, 3, 6, 10)
    out = slide_inference(model, x, 4, crop_size=8, stride=5)
    assert out.shape == (1, 4, 6, 10) and set(model.shapes) == {(8, 8)}
    torch.testing.assert_close(out, whole_inference(model, x))
    with pytest.raises(ValueError, match="average"):
        slide_inference(model, x, 4, crop_size=8, stride=5, average="max")
