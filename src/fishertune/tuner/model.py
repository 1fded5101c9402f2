"""FisherTuneModel: injection, global selection, the active fraction, and save/load hooks."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from peft.utils.integrations import init_empty_weights
from torch import nn

from .budget import budget_entries, num_backbone_params
from .checkpoint import add_layout_for_save, allocate_from_checkpoint, check_saved_modules_to_save, tuner_layers
from .combine import allocate_placeholders, allocation_of, check_weighted_request, weighted_union
from .config import FisherTuneConfig
from .data_free import magnitude_scores, random_scores
from .layer import FisherTuneLayer, Linear
from .mixed_batch import adapter_names_hooks
from .presets import target_regex
from .schedule import active_fraction
from .selection import global_topk

_CKPT_PREFIX = "base_model.model."


class FisherTuneModel(BaseTuner):
    """Sparse fine-tuning of selected weight entries (FisherTune, Zhao et al., CVPR 2025).

    After `get_peft_model(model, FisherTuneConfig(...))` every targeted linear is wrapped and the
    config's data-free `init_criterion` (default |W|) allocates the top `delta_max` of all targeted
    entries, so generic PEFT code can train the adapter at once; `select(scores)` replaces that
    choice by one global ranking of DR-FIM (or other) scores. During tuning,
    `set_active_fraction(p)` or `set_schedule_step(t, T)` (Eq. 16) activates a nested prefix of
    the ranking. Saving and loading check the adapter (see `fishertune.tuner.checkpoint`).

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
        if config.budget_base == "backbone":
            # Counted before wrapping: the base parameters of the backbone, not the deltas of other adapters.
            self._fishertune_backbone_params = getattr(self, "_fishertune_backbone_params", {})
            self._fishertune_backbone_params[adapter_name] = num_backbone_params(model)
        super().inject_adapter(
            model,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            **kwargs,
        )
        saved_keys = config.__dict__.pop("_fishertune_saved_keys", None)  # set by FisherTuneConfig.from_pretrained
        if saved_keys is not None:
            check_saved_modules_to_save(model, adapter_name, config, saved_keys)
        if config.allocation is not None:
            # A config read from a saved adapter: size the layers as saved, so any loader can copy the file in.
            trainable = self._trainable_flags()
            with init_empty_weights() if low_cpu_mem_usage else nullcontext():
                allocate_placeholders(self._tuner_layers(), adapter_name, config.allocation)
            self._after_allocation(adapter_name, trainable)
        elif config.init_criterion is not None:
            # With low_cpu_mem_usage the deltas are created on the meta device (their values come from a checkpoint);
            # the selection itself still reads the real base weights.
            with init_empty_weights() if low_cpu_mem_usage else nullcontext():
                self.select(self._init_scores(config, adapter_name), adapter_name=adapter_name)

    @staticmethod
    def _check_target_module_exists(peft_config, key):
        found = check_target_module_exists(peft_config, key)
        # PEFT applies layers_to_transform to listed target names only; the inferred Eq. 3 targets are a regex, so
        # the same block-index rule is applied here to the leaf name of a regex match.
        if found and isinstance(peft_config.target_modules, str) and peft_config.layers_to_transform is not None:
            probe = copy.copy(peft_config)
            probe.target_modules, probe.exclude_modules = {key.rsplit(".", 1)[-1]}, None
            found = check_target_module_exists(probe, key)
        return found

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
            return magnitude_scores(weights)
        return random_scores(weights, config.seed)

    # -- selection and schedule -----------------------------------------------------------------
    def _tuner_layers(self) -> dict[str, FisherTuneLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, FisherTuneLayer)}

    def fishertune_target_weights(self) -> dict[str, nn.Parameter]:
        """`{module name: base weight}` of every targeted linear, in model order (the score keys)."""
        return {n: m.get_base_layer().weight for n, m in self._tuner_layers().items()}

    def select(
        self,
        scores: Mapping[str, torch.Tensor],
        adapter_name: Optional[str] = None,
        init_weights: Optional[bool] = None,
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
                "Scores must cover exactly the targeted layers. "
                f"Missing: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                f"not targeted: {extra[:5]}{'...' if len(extra) > 5 else ''}. "
                "Use model.fishertune_target_weights() keys."
            )
        shapes = {n: m.get_base_layer().weight.shape for n, m in layers.items()}
        k = self._budget(adapter_name, config.delta_max)
        selection = global_topk({n: scores[n] for n in layers}, config.delta_max, shapes=shapes, num_entries=k)
        init = config.init_weights if init_weights is None else init_weights
        trainable = self._trainable_flags()
        for name, layer in layers.items():
            layer.allocate(adapter_name, selection[name].indices, selection[name].ranks, init_weights=init)
        self._after_allocation(adapter_name, trainable)
        return {n: sel.indices.numel() for n, sel in selection.items()}

    def _trainable_flags(self) -> dict[int, bool]:
        return {id(p): p.requires_grad for m in self._tuner_layers().values() for p in m.fishertune_values.values()}

    def _after_allocation(self, adapter_name: str, trainable: dict[int, bool]) -> None:
        """New deltas follow the adapter's state (active and not inference_mode, as PEFT sets it); `allocate`
        re-enables the gradient of every active adapter, so the others get their flag back. They also take the dtype
        PEFT gave the adapter (fp16/bf16 deltas upcast to fp32 unless autocast_adapter_dtype=False)."""
        train_new = adapter_name in self.active_adapters and not self.peft_config[adapter_name].inference_mode
        for layer in self._tuner_layers().values():
            for name, p in layer.fishertune_values.items():
                p.requires_grad_(train_new if name == adapter_name else trainable.get(id(p), False))
        autocast = getattr(self, "_fishertune_autocast", {})
        if adapter_name in autocast:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast[adapter_name])

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

    def _budget(self, adapter_name: str, fraction: float) -> int:
        """Entries that `fraction` of the config's budget base stands for (see `FisherTuneConfig.budget_base`)."""
        config = self.peft_config[adapter_name]
        backbone = getattr(self, "_fishertune_backbone_params", {}).get(adapter_name)
        return budget_entries(
            fraction, config.budget_base, self.num_targeted(), backbone, config.delta_max, config.delta_max_count
        )

    def num_targeted(self) -> int:
        """N: the number of targeted weight entries (the base of delta_min and delta_max)."""
        return sum(m.get_base_layer().weight.numel() for m in self._tuner_layers().values())

    def num_allocated(self, adapter_name: Optional[str] = None) -> int:
        adapter_name = adapter_name or self.active_adapters[0]
        return sum(m.num_allocated(adapter_name) for m in self._tuner_layers().values())

    def set_active_fraction(self, fraction: float, adapter_name: Optional[str] = None) -> int:
        """Activate the top `fraction` of all targeted entries (a prefix of the ranking).

        `fraction` has the base of `delta_max` (targeted entries, or backbone parameters with
        `budget_base="backbone"`); it cannot exceed the allocated share. Returns the number of active entries.
        """
        adapter_name = adapter_name or self.active_adapters[0]
        allocated = self.num_allocated(adapter_name)
        if allocated == 0:
            raise RuntimeError("Nothing is allocated yet: call `select(scores)` before setting the active fraction.")
        if fraction < 0 or fraction > self.peft_config[adapter_name].delta_max + 1e-12:
            raise ValueError(
                f"Active fraction {fraction} is outside [0, delta_max={self.peft_config[adapter_name].delta_max}]."
            )
        n_global = min(allocated, self._budget(adapter_name, fraction))
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

    # -- combining adapters ---------------------------------------------------------------------
    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str) -> None:
        """Add `adapter_name` whose delta is sum_i weights[i] * delta(adapters[i]) (active entries; exact).

        Every layer holds the union of the adapters' active entries with the weighted sums as values; all of them
        are active and the new adapter is not trainable until made so (as LoRA's `add_weighted_adapter`). Adapters
        with `modules_to_save` are refused: fully trained modules have no weighted sum of sparse deltas.
        """
        adapters, weights = list(adapters), [float(w) for w in weights]
        check_weighted_request(self.peft_config, adapters, weights, adapter_name)
        layers = {n: m for n, m in self._tuner_layers().items() if any(a in m.fishertune_active for a in adapters)}
        combined = weighted_union(layers, adapters, weights)
        total = sum(idx.numel() for idx, _, _ in combined.values())
        if total == 0:
            raise ValueError(f"Adapters {adapters} have no active entry to combine.")
        base_cfg = self.peft_config[adapters[0]]
        backbone = getattr(self, "_fishertune_backbone_params", {}).get(adapters[0])
        if backbone is not None:
            self._fishertune_backbone_params[adapter_name] = backbone
        share = total / (backbone if base_cfg.budget_base == "backbone" else self.num_targeted())
        self.peft_config[adapter_name] = replace(
            base_cfg, target_modules=set(layers), exclude_modules=None, layers_to_transform=None, layers_pattern=None,
            init_criterion=None, allocation=None, delta_max=min(1.0, share), delta_min=min(1.0, share),
        )  # fmt: skip
        self.inject_adapter(self.model, adapter_name)
        trainable = self._trainable_flags()
        for name, layer in layers.items():
            idx, ranks, values = combined.get(name, (torch.zeros(0, dtype=torch.long),) * 2 + (None,))
            layer.allocate(adapter_name, idx, ranks)
            if values is not None:
                with torch.no_grad():
                    layer.fishertune_values[adapter_name].copy_(values)
        self._after_allocation(adapter_name, trainable)  # not active: its deltas stay frozen

    # -- per-sample adapters --------------------------------------------------------------------
    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """`forward(..., adapter_names=[...])`: one adapter (or "__base__") per sample, at inference (as LoRA)."""
        with adapter_names_hooks(self.model, self.training, kwargs.pop("adapter_names", None)):
            yield

    # -- save / load ----------------------------------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT's selection of the adapter's tensors, refused if non-finite, plus the layout (see `checkpoint`)."""
        out = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        out = add_layout_for_save(model, adapter_name, out, state_dict)
        # Saved with the config (written after the tensors), so that loaders sizing the adapter before reading the
        # file allocate these shapes (see `FisherTuneConfig.allocation`).
        config.allocation = allocation_of(
            {n.removeprefix(_CKPT_PREFIX): m for n, m in tuner_layers(model, adapter_name).items()}, adapter_name
        )
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Check the checkpoint and size every layer from its indices before PEFT loads the values into it."""
        state_dict = allocate_from_checkpoint(model, config, adapter_name, dict(state_dict))
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
