import pytest
import torch
import transformers as T


def tiny_vit(num_layers: int = 3, seed: int = 0, hidden: int = 32, num_labels: int = 5):
    torch.manual_seed(seed)
    cfg = T.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=32,
        patch_size=8,
        num_labels=num_labels,
    )
    return T.ViTForImageClassification(cfg).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
