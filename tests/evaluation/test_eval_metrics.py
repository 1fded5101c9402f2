import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fishertune.evaluation import SegmentationMetric, confusion_matrix

TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
# Hand-computed: rows = target, columns = prediction; the ignored pixel is not counted.
CM = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_hand_computed_confusion_and_metrics():
    assert confusion_matrix(PRED, TARGET, 3).tolist() == CM
    m = SegmentationMetric(3, class_names=["a", "b", "c"])
    m.update(PRED, TARGET)
    out = m.compute()
    assert out["per_class_iou"] == pytest.approx({"a": 1 / 2, "b": 1 / 3, "c": 1 / 2})
    assert out["mIoU"] == pytest.approx(4 / 9) and out["aAcc"] == pytest.approx(3 / 5)
    assert out["per_class_acc"] == pytest.approx({"a": 1 / 2, "b": 1 / 2, "c": 1.0}) and out["mAcc"] == pytest.approx(
        2 / 3
    )
    assert out["num_pixels"] == 5 and out["confusion_matrix"].tolist() == CM


def test_absent_class_is_nan_and_left_out_of_the_mean():
    m = SegmentationMetric(4)
    m.update(PRED, TARGET)
    out = m.compute()
    assert math.isnan(out["per_class_iou"]["3"]) and out["mIoU"] == pytest.approx(4 / 9)


def test_streaming_logits_and_reset():
    rng = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 16, 20), generator=rng)
    target[:, :2] = 255
    logits = torch.randn(4, 5, 16, 20, generator=rng)
    whole = SegmentationMetric(5)
    whole.update(logits.argmax(1), target)
    parts = SegmentationMetric(5)
    parts.update(logits[:2], target[:2])  # logits are arg-maxed
    parts.update(logits[2], target[2])  # unbatched
    parts.update(logits[3:], target[3:])
    assert torch.equal(parts.confusion, whole.confusion)
    small = logits[:, :, ::2, ::2]  # logits of another size are resized to the labels first
    resized = SegmentationMetric(5)
    resized.update(small, target)
    expected = F.interpolate(small, size=(16, 20), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(resized.confusion, confusion_matrix(expected, target, 5))
    parts.reset()
    assert parts.confusion.sum() == 0


def test_bad_targets_raise():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match=r"ids \[7\]"):
        m.update(PRED, torch.tensor([[[0, 7, 1], [1, 2, 255]]]))
    with pytest.raises(ValueError, match="shape"):
        m.update(PRED, TARGET[:, :1])
    with pytest.raises(ValueError, match="logits must be"):
        m.update(torch.randn(1, 4, 2, 3), TARGET)


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = SegmentationMetric(3)
    if rank == 0:
        m.update(PRED, TARGET)
    else:
        m.update(TARGET.clamp(max=2), TARGET)  # perfect on the non-ignored pixels
    np.save(os.path.join(out_dir, f"{rank}.npy"), m.compute()["confusion_matrix"])
    dist.destroy_process_group()


def test_distributed_all_reduce(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: no re-import of torch in the children (spawn costs ~15 s per child on a cold cache).
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    expected = np.array(CM) + np.diag([2, 2, 1])
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"{rank}.npy"), expected)
