"""Model card rendering from ``model_card_template.md``, package data next to this module (it ships in the wheel)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jinja2

TEMPLATE = os.path.join(os.path.dirname(__file__), "model_card_template.md")

_REQUIRED = ("base_model", "criterion", "results")


def render_model_card(context: Mapping[str, Any], template_path: str = TEMPLATE) -> str:
    """Render the adapter model card.

    Args:
        context: template variables. ``results`` is ``{domain: {"mIoU": ..., "aAcc": ...}}`` in
            percent; ``mean`` (mean mIoU over the target domains) is computed when absent. Other
            keys (title, head, delta_min, ...) fall back to "n/a".
        template_path: a Jinja2 Markdown template; defaults to the package's ``model_card_template.md``.
    """
    missing = [k for k in _REQUIRED if k not in context]
    if missing:
        raise ValueError(f"Model card context lacks {missing}; pass them to render_model_card.")
    ctx = dict(context)
    results = ctx["results"]
    for name, m in results.items():
        if not all(k in m for k in ("mIoU", "aAcc")):
            raise ValueError(f"Result '{name}' needs 'mIoU' and 'aAcc' (percent), got keys {sorted(m)}.")
    ctx["results"] = [(n, _Obj(m)) for n, m in results.items()]
    if ctx.get("mean") is None:
        targets = [m["mIoU"] for n, m in results.items() if not n.startswith("source")]
        ctx["mean"] = sum(targets) / len(targets) if targets else None
    env = jinja2.Environment(undefined=_NA, keep_trailing_newline=True, autoescape=False)
    with open(template_path, encoding="utf-8") as f:
        return env.from_string(f.read()).render(**ctx)


class _Obj(dict):
    __getattr__ = dict.__getitem__


class _NA(jinja2.Undefined):
    def __str__(self) -> str:
        return "n/a"

    def __iter__(self):
        return iter(())


#: One line per baseline criterion for the card's introduction.
BASELINE_LINES = {
    "full": "every weight of the backbone and the decoder fine-tuned (full fine-tuning).",
    "frozen": "the backbone frozen, only the decoder trained.",
    "lora": "PEFT LoRA on the q, k, v and FFN linears of every block, plus the decoder.",
    "rein": "Rein: learnable low-rank tokens refining every block's features (backbone frozen), plus the decoder.",
    "vpt": "VPT-deep: learnable prompt tokens prepended at every block (backbone frozen), plus the decoder.",
    "adaptformer": "AdaptFormer: a scaled bottleneck MLP parallel to every block's FFN (backbone frozen), plus the decoder.",
    "vqt": "VQT: learnable query tokens summarizing every block's features for the head (backbone frozen), plus the decoder.",
}


def hub_base_model_id(backbone: str) -> str:
    """The card's `base_model` metadata: a Hub repo id. timm's models live at `timm/<name>`; `timm:<name>`
    is only this package's way of naming them on the command line."""
    return "timm/" + backbone[len("timm:") :] if backbone.startswith("timm:") else backbone


def card_context(out: str, exp, targs, metrics: Mapping[str, Any], phase_lengths, repo_id: str | None = None) -> dict:
    """The template variables of a run's card, from its arguments, metrics and output folder."""
    import json

    from .. import __version__
    from ..training.arguments import DATA_CRITERIA, SPARSE_CRITERIA
    from .build import source_id2label

    criterion = targs.criterion
    is_adapter = os.path.isfile(os.path.join(out, "adapter_config.json"))
    selection = {}
    sel_path = os.path.join(out, "fishertune_selection.json")
    if os.path.isfile(sel_path):
        with open(sel_path) as f:
            selection = json.load(f)
    allocated = int(selection.get("allocated_entries", 0))
    fraction = float(selection.get("allocated_fraction", 0.0))
    t1, t2, t3 = phase_lengths
    plot = "fishertune_sensitivity.png"
    return {
        "title": exp.card_title or f"{criterion} on {exp.backbone} ({exp.head}), {exp.dataset} -> {', '.join(exp.targets)}",
        "version": __version__,
        "base_model": exp.backbone,
        "base_model_id": hub_base_model_id(exp.backbone),
        "head": exp.head,
        "head_name": exp.head,
        "num_labels": len(source_id2label(exp)),
        "criterion": criterion,
        "is_sparse": criterion in SPARSE_CRITERIA,
        "uses_estimator": criterion in DATA_CRITERIA,
        "method_line": BASELINE_LINES.get(criterion, ""),
        "estimator": targs.estimator,
        "fisher_type": targs.fisher_type,
        "allocated": f"{allocated:,}",
        "allocated_fraction": fraction,
        "targeted": f"{round(allocated / fraction):,}" if fraction else "n/a",
        "delta_min": targs.delta_min if targs.delta_min is not None else 0.01,
        "delta_max": targs.delta_max if targs.delta_max is not None else 0.05,
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
        "base_in_repo": os.path.isdir(os.path.join(out, "base_model")),
        "repo_or_path": repo_id or os.path.abspath(out),
    }  # fmt: skip


def write_model_card(out: str, exp, targs, metrics: Mapping[str, Any], trainer, repo_id: str | None = None) -> str:
    """Render the card of a finished run into `out/README.md`; returns its path."""
    lengths = targs.phase_lengths(trainer.state.max_steps)
    path = os.path.join(out, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_model_card(card_context(out, exp, targs, metrics, lengths, repo_id)))
    return path
