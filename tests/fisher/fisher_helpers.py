"""Small models and data for the estimator tests."""

import torch
import transformers as T
from torch import nn


class SoftmaxRegression(nn.Module):
    """logits = W x: the true Fisher of W is E_x[x_j^2 p_c (1 - p_c)] in closed form."""

    def __init__(self, d: int = 3, c: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(d, c, bias=False)
        nn.init.normal_(self.fc.weight, std=0.7)

    def forward(self, pixel_values):
        return self.fc(pixel_values)


class PixelClassifier(nn.Module):
    """A per-pixel linear segmenter exposing `semantic_logits` like the package's models."""

    def __init__(self, c: int = 3, k: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(c, k)

    def forward(self, pixel_values):
        return self.proj(pixel_values.permute(0, 2, 3, 1))  # [B, H, W, K]

    def semantic_logits(self, outputs, size):
        assert tuple(outputs.shape[1:3]) == tuple(size)
        return outputs.permute(0, 3, 1, 2)


def tiny_dinov2(num_labels: int = 3, layers: int = 2, registers: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    cfg = T.Dinov2Config(
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        num_labels=num_labels,
    )
    if registers:
        cfg = T.Dinov2WithRegistersConfig(
            hidden_size=16,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=16,
            patch_size=8,
            num_labels=num_labels,
            num_register_tokens=registers,
        )
        return T.Dinov2WithRegistersForImageClassification(cfg).eval()
    return T.Dinov2ForImageClassification(cfg).eval()


def image_batches(n: int, b: int = 4, num_labels: int = 3, size: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(b, 3, size, size, generator=g),
            "labels": torch.randint(0, num_labels, (b,), generator=g),
        }
        for _ in range(n)
    ]
