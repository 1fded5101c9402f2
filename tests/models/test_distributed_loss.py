"""Mask and dice losses must have the same scale on 1 and N processes (transformers 5.23 divides twice)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers.models.mask2former import modeling_mask2former

from fishertune.models import PyramidMask2Former
from fishertune.models.mask_classification import ddp_num_masks

from .conftest import TINY_M2F, tiny_config


def _fake_world(monkeypatch, world_size):
    """Pretend to be one of `world_size` ranks that all hold the same batch."""
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world_size)

    def all_reduce(tensor, op=None, group=None, async_op=False):
        tensor.mul_(world_size)  # the sum over identical ranks

    monkeypatch.setattr(dist, "all_reduce", all_reduce)


def test_loss_scale_independent_of_world_size(monkeypatch, images, labels):
    torch.manual_seed(0)
    model = PyramidMask2Former.from_backbone(tiny_config("vit"), num_labels=5, **TINY_M2F).train()
    torch.manual_seed(1)
    single = model(pixel_values=images, labels=labels).loss_dict
    _fake_world(monkeypatch, 4)
    torch.manual_seed(1)
    multi = model(pixel_values=images, labels=labels).loss_dict
    for key in single:
        assert torch.allclose(single[key], multi[key]), key


def test_upstream_loss_has_the_trap(monkeypatch):
    """Documents why the override exists: HF's own count shrinks with the number of processes."""

    class FakeState:
        _shared_state = {"initialized": True}
        num_processes = 4

    monkeypatch.setattr(modeling_mask2former, "PartialState", FakeState, raising=False)
    monkeypatch.setattr(modeling_mask2former, "reduce", lambda t: t, raising=False)  # mean over identical ranks
    monkeypatch.setattr(modeling_mask2former, "is_accelerate_available", lambda: True)
    classes = [torch.tensor([0, 1, 2]), torch.tensor([1, 4, 0, 3, 2])]
    upstream = modeling_mask2former.Mask2FormerLoss.get_num_masks(None, classes, torch.device("cpu"))
    assert upstream.item() == 2.0  # 8 / 4: mask and dice losses would be 4x too large
    _fake_world(monkeypatch, 4)
    assert ddp_num_masks(classes, torch.device("cpu")).item() == 8.0


def _worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        counts = [3, 5]  # masks on this rank
        classes = [torch.arange(counts[rank])]
        value = ddp_num_masks(classes, torch.device("cpu")).item()
        with open(os.path.join(out_dir, f"rank{rank}"), "w") as f:
            f.write(str(value))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_real_gloo_group_averages_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported modules (spawn would re-import transformers: ~30 s)
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    results = {r: float((tmp_path / f"rank{r}").read_text()) for r in range(2)}
    assert results == {0: 4.0, 1: 4.0}  # (3 + 5) / 2 on both ranks
