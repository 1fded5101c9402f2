"""Model card rendering from the template in ``model_cards/`` (shipped in the package via a link)."""

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
        template_path: a Jinja2 Markdown template; defaults to ``model_cards/fishertune_adapter.md``.
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
