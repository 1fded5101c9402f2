import pytest
import torch


@pytest.fixture
def softmax_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return x, y
