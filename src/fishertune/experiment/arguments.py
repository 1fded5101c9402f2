"""ExperimentArguments: what a recipe run is about (model, data, evaluation, output), beside the training args.

Everything about *how* to train (criterion, phases, learning rates, steps) lives in
[`~fishertune.training.FisherTuneTrainingArguments`]; this dataclass holds the rest, so that one
YAML file (keys of both dataclasses) describes a whole experiment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from ..backbones.eva02 import TIMM_PREFIX
from ..outputs import PREDICT_OUTPUTS

#: The `backbone` prefix of a built-in backbone (`"config:<name>"`); `TIMM_PREFIX` (`"timm:"`) is timm's EVA02.
BUILTIN_PREFIX = "config:"
#: Built-in small backbones (`backbone: "config:<name>"`), randomly initialised: the offline demo and tests.
#: DINOv2 layout (q/k/v + FFN targets the tuner presets know); patch 8 so that 64x96 images give a 8x12 grid.
#: DINOv2 sizes its FFN by `mlp_ratio`; `intermediate_size` here is turned into it (`build.dinov2_config`).
BUILTIN_BACKBONES = {
    "vit-small-demo": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                           image_size=64, patch_size=8, layerscale_value=1.0),
    "vit-micro-test": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=32, patch_size=8, layerscale_value=1.0),
}  # fmt: skip
HEADS = ("light", "mask2former", "eomt")
#: The fields that change the model or the data a run trains on: saved with each checkpoint and compared on resume
#: (`run_settings`; `--allow_changed_settings` lets one differ). `data_root` is not among them: a dataset may move.
RUN_SETTINGS = (
    "backbone",
    "head",
    "taps",
    "num_queries",
    "dataset",
    "train_split",
    "label_space",
    "crop_size",
    "scale_range",
    "num_scales",
    "cat_max_ratio",
    "flip_prob",
    "photometric",
    "keyed_augmentation",
    "num_synthetic_samples",
    "synthetic_size",
    "max_train_samples",
)
EVAL_MODES = ("whole", "slide")


def parse_target(spec: str) -> tuple[str, str]:
    """`"camvid:target_dusk"` -> `("camvid", "target_dusk")`; `"/data/mine:validation"` -> `("/data/mine",
    "validation")` (your own data: a folder or a Hub id, split after the last colon)."""
    name, sep, split = spec.rpartition(":")
    if not sep or not name or not split:
        raise ValueError(f"A dataset split must read 'dataset:split' (e.g. 'camvid:target_dusk'), got {spec!r}.")
    name = name.strip()
    return (name.lower() if name.lower() in _builtin_names() else name), split.strip()


def _builtin_names() -> tuple[str, ...]:
    from ..data import DATASET_NAMES

    return DATASET_NAMES


def check_dataset_name(name: str, what: str) -> None:
    """A built-in dataset name, an existing folder or a Hub id (`owner/name`); else an error listing the choices."""
    if name.lower() in _builtin_names() or os.path.isdir(os.path.expanduser(name)):
        return
    if "/" in name and not name.startswith((".", "/", "~")):
        return  # a Hub dataset id: its existence is checked when it is loaded
    raise ValueError(
        f"{what}: unknown dataset {name!r}, neither one of {_builtin_names()}, nor an existing folder "
        "(images/ + masks/ + id2label.json, or a save_to_disk dataset), nor a Hub dataset id ('owner/name')."
    )


def label_mapping_dict(pairs: list[str]) -> dict[str, str]:
    """`["tree=vegetation", ...]` -> `{"tree": "vegetation", ...}` (the `label_mapping` option)."""
    out = {}
    for pair in pairs or []:
        name, sep, target = pair.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(
                f"label_mapping entries read 'target class=model class' (e.g. tree=vegetation), got {pair!r}."
            )
        out[name.strip()] = target.strip()
    return out


@dataclass
class ExperimentArguments:
    """Model, data, evaluation and output options of a `recipes/train.py` run.

    Args:
        backbone (`str`): Hub id, local folder, `"config:<name>"` for a built-in randomly
            initialised ViT (`BUILTIN_BACKBONES`: `vit-small-demo`, `vit-micro-test`), or
            `"timm:<eva02 name>"` for timm's pretrained EVA02 (needs `timm`), e.g.
            `"timm:eva02_large_patch14_224.mim_m38m"`.
        head (`str`, defaults to `"light"`): `"light"`, `"mask2former"` (the paper's) or `"eomt"`.
        taps (`list[int]`, *optional*): 1-based blocks feeding the head (default: evenly spaced).
        dataset (`str`, defaults to `"synthetic"`): source dataset name (`fishertune.data.DATASET_NAMES`), or
            your own data (as `dataset_name`).
        dataset_name (`str`, *optional*): your own source data (`fishertune.data.load_custom`): a Hub dataset id,
            a `save_to_disk` folder, or a folder of `images/` + `masks/` (matching stems) + `id2label.json`;
            replaces `dataset`. dataset_config_name (`str`, *optional*): the Hub dataset's configuration.
        image_column_name / label_column_name (`str`, defaults to `image` / `label`): columns of your dataset.
        do_reduce_labels (`bool`): your labels' 0 is a background to ignore (0 -> 255, the other ids minus 1).
        train_val_split (`float`, *optional*): share of `train` held out as the `validation` split when your
            dataset has none (a fixed seed: the same split in every run).
        data_root (`str`, *optional*): source dataset folder (unused for `synthetic` and your own data).
        train_split / val_split (`str`): source splits (for `synthetic`: domains; your own data: `train` by default).
        targets (`list[str]`): target domains as `dataset:split`; each needs its root in `target_roots`
            unless it is the source dataset (then `data_root`) or `synthetic`.
        target_roots (`list[str]`): `dataset=folder` pairs, e.g. `cityscapes=/data/cityscapes`.
        label_space (`str`, *optional*): CamVid label space (`camvid` or `cityscapes`).
        label_mapping (`list[str]`, *optional*): evaluate targets whose classes differ from the model's, mapping
            them by name: `target class=model class` pairs (e.g. `tree=vegetation`); same names map to themselves,
            the rest are ignored. Without it such a target is refused, naming both class lists.
        crop_size (`list[int]`): training crop (h, w). scale_range (`list[int]`): short-edge range.
        num_scales (`int`, *optional*, defaults to `16`): the short edge is one of `num_scales` evenly spaced
            values of `scale_range` (Rein's); `None` (YAML `null`): any integer in the range.
        cat_max_ratio (`float`, defaults to `0.75`): re-draw a crop (up to 10 times) while one class fills
            this share of it or more; `1.0` disables. flip_prob (`float`, defaults to `0.5`): horizontal flip.
        keyed_augmentation (`bool`, defaults to `True`): every random draw keyed by (seed, epoch, sample), so
            a resumed run augments as the uninterrupted one. `False` draws from torch's RNG per call (a
            `datasets` `set_transform`, seeded by the trainer): a resumed run then augments differently; it
            reproduces runs made that way.
        bad_file_policy (`str`): a training file that fails to decode mid-run (a truncated JPEG passes the
            load-time header check): `"error"` stops naming it, after saving a checkpoint; `"skip"` warns
            with the path and a running count and uses the next readable sample in its place.
        eval_mode (`str`): `whole` or `slide` inference. eval_crop_size / eval_stride: sliding window.
        eval_scale (`list[int]`, *optional*): (long, short) keep-ratio evaluation size; default per dataset.
        num_synthetic_samples / num_synthetic_eval_samples / synthetic_size: the synthetic data.
        max_train_samples / max_eval_samples (`int`, *optional*): truncate datasets (quick runs).
        merge (`bool`): save the merged plain model instead of the adapter.
        quick (`bool`): CI smoke run: a handful of steps and samples (overrides the step counts).
        overwrite_output_dir (`bool`): a new run may delete the files of an earlier run in `output_dir` (those
            its manifest lists and its `checkpoint-*` folders; otherwise refused, and `--resume_from_checkpoint
            last` continues that run). Files no run wrote there are never deleted: such a folder is refused.
        card_title (`str`, *optional*): model card title. (`hub_model_id`, `push_to_hub` are training arguments.)
    """

    backbone: str = field(
        default=BUILTIN_PREFIX + "vit-small-demo",
        metadata={
            "help": "Hub id, local folder, 'config:<name>' for a built-in random-init ViT (vit-small-demo, "
            "vit-micro-test), or 'timm:<eva02 name>' for timm's pretrained EVA02."
        },
    )
    head: str = field(default="light", metadata={"help": "Segmentation head.", "choices": list(HEADS)})
    taps: Optional[list[int]] = field(default=None, metadata={"help": "1-based blocks feeding the head."})
    num_queries: Optional[int] = field(
        default=None, metadata={"help": "Mask2Former/EoMT queries (None: model default)."}
    )
    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "Source dataset (gtav, cityscapes, camvid, synthetic, ...), or your own data as --dataset_name."
        },
    )
    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Your own source data (replaces --dataset): a Hub dataset id, a save_to_disk folder, or a folder "
            "of images/ + masks/ (same stems) + id2label.json."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    image_column_name: str = field(default="image", metadata={"help": "Your dataset's image column."})
    label_column_name: str = field(default="label", metadata={"help": "Your dataset's segmentation-map column."})
    do_reduce_labels: bool = field(
        default=False,
        metadata={"help": "Your labels' 0 is a background to ignore: 0 -> 255, the other ids minus 1 (e.g. ADE20k)."},
    )
    train_val_split: Optional[float] = field(
        default=None,
        metadata={
            "help": "Share of your dataset's train split held out as 'validation' when it has none (fixed seed)."
        },
    )
    data_root: Optional[str] = field(default=None, metadata={"help": "Source dataset folder (unused for synthetic)."})
    train_split: str = field(default="source", metadata={"help": "Source training split (synthetic: a domain)."})
    val_split: Optional[str] = field(default=None, metadata={"help": "Source validation split (model selection only)."})
    targets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Unseen target domains as dataset:split, e.g. cityscapes:val camvid:target_dusk synthetic:fog."
        },
    )
    target_roots: list[str] = field(
        default_factory=list,
        metadata={"help": "dataset=folder for target datasets other than the source one, e.g. bdd100k=/data/bdd100k."},
    )
    label_space: Optional[str] = field(default=None, metadata={"help": "CamVid: 'camvid' (11) or 'cityscapes' (19)."})
    label_mapping: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Score targets whose classes differ from the model's: 'target class=model class' pairs (e.g. "
            "tree=vegetation); equal names map to themselves, other classes are ignored. Without it such a "
            "target is refused."
        },
    )
    crop_size: list[int] = field(default_factory=lambda: [512, 512], metadata={"help": "Training crop (h w)."})
    scale_range: list[int] = field(default_factory=lambda: [256, 1024], metadata={"help": "Training short-edge range."})
    photometric: bool = field(default=True, metadata={"help": "mmseg photometric distortion in training."})
    num_scales: Optional[int] = field(
        default=16,
        metadata={
            "help": "Training short edges: num_scales evenly spaced values of scale_range (16: Rein's 256, 307, ..., "
            "1024); None (YAML null): any integer in scale_range."
        },
    )
    cat_max_ratio: float = field(
        default=0.75,
        metadata={
            "help": "Re-draw a training crop (up to 10 times) while one class fills this share of it or more "
            "(mmseg's RandomCrop); 1.0 disables."
        },
    )
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability in training."})
    keyed_augmentation: bool = field(
        default=True,
        metadata={
            "help": "Key every augmentation draw by (seed, epoch, sample index), so that a resumed run augments as "
            "the uninterrupted one. False draws from torch's RNG at each call (a datasets set_transform, "
            "seeded by the trainer): a resumed run then augments differently. False reproduces runs made "
            "that way; it needs bad_file_policy='error'."
        },
    )
    bad_file_policy: str = field(
        default="error",
        metadata={
            "help": "A training image that fails to decode mid-run: 'error' stops naming the file (after saving a "
            "checkpoint to resume from), 'skip' warns with the path and a count and uses the next sample.",
            "choices": ["error", "skip"],
        },
    )
    eval_mode: str = field(
        default="slide", metadata={"help": "Inference: whole or slide.", "choices": list(EVAL_MODES)}
    )
    eval_crop_size: int = field(default=512, metadata={"help": "Sliding-window size."})
    eval_stride: int = field(default=341, metadata={"help": "Sliding-window stride."})
    eval_scale: Optional[list[int]] = field(
        default=None,
        metadata={"help": "(long short) keep-ratio evaluation size; default: the dataset's (Rein's protocol)."},
    )
    num_synthetic_samples: int = field(default=256, metadata={"help": "Synthetic training images."})
    num_synthetic_eval_samples: int = field(default=64, metadata={"help": "Synthetic images per eval domain."})
    synthetic_size: list[int] = field(default_factory=lambda: [64, 96], metadata={"help": "Synthetic image (h w)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate every evaluation set."})
    merge: bool = field(default=False, metadata={"help": "Save the merged model instead of the adapter."})
    card_title: Optional[str] = field(default=None, metadata={"help": "Model card title (default from the run)."})
    quick: bool = field(default=False, metadata={"help": "CI smoke run: a few steps and samples."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an output_dir that holds an earlier run's files and checkpoints, deleting them "
            "first (without it that is an error; --resume_from_checkpoint last continues that run instead). "
            "Files no run wrote there are never deleted: such a folder is refused."
        },
    )

    def __post_init__(self) -> None:
        from ..data import DATASET_NAMES

        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {self.eval_mode!r}.")
        if self.bad_file_policy not in ("error", "skip"):
            raise ValueError(
                f"bad_file_policy must be 'error' (stop naming the file) or 'skip' (warn, count, use "
                f"the next sample), got {self.bad_file_policy!r}."
            )
        if self.backbone.startswith(BUILTIN_PREFIX) and self.backbone[len(BUILTIN_PREFIX) :] not in BUILTIN_BACKBONES:
            raise ValueError(
                f"Unknown built-in backbone {self.backbone!r}; choose {BUILTIN_PREFIX}<{'|'.join(BUILTIN_BACKBONES)}>."
            )
        if self.backbone.startswith(TIMM_PREFIX):
            from ..backbones.eva02 import timm_eva02_name  # no timm import: only the name is checked here

            timm_eva02_name(self.backbone)
            if self.head == "eomt":
                raise ValueError("head='eomt' is built from DINOv2 only; use 'light' or 'mask2former' with EVA02.")
        if self.dataset_name:
            self.dataset = self.dataset_name
        check_dataset_name(self.dataset, "dataset")
        builtin = self.dataset.lower() in DATASET_NAMES
        if builtin and self.dataset.lower() != "synthetic" and not self.data_root:
            raise ValueError(f"dataset={self.dataset!r} needs --data_root (the dataset's folder).")
        if not builtin and self.train_split == "source":  # the synthetic default: your own data trains on 'train'
            self.train_split = "train"
        if self.train_val_split is not None and not 0.0 < self.train_val_split < 1.0:
            raise ValueError(f"train_val_split must be a share in (0, 1), e.g. 0.15, got {self.train_val_split}.")
        for spec in self.targets:
            name, _ = parse_target(spec)
            check_dataset_name(name, f"Target {spec!r}")
        self.target_root_map()  # validates the pairs
        label_mapping_dict(self.label_mapping)
        for name in ("crop_size", "scale_range", "synthetic_size"):
            value = getattr(self, name)
            if len(value) != 2 or min(value) <= 0:
                raise ValueError(f"{name} must be two positive integers, got {value}.")
        if self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high), got {self.scale_range}.")
        self._check_augmentation()
        if self.eval_scale is not None and len(self.eval_scale) != 2:
            raise ValueError(f"eval_scale must be (long short), got {self.eval_scale}.")

    def _check_augmentation(self) -> None:
        if self.num_scales is not None and (
            isinstance(self.num_scales, bool) or not isinstance(self.num_scales, int) or self.num_scales < 1
        ):
            raise ValueError(
                f"num_scales must be a positive integer (16: Rein's short edges) or None (any integer "
                f"in scale_range), got {self.num_scales!r}."
            )
        if not 0.0 < self.cat_max_ratio <= 1.0:
            raise ValueError(
                f"cat_max_ratio must be in (0, 1] (0.75: mmseg's; 1.0 disables the re-draws), "
                f"got {self.cat_max_ratio!r}."
            )
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {self.flip_prob!r}.")
        if not self.keyed_augmentation and self.bad_file_policy != "error":
            # Skipping a bad sample is KeyedTrainingDataset's job; a plain datasets transform can only raise.
            raise ValueError(
                f"bad_file_policy={self.bad_file_policy!r} needs keyed_augmentation=True; with "
                "keyed_augmentation=False use bad_file_policy='error'."
            )

    def run_settings(self) -> dict:
        """`RUN_SETTINGS` and their values (what `FisherTuneTrainer(run_settings=...)` stores and compares)."""
        return {name: getattr(self, name) for name in RUN_SETTINGS}

    def target_root_map(self) -> dict[str, str]:
        """`{dataset: folder}` from `target_roots`, the source's own root included."""
        roots = {self.dataset.lower(): self.data_root} if self.data_root else {}
        for pair in self.target_roots:
            name, sep, path = pair.partition("=")
            if not sep or not path:
                raise ValueError(f"target_roots entries read 'dataset=folder', got {pair!r}.")
            roots[name.strip().lower()] = path
        return roots


@dataclass
class EvaluateArguments:
    """`recipes/evaluate.py`: a trained output folder on any dataset of the package.

    Args:
        model (`str`): an output folder of `recipes/train.py`.
        targets (`list[str]`): `dataset:split` domains; empty: the run's own targets and source val.
        target_roots (`list[str]`): `dataset=folder` for datasets read from disk.
        label_space, label_mapping, eval_mode, eval_scale, max_eval_samples, num_synthetic_eval_samples: override
            the run's.
        device (`str`): `auto`, `cpu`, `cuda`, ... output_file (`str`, *optional*): write the metrics JSON there.
    """

    model: str = field(metadata={"help": "Output folder of recipes/train.py."})
    targets: list[str] = field(default_factory=list, metadata={"help": "dataset:split domains (default: the run's)."})
    target_roots: list[str] = field(default_factory=list, metadata={"help": "dataset=folder pairs."})
    label_space: Optional[str] = field(default=None, metadata={"help": "CamVid label space override."})
    label_mapping: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "'target class=model class' pairs for targets whose classes differ from the model's (default: "
            "the run's)."
        },
    )
    eval_mode: Optional[str] = field(default=None, metadata={"help": "whole or slide (default: the run's)."})
    eval_scale: Optional[list[int]] = field(default=None, metadata={"help": "(long short) evaluation size."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate every evaluation set."})
    num_synthetic_eval_samples: Optional[int] = field(default=None, metadata={"help": "Synthetic images per domain."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    output_file: Optional[str] = field(default=None, metadata={"help": "Write the metrics JSON here."})

    def __post_init__(self) -> None:
        if self.eval_mode is not None and self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {self.eval_mode!r}.")
        for spec in self.targets:
            parse_target(spec)


@dataclass
class PredictArguments:
    """`recipes/predict.py`: a folder of images -> colour-coded masks, overlays and the class legend.

    Args:
        model (`str`): an output folder of `recipes/train.py`.
        images (`str`): folder of images. output_dir (`str`): where the masks, overlays, label ids and legend go
            (`fishertune.outputs.PREDICT_OUTPUTS`).
        device (`str`): `auto`, `cpu`, `cuda`, ... eval_mode (`str`, *optional*): override the run's.
    """

    model: str = field(metadata={"help": "Output folder of recipes/train.py."})
    images: str = field(metadata={"help": "Folder of images to segment."})
    output_dir: str = field(default="predictions", metadata={"help": "Where " + ", ".join(PREDICT_OUTPUTS) + " go."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    eval_mode: Optional[str] = field(default=None, metadata={"help": "whole or slide (default: the run's)."})

    def __post_init__(self) -> None:
        if self.eval_mode is not None and self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {self.eval_mode!r}.")
