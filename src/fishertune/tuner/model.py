"""FisherTuneModel: injection, global selection, the active fraction, and save/load hooks."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.integrations import init_empty_weights
from torch import nn

from .config import FisherTuneConfig
from .layer import FisherTuneLayer, Linear
from .presets import target_regex
from .schedule import active_fraction
from .selection import global_topk

_CKPT_PREFIX = "base_model.model."


class FisherTuneModel(BaseTuner):
    """Sparse fine-tuning of selected weight entries (FisherTune, Zhao et al., CVPR 2025).

    After `get_peft_model(model, FisherTuneConfig(...))` every targeted linear is wrapped but
    holds no entry until `select(scores)` ranks all targeted entries globally and allocates the
    top `delta_max` of them (or the config's `init_criterion` does so at injection). During
    tuning, `set_active_fraction(p)` or `set_schedule_step(t, T)` (Eq. 16) activates a nested
    prefix of that ranking.

    Example:

        ```py
        >>> import fishertune
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base, fishertune.FisherTuneConfig(delta_max=0.05))
        >>> model.select({name: w.abs() for name, w in model.fishertune_target_weights().items()})
        >>> model.set_schedule_step(0, total_steps=1000)  # delta_min active
        ```
    """

    prefix: str = "fishertune_"
    tuner_layer_cls = FisherTuneLayer
    target_module_mapping: dict = {}

    # -- injection ------------------------------------------------------------------------------
    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        **kwargs,
    ) -> None:
        config = self.peft_config[adapter_name]
        if config.target_modules is None:
            config.target_modules = target_regex(model)
        super().inject_adapter(
            model,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            **kwargs,
        )
        if config.init_criterion is not None:
            # With low_cpu_mem_usage the deltas are created on the meta device (their values come from a checkpoint);
            # the selection itself still reads the real base weights.
            with init_empty_weights() if low_cpu_mem_usage else nullcontext():
                self.select(self._init_scores(config, adapter_name), adapter_name=adapter_name)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, FisherTuneLayer):
            target.update_layer(adapter_name, inference_mode=config.inference_mode)
            return
        new_module = Linear(target, adapter_name)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _init_scores(self, config: FisherTuneConfig, adapter_name: str) -> dict[str, torch.Tensor]:
        weights = self.fishertune_target_weights()
        if config.init_criterion == "magnitude":
            return {n: w.detach().abs().float().cpu() for n, w in weights.items()}
        gen = torch.Generator().manual_seed(config.seed)
        return {n: torch.rand(w.shape, generator=gen) for n, w in weights.items()}

    # -- selection and schedule -----------------------------------------------------------------
    def _tuner_layers(self) -> dict[str, FisherTuneLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, FisherTuneLayer)}

    def fishertune_target_weights(self) -> dict[str, nn.Parameter]:
        """`{module name: base weight}` of every targeted linear, in model order (the score keys)."""
        return {n: m.get_base_layer().weight for n, m in self._tuner_layers().items()}

    def select(
        self, scores: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None, init_weights: Optional[bool] = None
    ) -> dict[str, int]:
        """Allocate the top `delta_max` of all targeted entries by `scores` (one global ranking).

        Args:
            scores: `{module name: per-entry score shaped like its weight}`; names as returned by
                `fishertune_target_weights()` (a `base_model.model.` prefix is accepted too). Every
                targeted layer must be scored. Ties go to the earlier layer, then the lower flat index.
            adapter_name: adapter to allocate (default: the active one).
            init_weights: override the config's `init_weights` for the new deltas.

        Returns:
            `{module name: allocated entries}`. All allocated entries start active.
        """
        adapter_name = adapter_name or self.active_adapters[0]
        config = self.peft_config[adapter_name]
        layers = self._tuner_layers()
        if any(m.merged for m in layers.values()):
            raise RuntimeError("Unmerge the adapters before selecting: merged deltas would be lost.")
        scores = {k.removeprefix(_CKPT_PREFIX): v for k, v in scores.items()}
        missing = [n for n in layers if n not in scores]
        extra = [n for n in scores if n not in layers]
        if missing or extra:
            raise KeyError(
                f"Scores must cover exactly the targeted layers. Missing: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                f"not targeted: {extra[:5]}{'...' if len(extra) > 5 else ''}. Use model.fishertune_target_weights() keys."
            )
        shapes = {n: m.get_base_layer().weight.shape for n, m in layers.items()}
        selection = global_topk({n: scores[n] for n in layers}, config.delta_max, shapes=shapes)
        init = config.init_weights if init_weights is None else init_weights
        for name, layer in layers.items():
            layer.allocate(adapter_name, selection[name].indices, selection[name].ranks, init_weights=init)
        # Newly created parameters must follow the adapter's trainable state...
        if adapter_name in self.active_adapters and not config.inference_mode:
            for layer in layers.values():
                if adapter_name in layer.fishertune_values:
                    layer.fishertune_values[adapter_name].requires_grad_(True)
        # ... and the dtype PEFT gave the adapter (fp16/bf16 deltas upcast to fp32 unless autocast_adapter_dtype=False).
        autocast = getattr(self, "_fishertune_autocast", {})
        if adapter_name in autocast:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast[adapter_name])
        return {n: sel.indices.numel() for n, sel in selection.items()}

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # PEFT casts right after injection, when a deferred selection has allocated nothing yet; remember the choice
        # so that `select()` applies it to the deltas it creates later.
        if not hasattr(self, "_fishertune_autocast"):
            self._fishertune_autocast: dict[str, bool] = {}
        self._fishertune_autocast[adapter_name] = autocast_adapter_dtype
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # On unload, a `modules_to_save` copy (e.g. a segmentation head) replaces its wrapper; BaseTuner would copy
        # `.weight`/`.bias` from the wrapped module, which a head without its own weight does not have.
        base = getattr(child, "base_layer", child)
        if not hasattr(new_module, "base_layer") and not hasattr(base, "weight"):
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def num_targeted(self) -> int:
        """N: the number of targeted weight entries (the base of delta_min and delta_max)."""
        return sum(m.get_base_layer().weight.numel() for m in self._tuner_layers().values())

    def num_allocated(self, adapter_name: Optional[str] = None) -> int:
        adapter_name = adapter_name or self.active_adapters[0]
        return sum(m.num_allocated(adapter_name) for m in self._tuner_layers().values())

    def set_active_fraction(self, fraction: float, adapter_name: Optional[str] = None) -> int:
        """Activate the top `fraction` of all targeted entries (a prefix of the ranking).

        `fraction` is relative to all targeted entries, like `delta_max`; it cannot exceed the
        allocated share. Returns the number of active entries.
        """
        adapter_name = adapter_name or self.active_adapters[0]
        allocated = self.num_allocated(adapter_name)
        if allocated == 0:
            raise RuntimeError("Nothing is allocated yet: call `select(scores)` before setting the active fraction.")
        if fraction < 0 or fraction > self.peft_config[adapter_name].delta_max + 1e-12:
            raise ValueError(
                f"Active fraction {fraction} is outside [0, delta_max={self.peft_config[adapter_name].delta_max}]."
            )
        n_global = min(allocated, int(round(fraction * self.num_targeted())))
        return sum(m.set_active_rank(adapter_name, n_global) for m in self._tuner_layers().values())

    def set_schedule_step(self, step: int, total_steps: int, adapter_name: Optional[str] = None) -> float:
        """Eq. 16: set the active fraction of tuning step `step` of `total_steps`; returns p(t)."""
        adapter_name = adapter_name or self.active_adapters[0]
        cfg = self.peft_config[adapter_name]
        p = active_fraction(step, total_steps, cfg.delta_min, cfg.delta_max)
        self.set_active_fraction(p, adapter_name)
        return p

    def num_active(self, adapter_name: Optional[str] = None) -> int:
        adapter_name = adapter_name or self.active_adapters[0]
        return sum(m.fishertune_active.get(adapter_name, 0) for m in self._tuner_layers().values())

    # -- save / load ----------------------------------------------------------------------------
    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Size every layer from the checkpoint's indices before PEFT loads the values into it."""
        modules = dict(model.named_modules())
        for key in [k for k in state_dict if k.endswith(".fishertune_indices")]:
            module_name = key[: -len(".fishertune_indices")]
            candidates = [module_name, module_name.removeprefix(_CKPT_PREFIX)]
            layer = next((modules[c] for c in candidates if isinstance(modules.get(c), FisherTuneLayer)), None)
            if layer is None:
                raise ValueError(
                    f"The adapter holds deltas for '{module_name}', which is not a FisherTune-targeted layer of this "
                    "model: the adapter was made for another model or another target_modules."
                )
            shape_key = module_name + ".fishertune_shape"
            layer.allocate(
                adapter_name,
                state_dict[key],
                state_dict[module_name + ".fishertune_ranks"],
                shape=state_dict[shape_key].tolist() if shape_key in state_dict else None,
            )
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
