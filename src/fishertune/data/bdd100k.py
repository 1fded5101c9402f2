"""BDD100K semantic segmentation (the 10k subset, Yu et al. 2020).

Official layout (bdd100k_images_10k.zip + bdd100k_sem_seg_labels_trainval.zip)::

    root/images/10k/{train,val,test}/<name>.jpg
    root/labels/sem_seg/masks/{train,val}/<name>.png     train ids 0..18, 255 ignored

The older release (`root/seg/images/{split}/<name>.jpg`, `root/seg/labels/{split}/<name>_train_id.png`)
is read too.
"""

from __future__ import annotations

from pathlib import Path

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import train_id_label_map

NAME = "bdd100k"
EVAL_SCALE = (1280, 720)


def load(root: str, split: str = "val", **kw):
    """Load BDD100K 10k sem_seg from its official folder layout.

    Args:
        root (`str`): the `bdd100k/` folder (holding `images/10k` and `labels/sem_seg`, or `seg/`).
        split (`str`, *optional*, defaults to `"val"`): `"train"` or `"val"`.
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = Path(root)
    if (root / "seg").is_dir() and not (root / "images" / "10k").is_dir():
        img_dir = require_dir(root / "seg" / "images" / split, f"BDD100K split {split!r}", root / "seg" / "images")
        lbl_dir = require_dir(
            root / "seg" / "labels" / split, f"BDD100K labels of split {split!r}", root / "seg" / "labels"
        )
        label_suffix = "_train_id.png"
    else:
        img_dir = require_dir(root / "images" / "10k" / split, f"BDD100K split {split!r}", root / "images" / "10k")
        masks = root / "labels" / "sem_seg" / "masks"
        lbl_dir = require_dir(masks / split, f"BDD100K sem_seg masks of split {split!r}", masks)
        label_suffix = ".png"
    images = list_files(img_dir, ".jpg", recursive=False)
    pairs = pair_by_suffix(images, img_dir, lbl_dir, ".jpg", label_suffix)
    return build_dataset(pairs, name=NAME, split=split, label_map=train_id_label_map(), **kw)
