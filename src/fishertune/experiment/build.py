"""Build what an experiment needs from its [`ExperimentArguments`]: datasets with transforms, and the model."""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

from .. import data as ftdata
from ..backbones.eva02 import TIMM_PREFIX
from ..models import build_model
from .arguments import BUILTIN_BACKBONES, BUILTIN_PREFIX, ExperimentArguments, label_mapping_dict, parse_target

logger = logging.getLogger(__name__)

# Synthetic evaluation sets use another seed than training: other scenes, not the training ones repainted.
SYNTHETIC_TRAIN_SEED, SYNTHETIC_EVAL_SEED = 0, 1


def dinov2_config(**kwargs):
    """A `Dinov2Config` whose FFN is as wide as `intermediate_size` says.

    DINOv2 builds `hidden_size * mlp_ratio` and silently ignores `intermediate_size`, so the width is
    turned into the ratio, and refused when no integer ratio gives it or `mlp_ratio` says otherwise.
    """
    from transformers import Dinov2Config

    size = kwargs.pop("intermediate_size", None)
    if size is not None:
        hidden = kwargs.get("hidden_size", Dinov2Config().hidden_size)
        if size <= 0 or size % hidden:
            raise ValueError(
                f"intermediate_size={size} is not a multiple of hidden_size={hidden}: DINOv2 sizes its "
                "FFN as hidden_size * mlp_ratio (an integer); use a multiple or set mlp_ratio instead."
            )
        if kwargs.get("mlp_ratio", size // hidden) != size // hidden:
            raise ValueError(
                f"intermediate_size={size} and mlp_ratio={kwargs['mlp_ratio']} disagree "
                f"(hidden_size={hidden}); set one of them."
            )
        kwargs["mlp_ratio"] = size // hidden
    return Dinov2Config(**kwargs)


def backbone_source(backbone: str):
    """What `build_model` takes: a `Dinov2Config` for `config:<name>`, else the Hub id, folder or `timm:` name."""
    if backbone.startswith(BUILTIN_PREFIX):
        return dinov2_config(**BUILTIN_BACKBONES[backbone[len(BUILTIN_PREFIX) :]])
    return backbone


def normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0..255 scale: the backbone's own image processor (`AutoImageProcessor`, a Hub id
    or a local folder; e.g. ViT augreg uses 0.5/0.5), else ImageNet's. ImageNet's also for `config:`
    backbones and for `timm:` EVA02 (Rein feeds EVA02 ImageNet-normalised images), and whenever no
    processor can be loaded (offline without a cached copy, a folder without `preprocessor_config.json`)."""
    if backbone.startswith((BUILTIN_PREFIX, TIMM_PREFIX)):
        return ftdata.IMAGENET_MEAN, ftdata.IMAGENET_STD
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(backbone)
    except (OSError, ValueError) as err:  # what transformers raises for a missing file, repo or connection
        logger.warning(
            "No image processor for %r (%s); normalising with ImageNet's mean and std.",
            backbone,
            str(err).splitlines()[0],
        )
        return ftdata.IMAGENET_MEAN, ftdata.IMAGENET_STD
    if getattr(processor, "image_mean", None) is None or getattr(processor, "image_std", None) is None:
        return ftdata.IMAGENET_MEAN, ftdata.IMAGENET_STD
    return ftdata.normalization_from_processor(processor)


def source_id2label(args: ExperimentArguments) -> dict[int, str]:
    """Class names of the source dataset (the model's label space); your own data's from its `id2label.json`,
    metadata or features."""
    if not ftdata.is_builtin(args.dataset):
        return ftdata.get_id2label(load_split(args, args.dataset, args.train_split, train=True))
    return ftdata.id2label(args.dataset.lower(), label_space=args.label_space)


@functools.lru_cache(maxsize=16)
def _custom(source: str, split: str, config_name, image_column: str, label_column: str, reduce_labels: bool,
            train_val_split):  # fmt: skip
    # Loaded once per process (the class names and the split both read it); datasets are not changed in place.
    return ftdata.load_custom(
        source,
        split,
        config_name=config_name,
        image_column=image_column,
        label_column=label_column,
        reduce_labels=reduce_labels,
        train_val_split=train_val_split,
    )


def build_base_model(args: ExperimentArguments, id2label: dict[int, str], seed: Optional[int] = None):
    """The plain segmenter (backbone + head). `seed` makes random initialisation (head, built-in backbones)
    repeatable."""
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = {"taps": tuple(args.taps)} if args.taps else {}
    if args.num_queries is not None:
        kwargs["num_queries"] = args.num_queries
    return build_model(args.head, backbone_source(args.backbone), id2label=id2label, **kwargs)


def load_split(args: ExperimentArguments, name: str, split: str, train: bool, roots: Optional[dict] = None):
    """One raw split (`image`/`label` columns): synthetic domains are generated, the rest read from their folder."""
    name = name.lower()
    limit = args.max_train_samples if train else args.max_eval_samples
    if name == "synthetic":
        n = args.num_synthetic_samples if train else args.num_synthetic_eval_samples
        n = min(n, limit) if limit else n
        seed = SYNTHETIC_TRAIN_SEED if train else SYNTHETIC_EVAL_SEED
        return ftdata.make_synthetic_dataset(n, domain=split, size=tuple(args.synthetic_size), seed=seed)
    if not ftdata.is_builtin(name):  # your own data: a folder or a Hub id, with the run's column options
        ds = _custom(
            name,
            split,
            args.dataset_config_name,
            args.image_column_name,
            args.label_column_name,
            args.do_reduce_labels,
            args.train_val_split,
        )
        return ds.select(range(min(limit, len(ds)))) if limit else ds
    roots = args.target_root_map() if roots is None else roots
    if name not in roots:
        raise ValueError(f"No folder for dataset {name!r}: pass --target_roots {name}=/path/to/{name}.")
    kw = {"label_space": args.label_space} if name == "camvid" and args.label_space else {}
    ds = ftdata.load_dataset(name, roots[name], split, **kw)
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def eval_transform(args: ExperimentArguments, name: str, label_lut=None):
    """The evaluation transform of dataset `name` (its scale), `label_lut` applied to the labels."""
    mean, std = normalization(args.backbone)
    scale = tuple(args.eval_scale) if args.eval_scale else ftdata.EVAL_SCALES.get(name.lower())
    return ftdata.eval_transforms(scale=scale, mean=mean, std=std, label_lut=label_lut)


def _then(first, second):
    """The LUT applying `first`, then `second` (either may be `None`)."""
    if first is None or second is None:
        return first if second is None else second
    return second[first]


def label_space_lut(args: ExperimentArguments, spec: str, ds, id2label: dict):
    """`None` when the dataset `spec` has the model's classes (`id2label`), else the LUT of `args.label_mapping`
    into them; without a mapping a mismatch is refused naming both class lists (scores of unrelated classes
    compared id by id mean nothing). A dataset without fishertune class metadata is taken as it is."""
    try:
        names = ftdata.get_id2label(ds)
    except ValueError:
        return None
    model_names = {int(k): v for k, v in id2label.items()}
    if names == model_names:
        return None
    mapping = label_mapping_dict(args.label_mapping)
    if not mapping:
        hint = (
            " For CamVid scored in the Cityscapes space pass --label_space cityscapes."
            if spec.startswith("camvid")
            else ""
        )
        raise ValueError(
            f"Target {spec!r} has the classes {[names[k] for k in sorted(names)]} but the model predicts "
            f"{[model_names[k] for k in sorted(model_names)]}: scoring one against the other compares unrelated "
            f"classes.{hint} To map the target's classes onto the model's by name, pass --label_mapping "
            "'target class=model class' ... (equal names map to themselves, the rest are ignored)."
        )
    lut, unmatched = ftdata.name_mapping_lut(names, model_names, mapping)
    if len(unmatched) == len(names):
        raise ValueError(
            f"label_mapping maps none of the classes of {spec!r} ({sorted(names.values())}) onto the "
            f"model's ({sorted(model_names.values())})."
        )
    if unmatched:
        logger.warning("Target %r: classes %s match no class of the model and are ignored.", spec, unmatched)
    return lut


def train_transform(args: ExperimentArguments, label_lut=None):
    """Rein's training augmentation as `args` sizes it (crop, scales, crop re-draws, flip, photometric), normalised
    for the backbone: a `SegmentationTransforms` to wrap in `KeyedTrainingDataset` or pass to `set_transform`."""
    mean, std = normalization(args.backbone)
    return ftdata.train_transforms(
        crop_size=tuple(args.crop_size),
        scale_range=tuple(args.scale_range),
        num_scales=args.num_scales,
        cat_max_ratio=args.cat_max_ratio,
        flip_prob=args.flip_prob,
        photometric=args.photometric,
        mean=mean,
        std=std,
        label_lut=label_lut,
    )


def build_train_dataset(args: ExperimentArguments, seed: int = 0):
    """The source training set with `train_transform(args)`. With `keyed_augmentation` (the default) every random
    draw is keyed by (`seed`, epoch, sample index), so that a resumed run augments as the uninterrupted one;
    without it, a `datasets.Dataset` whose transform draws from torch's RNG at each call (`seed` unused)."""
    ds = load_split(args, args.dataset, args.train_split, train=True)
    transform = train_transform(args, ftdata.label_lut(ds))
    if not args.keyed_augmentation:
        return ds.with_transform(transform)
    return ftdata.KeyedTrainingDataset(ds, transform, seed=seed, bad_file_policy=args.bad_file_policy)


def build_eval_datasets(args: ExperimentArguments, targets: Optional[list[str]] = None,
                        id2label: Optional[dict] = None) -> dict:  # fmt: skip
    """`{"dataset:split": dataset with eval transform}` for `targets` (default: `args.targets`), each checked against
    the model's classes `id2label` (default: the source dataset's; `label_space_lut`)."""
    id2label = source_id2label(args) if id2label is None else id2label
    out = {}
    for spec in args.targets if targets is None else targets:
        name, split = parse_target(spec)
        ds = load_split(args, name, split, train=False)
        lut = _then(ftdata.label_lut(ds), label_space_lut(args, spec, ds, id2label))
        out[spec] = ds.with_transform(eval_transform(args, name, lut))
    return out


def build_source_val(args: ExperimentArguments, id2label: Optional[dict] = None) -> dict:
    """`{"source:<dataset>:<split>": ...}` or `{}` without `val_split` (its key starts with "source": not a target)."""
    if not args.val_split:
        return {}
    key = f"source:{args.dataset}:{args.val_split}"
    ds = load_split(args, args.dataset, args.val_split, train=False)
    lut = label_space_lut(args, key, ds, source_id2label(args) if id2label is None else id2label)
    return {key: ds.with_transform(eval_transform(args, args.dataset, _then(ftdata.label_lut(ds), lut)))}
