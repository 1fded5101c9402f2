"""The model card of a run: `huggingface_hub`'s `ModelCard` from `model_card_template.md` (package data).

The metadata is a `ModelCardData` with one `EvalResult` per evaluated domain (a `model-index` the Hub
reads: mIoU in percent per target, the target mean and the source validation), the base model's Hub id
when it has one, and the dataset names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import atomic
from ..backbones.eva02 import TIMM_PREFIX
from ..hub import base_repo_id, load_snippet
from ..outputs import ADAPTER_CONFIG_NAME, CARD_NAME, PLOT_NAME, SELECTION_NAME
from .arguments import BUILTIN_PREFIX

TEMPLATE = os.path.join(os.path.dirname(__file__), "model_card_template.md")

_REQUIRED = ("base_model", "criterion", "results")
TAGS = ["fishertune", "peft", "semantic-segmentation", "domain-generalization"]


def eval_results(results: Mapping[str, Mapping[str, Any]], mean: Optional[float]) -> list[EvalResult]:
    """One `EvalResult` (mIoU, %) per domain `"dataset:split"` (source validation: `"source:dataset:split"`),
    and the mean over targets."""
    out = []
    for name, m in results.items():
        if m.get("mIoU") is None:  # a domain without a valid pixel has no score to publish
            continue
        parts = name.split(":")
        dataset, split = (parts[-2], parts[-1]) if len(parts) >= 2 else (name, None)
        label = f"source validation {dataset}:{split}" if parts[0] == "source" else name
        out.append(
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic segmentation",
                dataset_type=dataset,
                dataset_name=label,
                dataset_split=split,
                metric_type="mean_iou",
                metric_name="mIoU",
                metric_value=round(float(m["mIoU"]), 2),
            )
        )
    if mean is not None:
        out.append(
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic segmentation",
                dataset_type="targets",
                dataset_name="mean over target domains",
                metric_type="mean_iou",
                metric_name="mean mIoU over targets",
                metric_value=round(float(mean), 2),
            )
        )
    return out


def render_model_card(context: Mapping[str, Any], template_path: str = TEMPLATE) -> ModelCard:
    """Build the run's model card.

    Args:
        context: template variables. ``results`` is ``{domain: {"mIoU": ..., "aAcc": ...}}`` in
            percent; ``mean`` (mean mIoU over the target domains) is computed when absent;
            ``base_model_id`` is a Hub repo id or None. See `card_context` for the other keys.
        template_path: a Jinja2 Markdown template whose front matter is ``{{ card_data }}``.

    Returns:
        `huggingface_hub.ModelCard`: `str(card)` is the README; `card.data` the metadata.
    """
    missing = [k for k in _REQUIRED if k not in context]
    if missing:
        raise ValueError(f"Model card context lacks {missing}; pass them to render_model_card.")
    ctx = dict(context)
    results = ctx["results"]
    for name, m in results.items():
        if not all(k in m for k in ("mIoU", "aAcc")):
            raise ValueError(f"Result '{name}' needs 'mIoU' and 'aAcc' (percent), got keys {sorted(m)}.")
    if ctx.get("mean") is None:
        targets = [m["mIoU"] for n, m in results.items() if not n.startswith("source") and m["mIoU"] is not None]
        ctx["mean"] = sum(targets) / len(targets) if targets else None
    data = ModelCardData(
        library_name="peft" if ctx.get("is_adapter") else "transformers",
        base_model=ctx.get("base_model_id"),
        pipeline_tag="image-segmentation",
        license="apache-2.0",
        tags=list(TAGS),
        datasets=list(ctx.get("datasets") or []),
        metrics=["mean_iou"],
        model_name=ctx.get("title") or "fishertune",
        eval_results=eval_results(results, ctx["mean"]),
    )
    ctx["results"] = [(n, _Obj(m)) for n, m in results.items()]
    if ctx.get("repo_or_path"):  # the lines `fishertune.hub` documents, the same in every card
        ctx.setdefault("load_snippet", load_snippet(ctx["repo_or_path"], bool(ctx.get("is_adapter"))))
        ctx.setdefault("output_folder", ctx["repo_or_path"])
    with open(template_path, encoding="utf-8") as f:
        template = f.read()
    return ModelCard.from_template(data, template_str=template, **ctx)


class _Obj(dict):
    __getattr__ = dict.__getitem__


def _baseline_lines() -> dict[str, str]:
    from ..training.methods import METHODS

    return {m.name: m.card_line for m in METHODS.values() if m.card_line}


#: One line per baseline method for the card's introduction (from `fishertune.training.methods.METHODS`).
BASELINE_LINES = _baseline_lines()


def hub_base_model_id(backbone: str) -> Optional[str]:
    """The card's `base_model` metadata: a Hub repo id, or None (a `config:` backbone, a local folder).
    timm's models live at `timm/<name>`; `timm:<name>` is only this package's way of naming them."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if backbone.startswith(TIMM_PREFIX):
        return "timm/" + backbone[len(TIMM_PREFIX) :]
    if backbone.startswith(BUILTIN_PREFIX) or os.path.exists(backbone):
        return None
    try:
        validate_repo_id(backbone)
    except HFValidationError:
        return None
    return backbone


def _budget_lines(targs) -> dict:
    """The card's delta_min / delta_max as the run's `FisherTuneConfig` resolves them (its defaults included):
    shares, or entry counts for a fixed-count budget (`delta_max_count`)."""
    config = targs.tuner_config()
    if config.delta_max_count is not None:
        return {"delta_min": f"{config.delta_min_count:,} entries", "delta_max": f"{config.delta_max_count:,} entries"}
    return {"delta_min": config.delta_min, "delta_max": config.delta_max}


def card_context(
    out: str,
    exp,
    targs,
    metrics: Mapping[str, Any],
    phase_lengths,
    repo_id: str | None = None,
    model_dir: str | None = None,
) -> dict:
    """The template variables of a run's card, from its arguments, metrics and output folder (the model files
    in `model_dir`, default `out`: the folder they are written in before they are moved into `out`)."""
    import json

    from .. import __version__
    from ..fisher import get_criterion
    from ..training.methods import get_method
    from .build import source_id2label

    method = get_method(targs.method)
    # A baseline selects nothing: the card names its method where a sparse run names its criterion.
    criterion = targs.criterion if method.is_sparse else method.name
    model_dir = out if model_dir is None else model_dir
    is_adapter = os.path.isfile(os.path.join(model_dir, ADAPTER_CONFIG_NAME))
    selection = {}
    sel_path = os.path.join(out, SELECTION_NAME)
    if os.path.isfile(sel_path):
        with open(sel_path) as f:
            selection = json.load(f)
    allocated = int(selection.get("allocated_entries", 0))
    fraction = float(selection.get("allocated_fraction", 0.0))
    t1, t2, t3 = phase_lengths
    plot = PLOT_NAME
    repo_or_path = repo_id or os.path.abspath(out)
    base_model_id = hub_base_model_id(exp.backbone)
    if base_model_id is None and is_adapter and repo_id:  # the adapter's base goes to its own repo with the push
        base_model_id = base_repo_id(repo_id)
    return {
        "title": exp.card_title
        or f"{criterion} on {exp.backbone} ({exp.head}), {exp.dataset} -> {', '.join(exp.targets)}",
        "version": __version__,
        "base_model": exp.backbone,
        "base_model_id": base_model_id,
        "head": exp.head,
        "head_name": exp.head,
        "num_labels": len(source_id2label(exp)),
        "criterion": criterion,
        "method": method.name,
        "is_sparse": method.is_sparse,
        "uses_estimator": method.is_sparse and get_criterion(targs.criterion).needs_data,
        "method_line": method.card_line,
        "estimator": targs.estimator,
        "fisher_type": targs.fisher_type,
        "allocated": f"{allocated:,}",
        "allocated_fraction": fraction,
        "targeted": f"{round(allocated / fraction):,}" if fraction else "n/a",
        **_budget_lines(targs),
        "merged": bool(exp.merge),
        "t1": t1, "t2": t2, "t3": t3,
        "source": f"{exp.dataset}:{exp.train_split}",
        "targets": ", ".join(exp.targets) or "none",
        "datasets": sorted({exp.dataset.lower(), *(t.split(":")[0].lower() for t in exp.targets)}),
        "seed": targs.seed,
        "results": {n: m for n, m in metrics.items() if n != "mean"},
        "mean": metrics.get("mean", {}).get("mIoU"),
        "sensitivity_map": plot if os.path.isfile(os.path.join(out, plot)) else None,
        "is_adapter": is_adapter,
        "repo_or_path": repo_or_path,
        "output_folder": "<output folder>" if repo_id else repo_or_path,
    }  # fmt: skip


def write_model_card(
    out: str, exp, targs, metrics: Mapping[str, Any], trainer, repo_id: str | None = None, model_dir: str | None = None
) -> str:
    """Render the card of a finished run into `model_dir or out`/README.md; returns its path."""
    lengths = targs.phase_lengths(trainer.state.max_steps)
    path = os.path.join(model_dir or out, CARD_NAME)
    card = render_model_card(card_context(out, exp, targs, metrics, lengths, repo_id, model_dir=model_dir))
    atomic.write_with(path, card.save)
    return path
