"""Scoring for benchmarks/dg_camvid.py: the evaluation sets, one protocol, and re-scoring saved models.

Every run saves its trained model (`<method>__seed<k>_work/final_model.pt`), so a change of the
evaluation protocol (window, stride, image subset, scales) re-scores the grid in minutes instead of
retraining it for hours::

    python benchmarks/dg_camvid.py --rescore-from <tag> --eval-every 3 --methods frozen --seeds 0

writes the runs of the current recipe's folder from the models of `runs/<tag>`,
refusing when the two recipes differ in anything but evaluation.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

#: Recipe keys that only change how a trained model is scored (everything else changes the model).
EVAL_KEYS = ("eval_window", "eval_stride", "eval_every", "also_every", "also_scales")
FINAL_MODEL = "final_model.pt"


def evaluation_sets(recipe: dict) -> dict:
    """`{"source_val", clean targets, "target_<corruption>"}` as `datasets.Dataset`s, every k-th image."""
    from camvid_corruptions import DEFAULT_CACHE, corrupted_targets
    from dg_camvid_report import CLEAN_TARGETS
    from fishertune.data import load_dataset

    sets = {"source_val": load_dataset("camvid", recipe["root"], "source_val")}
    for name in CLEAN_TARGETS:
        sets[name] = load_dataset("camvid", recipe["root"], name)
    sets.update(corrupted_targets(recipe["root"], recipe["corruptions"], severity=recipe["severity"],
                                  seed=recipe["corruption_seed"],
                                  cache_dir=recipe.get("corruption_cache") or DEFAULT_CACHE))  # fmt: skip
    every = recipe.get("eval_every", 1)
    if every > 1:
        sets = {k: ds.select(range(0, len(ds), every)) for k, ds in sets.items()}
    return sets


def score_all(model, recipe: dict, mean, std) -> tuple[dict, dict, float]:
    """The recipe's scores of `model`: (metrics, extra metrics, evaluation seconds of the main score)."""
    from fishertune.data import eval_transforms
    from fishertune.evaluation import evaluate_model

    sets = evaluation_sets(recipe)
    window = tuple(recipe["eval_window"])
    stride = tuple(recipe.get("eval_stride") or window)  # overlapping windows are averaged (mmseg's slide mode)
    num_classes = len(model.config.id2label)

    def score(sets: dict, transform) -> dict:  # one protocol for every score of this model
        return _compact(evaluate_model(model, sets, batch_size=8, mode="slide", crop_size=window, stride=stride,
                                       num_classes=num_classes, transform=transform))  # fmt: skip

    ev = eval_transforms(mean=mean, std=std)
    t0 = time.time()
    metrics = score(sets, ev)
    eval_s = time.time() - t0
    extra = {}
    if recipe.get("also_every"):  # the same model scored on every k-th image too: what subsetting costs
        k = recipe["also_every"]
        extra[f"metrics_every{k}"] = score({n: ds.select(range(0, len(ds), k)) for n, ds in sets.items()}, ev)
    for f in recipe.get("also_scales", []):  # training saw images scaled 0.5-1.0; the main score is at 1.0
        resized = eval_transforms(scale=(round(480 * f), round(360 * f)), mean=mean, std=std)  # labels stay full size
        extra[f"metrics_scale{f:g}"] = score(sets, resized)
    return metrics, extra, eval_s


def save_final_model(model, work_dir: Path) -> Path:
    """Pickle the whole trained module: sparse, LoRA and prompt methods change its structure during training,
    so a state dict alone could not be loaded back into a freshly built model. dill (a `datasets` dependency)
    because the baselines' forward hooks and transformers' output-capturing hooks are closures."""
    import dill
    import torch

    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / FINAL_MODEL
    tmp = path.with_suffix(".tmp")
    torch.save(model, tmp, pickle_module=dill)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a model to re-score
    return path


def load_final_model(work_dir: Path):
    import dill
    import torch

    path = work_dir / FINAL_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved model (runs before the models were saved cannot be re-scored).")
    # weights_only=False: the file is a whole module, and one that run_one wrote
    model = torch.load(path, map_location="cpu", weights_only=False, pickle_module=dill).eval()
    _register_output_capture(model)
    return model


def _register_output_capture(model) -> None:
    """Redo what unpickling skips of `PreTrainedModel.__init__`: registering the class's recordable outputs.

    transformers 5 collects `hidden_states` through a per-class registry that only `__init__` fills. In a
    fresh process that loads a pickled model and never builds one, the backbone would silently return no
    hidden states (the light head taps them).
    """
    try:
        from transformers.utils import output_capturing
    except ImportError:  # transformers < 5 returns hidden states without the registry
        return
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module, "_can_record_outputs", None) is not None:
            output_capturing._CAN_RECORD_REGISTRY[module] = module._can_record_outputs


def check_rescorable(source: dict, target: dict) -> None:
    """Raise unless `source` and `target` recipes train the same models (they may score them differently)."""
    from dg_camvid_report import recipe_identity

    a, b = recipe_identity(source, drop=EVAL_KEYS), recipe_identity(target, drop=EVAL_KEYS)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        raise ValueError(f"Cannot re-score: the recipes differ in {differ}, which change the trained model; "
                         f"only {list(EVAL_KEYS)} may differ.")  # fmt: skip


def rescore(source_dir: Path, recipe: dict, method: str, seed: int, out_file: Path) -> dict:
    """Score `source_dir`'s saved model of (method, seed) with `recipe`'s protocol; write `out_file`."""
    from fishertune.experiment.build import normalization

    check_rescorable(json.loads((source_dir / "recipe.json").read_text()), recipe)
    stem = f"{method}__seed{seed}"
    trained = json.loads((source_dir / f"{stem}.json").read_text())
    model = load_final_model(source_dir / f"{stem}_work")
    mean, std = normalization(recipe["backbone"])  # the backbone's image processor, as in training
    metrics, extra, eval_s = score_all(model, recipe, mean, std)
    result = {k: v for k, v in trained.items() if not k.startswith("metrics")}
    result |= {"recipe": recipe, "metrics": metrics, **extra, "eval_seconds": eval_s,
               "rescored_from": str(source_dir / f"{stem}.json")}  # fmt: skip
    from dg_camvid_report import write_json

    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_file, result)
    return result


def _compact(metrics: dict) -> dict:
    metrics = {t: m for t, m in metrics.items() if t != "mean"}
    return {t: {"mIoU": 100 * m["mIoU"], "aAcc": 100 * m["aAcc"],
                "IoU": {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v)
                        for k, v in _per_class(m).items()}}
            for t, m in metrics.items()}  # fmt: skip


def _per_class(m: dict) -> dict:
    for key in ("per_class_iou", "per_class_IoU", "IoU"):
        if key in m:
            v = m[key]
            if isinstance(v, dict):
                return v
            try:
                return {str(i): float(x) for i, x in enumerate(v)}
            except TypeError:
                return {}
    return {}
