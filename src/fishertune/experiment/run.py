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
    fishertune_run.json                               the run manifest: every file above with its hash (last)

The folder holds one run (`output_dir.py`); the outputs are written into a temporary folder inside it and moved in
when complete, the manifest last (`manifest.py`).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Any, Optional

import yaml

from .. import atomic
from ..data import collate_fn
from ..evaluation import evaluate_model
from ..models import save_backbone_reference
from ..outputs import BASE_MODEL_DIR, CONFIG_NAME, METRICS_NAME, RUN_MANIFEST_NAME
from ..training import FisherTuneTrainer, FisherTuneTrainingArguments
from ..training.methods import get_method
from .arguments import BUILTIN_PREFIX, ExperimentArguments
from .build import build_base_model, build_eval_datasets, build_source_val, build_train_dataset, source_id2label
from .card import write_model_card
from .config_io import resolved_config
from .eval_during_training import with_target_evaluation
from .export import finalize_adapter_config, save_image_processor
from .manifest import publish
from .output_dir import check_free_space, check_writable, inspect_output_dir, required_bytes
from .resume import check_resume_settings, resolve_resume
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
    """JSON-ready metrics in percent (the card's and the paper's unit); the confusion matrix is dropped.
    NaN (a target without a valid pixel, a class absent from it) becomes `None`: `null` in metrics.json."""
    out = {}
    for k, v in metrics.items():
        if k in ("mIoU", "aAcc", "mAcc"):
            out[k] = None if v != v else round(100.0 * v, 4)
        elif k in ("per_class_iou", "per_class_acc"):
            out[k] = {c: (None if x != x else round(100.0 * x, 4)) for c, x in v.items()}
        elif k in ("num_pixels", "num_targets"):
            out[k] = v
    return out


def evaluate_all(model, exp: ExperimentArguments, targets: dict, source_val: dict,
                 disable_tqdm: Optional[bool] = None) -> dict:  # fmt: skip
    """`{target: metrics%, ..., "mean": over targets, source key: metrics%}` with the run's inference settings
    (a progress bar of images per domain unless `disable_tqdm`)."""
    kw = dict(
        mode=exp.eval_mode,
        crop_size=exp.eval_crop_size,
        stride=exp.eval_stride,
        num_classes=model.config.num_labels,
        disable_tqdm=disable_tqdm,
    )
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
    if "mean" in metrics:
        n = metrics["mean"].get("num_targets")
        rows.append((f"mean over targets ({n})" if n is not None else "mean over targets", metrics["mean"]))
    rows += [(n, m) for n, m in metrics.items() if n.startswith("source")]
    width = max([len(n) for n, _ in rows] + [6])
    lines = [f"{'domain':<{width}}  {'mIoU':>6}  {'aAcc':>6}  {'mAcc':>6}", "-" * (width + 24)]
    cell = lambda v: "   n/a" if v is None else f"{v:6.2f}"  # noqa: E731  (None: no valid pixel)
    lines += [f"{n:<{width}}  {cell(m['mIoU'])}  {cell(m['aAcc'])}  {cell(m['mAcc'])}" for n, m in rows]
    return "\n".join(lines)


def save_model(model, method: str, out: str, merge: bool = False):
    """Save the model as `method` saves it (`training.methods`: the adapter, or merged with `merge`, or the whole
    model, plus a baseline's own parameters); return the model as saved (what gets evaluated)."""
    return get_method(method).save(model, out, merge=merge)


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
    out = targs.output_dir
    # Before any work and before the first byte is written: files this run did not write, a wrong checkpoint path
    # or an earlier run in the folder must cost nothing (and lose nothing).
    plan = inspect_output_dir(out)
    # is_main=False: validation only; the earlier run's files, checkpoints included, are deleted below once every
    # check (writable, free space) has passed.
    targs.resume_from_checkpoint = resolve_resume(
        targs.resume_from_checkpoint, out, overwrite=exp.overwrite_output_dir, is_main=False
    )
    check_resume_settings(targs.resume_from_checkpoint, targs, exp.run_settings())
    replace_earlier = plan.require_fresh(targs.resume_from_checkpoint, exp.overwrite_output_dir)
    if targs.should_save:
        check_writable(out)
    push = targs.push_to_hub  # the Trainer pushes checkpoints (hub_strategy); the run's own files go up below
    plain_model = get_method(targs.method).saved_as == "whole"  # saved whole, backbone included
    if push and not exp.merge and not plain_model and not exp.backbone.startswith(BUILTIN_PREFIX):
        from ..hub import check_pushable_backbone

        check_pushable_backbone(exp.backbone, where="--push_to_hub: the adapter's base would be built")  # at start
    id2label = source_id2label(exp)
    train_ds = build_train_dataset(exp, seed=targs.seed if targs.data_seed is None else targs.data_seed)
    targets, source_val = build_eval_datasets(exp), build_source_val(exp)
    model = build_base_model(exp, id2label, seed=targs.seed)
    stage = None
    if targs.should_save:
        check_free_space(
            out,
            required_bytes(model, checkpoints=targs.save_strategy != "no"),
            freed=plan.freed_bytes() if replace_earlier else 0,
        )
        if replace_earlier:
            plan.delete_earlier()
        # A killed run's unfinished outputs; its checkpoint staging folders are the trainer's to remove (and report).
        atomic.remove_stale_temporaries(out, of="outputs")
        # The outputs are written here and moved into `out` once complete (`manifest.publish`).
        stage = tempfile.mkdtemp(prefix=atomic.TMP_PREFIX, suffix="-outputs", dir=out)
    if not exp.merge and not plain_model and stage is not None:  # an adapter: base_model/ is its base
        if exp.backbone.startswith(BUILTIN_PREFIX):
            # A random-init backbone exists nowhere else: the adapter is loadable only with these exact weights.
            model.save_pretrained(os.path.join(stage, BASE_MODEL_DIR))
        else:  # a pretrained backbone: the config and the backbone's name; from_pretrained loads its weights
            save_backbone_reference(model, os.path.join(stage, BASE_MODEL_DIR), exp.backbone)

    # -- evaluation during training (eval_strategy, metric_for_best_model): the run's targets, its evaluator --
    trainer = with_target_evaluation(FisherTuneTrainer)(
        model=model,
        args=targs,
        train_dataset=train_ds,
        data_collator=collate_fn,
        eval_sets={**targets, **source_val},
        evaluate_fn=lambda m: evaluate_all(m, exp, targets, source_val, disable_tqdm=True),
        run_settings=exp.run_settings(),
    )
    # -- end of evaluation during training --
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    train_seconds = time.perf_counter() - start
    model = trainer.model
    if stage is not None:
        model = save_model(model, targs.method, stage, merge=exp.merge)
    metrics = evaluate_all(model, exp, targets, source_val, disable_tqdm=targs.disable_tqdm)
    result = {"metrics": metrics, "output_dir": out, "train_seconds": train_seconds, "push_url": None}
    if stage is None:  # other ranks of a multi-process run stop here
        return result

    run_id = uuid.uuid4().hex
    config = {"config_file": config_path, **resolved_config(exp, targs)}
    config["push_to_hub"] = push
    config.pop("hub_token", None)  # never write a secret into a file that gets uploaded
    atomic.write_text(os.path.join(stage, CONFIG_NAME), yaml.safe_dump({**config, "run_id": run_id}, sort_keys=True))
    atomic.write_json(os.path.join(stage, METRICS_NAME), metrics)  # NaN is not JSON: to_percent made it null
    log_eval_metrics(trainer, metrics)  # per-target mIoU and the target mean to report_to's trackers too
    base_dir = os.path.join(out, BASE_MODEL_DIR)  # where loaders find it once moved in
    has_base = os.path.isdir(os.path.join(stage, BASE_MODEL_DIR))
    finalize_adapter_config(stage, os.path.abspath(base_dir) if has_base else None)
    save_image_processor([stage, os.path.join(stage, BASE_MODEL_DIR)], exp)
    write_model_card(out, exp, targs, metrics, trainer, repo_id=targs.hub_model_id if push else None, model_dir=stage)
    files = publish(stage, out, run_id=run_id, method=targs.method, settings=config)
    if push:
        from ..hub import push_output_folder

        repo_id = targs.hub_model_id or os.path.basename(os.path.abspath(out))
        result["push_url"] = push_output_folder(
            out, repo_id, token=targs.hub_token, private=bool(targs.hub_private_repo), files=[*files, RUN_MANIFEST_NAME]
        )
    result["files"] = sorted({f.split("/")[0] for f in files} | {RUN_MANIFEST_NAME})
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
