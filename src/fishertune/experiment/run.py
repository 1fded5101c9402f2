"""`run_experiment`: train with [`FisherTuneTrainer`], evaluate per target, write the output folder, push.

Output folder (`training_args.output_dir`):

    adapter_config.json + adapter_model.safetensors   the adapter (or config.json + model.safetensors:
                                                      `--merge`, or the full/frozen/rein/vpt/adaptformer/vqt baselines)
    baseline/                                         rein/vpt/adaptformer/vqt: the method's parameters alone
    base_model/                                       adapters: the base `AutoPeftModel` loads (`config:` backbones:
                                                      the random-init model; else its config and backbone name)
    fishertune_scores.safetensors, fishertune_selection.json, fishertune_sensitivity.png   (sparse criteria)
    preprocessor_config.json                          the image processor (also in base_model/)
    metrics.json   config.yaml   README.md (model card)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import yaml
from peft import PeftModel

from ..baselines import api as baselines_api
from ..data import collate_fn
from ..evaluation import evaluate_model
from ..models import save_backbone_reference
from ..outputs import BASE_MODEL_DIR, BASELINE_DIR, CONFIG_NAME, METRICS_NAME
from ..training import FisherTuneTrainer, FisherTuneTrainingArguments
from ..training.methods import get_method
from .arguments import BUILTIN_PREFIX, ExperimentArguments
from .build import build_base_model, build_eval_datasets, build_source_val, build_train_dataset, source_id2label
from .card import write_model_card
from .config_io import resolved_config
from .export import finalize_adapter_config, save_image_processor
from .resume import resolve_resume
from .tracking import log_eval_metrics

#: `quick=True` (CI): phases T1=2, T2=2 batches, T3=4, on a handful of samples.
QUICK = dict(max_steps=6, warmup_phase_steps=2, estimation_batches=2, logging_steps=2)
QUICK_SAMPLES = dict(num_synthetic_samples=16, num_synthetic_eval_samples=4, max_train_samples=16, max_eval_samples=4)


def apply_quick(exp: ExperimentArguments, targs: FisherTuneTrainingArguments) -> None:
    """Shrink a run to a smoke test in place (steps, estimation batches, sample counts)."""
    for k, v in QUICK.items():
        setattr(targs, k, v)
    targs.tuning_phase_steps = targs.estimation_ratio = None
    for k, v in QUICK_SAMPLES.items():
        current = getattr(exp, k)
        setattr(exp, k, v if current is None else min(current, v))


def to_percent(metrics: dict) -> dict:
    """JSON-ready metrics in percent (the card's and the paper's unit); the confusion matrix is dropped."""
    out = {}
    for k, v in metrics.items():
        if k in ("mIoU", "aAcc", "mAcc"):
            out[k] = round(100.0 * v, 4)
        elif k in ("per_class_iou", "per_class_acc"):
            out[k] = {c: (None if x != x else round(100.0 * x, 4)) for c, x in v.items()}
        elif k == "num_pixels":
            out[k] = v
    return out


def evaluate_all(model, exp: ExperimentArguments, targets: dict, source_val: dict,
                 disable_tqdm: Optional[bool] = None) -> dict:  # fmt: skip
    """`{target: metrics%, ..., "mean": over targets, source key: metrics%}` with the run's inference settings
    (a progress bar of images per domain unless `disable_tqdm`)."""
    kw = dict(mode=exp.eval_mode, crop_size=exp.eval_crop_size, stride=exp.eval_stride,
              num_classes=model.config.num_labels, disable_tqdm=disable_tqdm)
    results = {}
    if targets:
        raw = evaluate_model(model, targets, **kw)
        results = {name: to_percent(m) for name, m in raw.items() if name != "mean"}
        results["mean"] = to_percent(raw["mean"])
    if source_val:
        results.update({n: to_percent(m) for n, m in evaluate_model(model, source_val, **kw).items() if n != "mean"})
    return results


def format_table(metrics: dict) -> str:
    """The per-domain results table printed at the end of a run (targets, their mean, source val)."""
    rows = [(n, m) for n, m in metrics.items() if n != "mean" and not n.startswith("source")]
    rows += [("mean over targets", metrics["mean"])] if "mean" in metrics else []
    rows += [(n, m) for n, m in metrics.items() if n.startswith("source")]
    width = max([len(n) for n, _ in rows] + [6])
    lines = [f"{'domain':<{width}}  {'mIoU':>6}  {'aAcc':>6}  {'mAcc':>6}", "-" * (width + 24)]
    lines += [f"{n:<{width}}  {m['mIoU']:6.2f}  {m['aAcc']:6.2f}  {m['mAcc']:6.2f}" for n, m in rows]
    return "\n".join(lines)


def save_model(model, exp: ExperimentArguments, out: str):
    """Save the adapter, or the merged / full model; return the model as saved (what gets evaluated)."""
    if isinstance(model, PeftModel):
        if exp.merge:
            model = model.merge_and_unload()
            model.save_pretrained(out)
            return model
        model.save_pretrained(out)
        return model
    model.save_pretrained(out)  # full / frozen / rein / vpt / adaptformer / vqt baselines: the whole model
    try:
        baselines_api.installed_state(model)
    except ValueError:
        return model
    # Rein / VPT / AdaptFormer / VQT: also their own parameters, loadable with `load_method_state` onto the backbone.
    baselines_api.save_method_state(model, os.path.join(out, BASELINE_DIR))
    return model


def run_experiment(exp: ExperimentArguments, targs: FisherTuneTrainingArguments,
                   config_path: Optional[str] = None, verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run one experiment end to end and return `{"metrics", "output_dir", "files", "push_url", "train_seconds"}`.

    Args:
        exp ([`ExperimentArguments`]): model, data, evaluation and output options.
        targs ([`FisherTuneTrainingArguments`]): the method, criterion, phases and optimisation; `output_dir`,
            `push_to_hub`, `hub_model_id`, `hub_token`, `hub_private_repo` are read for the output.
        config_path (`str`, *optional*): the YAML the arguments came from (recorded in config.yaml).
        verbose (`bool`): print the results table and the written paths.
    """
    if exp.quick:
        apply_quick(exp, targs)
    # Before any work: a wrong path or another run's checkpoints must cost nothing; config.yaml records the folder.
    targs.resume_from_checkpoint = resolve_resume(targs.resume_from_checkpoint, targs.output_dir,
                                                  overwrite=exp.overwrite_output_dir, is_main=targs.should_save)
    push = targs.push_to_hub  # the Trainer pushes checkpoints (hub_strategy); the run's own files go up below
    out = targs.output_dir
    os.makedirs(out, exist_ok=True)
    id2label = source_id2label(exp)
    train_ds = build_train_dataset(exp, seed=targs.seed if targs.data_seed is None else targs.data_seed)
    targets, source_val = build_eval_datasets(exp), build_source_val(exp)
    model = build_base_model(exp, id2label, seed=targs.seed)
    plain_model = get_method(targs.method).saved_as == "whole"  # saved whole, backbone included
    if not exp.merge and not plain_model and targs.should_save:  # an adapter: base_model/ is its base
        if exp.backbone.startswith(BUILTIN_PREFIX):
            # A random-init backbone exists nowhere else: the adapter is loadable only with these exact weights.
            model.save_pretrained(os.path.join(out, BASE_MODEL_DIR))
        else:  # a pretrained backbone: the config and the backbone's name; from_pretrained loads its weights
            save_backbone_reference(model, os.path.join(out, BASE_MODEL_DIR), exp.backbone)

    trainer = FisherTuneTrainer(model=model, args=targs, train_dataset=train_ds, data_collator=collate_fn)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    train_seconds = time.perf_counter() - start
    model = trainer.model
    if targs.should_save:
        model = save_model(model, exp, out)
    metrics = evaluate_all(model, exp, targets, source_val, disable_tqdm=targs.disable_tqdm)
    result = {"metrics": metrics, "output_dir": out, "train_seconds": train_seconds, "push_url": None}
    if not targs.should_save:  # other ranks of a multi-process run stop here
        return result

    config = {"config_file": config_path, **resolved_config(exp, targs)}
    config["push_to_hub"] = push
    config.pop("hub_token", None)  # never write a secret into a file that gets uploaded
    with open(os.path.join(out, CONFIG_NAME), "w") as f:
        yaml.safe_dump(config, f, sort_keys=True)
    with open(os.path.join(out, METRICS_NAME), "w") as f:
        json.dump(metrics, f, indent=2)
    log_eval_metrics(trainer, metrics)  # per-target mIoU and the target mean to report_to's trackers too
    base_dir = os.path.join(out, BASE_MODEL_DIR)
    finalize_adapter_config(out, os.path.abspath(base_dir) if os.path.isdir(base_dir) else None)
    save_image_processor([out, base_dir], exp)
    write_model_card(out, exp, targs, metrics, trainer, repo_id=targs.hub_model_id if push else None)
    if push:
        from ..hub import push_output_folder

        repo_id = targs.hub_model_id or os.path.basename(os.path.abspath(out))
        result["push_url"] = push_output_folder(out, repo_id, token=targs.hub_token,
                                                private=bool(targs.hub_private_repo))
    result["files"] = sorted(os.listdir(out))
    if verbose:
        print(report(result))
    return result


def report(result: dict) -> str:
    """The end-of-run text: results table and what was written where."""
    out = os.path.abspath(result["output_dir"])
    lines = ["", "Results (%):", format_table(result["metrics"]), "", f"Output folder: {out}"]
    lines += [f"  {os.path.join(out, f)}" for f in result.get("files", [])]
    if result.get("push_url"):
        lines.append(f"Pushed to: {result['push_url']}")
    return "\n".join(lines)
