"""The training methods of `FisherTuneTrainingArguments.method`: FisherTune's sparse tuning and the baselines.

Each method is an object that knows how it trains (`prepare`: the model it trains, wrapped with PEFT where it needs
it, decoder handling alike for all) and how it saves (`save`), in one registry (`METHODS`) that the trainer and
`phase_lengths` (warm-up and estimation), `experiment.run` (saving) and the model card (its line) read. The selection
criterion (`fishertune.fisher` registry) only matters for `method="sparse"`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from peft import PeftModel, get_peft_model
from torch import nn
from transformers import TrainingArguments

from ..baselines import api as baselines
from ..outputs import BASELINE_DIR
from ..registry import Registry
from ..tuner import target_regex
from .setup import backbone_parameters, base_model, decoder_modules, is_fishertune


@dataclass(frozen=True)
class Method:
    """How one method trains and saves; the base class trains and saves the plain model whole.

    Args:
        name (`str`): the value of `FisherTuneTrainingArguments.method`.
        card_line (`str`): the model card's sentence for a baseline (empty for FisherTune's own card).
    """

    name: str
    card_line: str = ""
    #: `"adapter"` (a PEFT adapter over base_model/) or `"whole"` (the plain model).
    saved_as = "whole"
    #: FisherTune: T1 warm-up by default (`warmup_phase_ratio`), phase 2 selects the entries phase 3 tunes.
    is_sparse = False

    def prepare(self, model: nn.Module, args: TrainingArguments) -> nn.Module:
        """The model this method trains, from the segmenter `model` (or the PeftModel the caller built)."""
        if isinstance(model, PeftModel):
            raise ValueError(f"method={self.name!r} trains the plain model; pass the model without its PEFT wrapper.")
        return self._prepare(model, args)

    def _prepare(self, model: nn.Module, args: TrainingArguments) -> nn.Module:
        return model.requires_grad_(True)

    def save(self, model: nn.Module, directory: str, merge: bool = False) -> nn.Module:
        """Write the trained model into `directory`; return the model as saved (what gets evaluated)."""
        model.save_pretrained(directory)
        return model


@dataclass(frozen=True)
class Frozen(Method):
    def _prepare(self, model, args):
        model.requires_grad_(True)
        for _, param in backbone_parameters(model):
            param.requires_grad_(False)
        return model


@dataclass(frozen=True)
class Baseline(Method):
    """A `fishertune.baselines` method (default config) on the plain model, backbone frozen; also saved as its own
    parameters (`load_method_state` puts them back on the backbone)."""

    def _prepare(self, model, args):
        try:
            _, state = baselines.installed_state(model)
        except ValueError:
            state = None
        if state is not None:
            if state["config"].method != self.name:
                raise ValueError(
                    f"method={self.name!r} but the model already holds the {state['config'].method!r} baseline."
                )
            return model  # e.g. a model built and installed by the caller with its own config
        model.requires_grad_(True)  # the decoder (and the method's parameters) train; apply freezes the backbone
        return baselines.apply_method(model, baselines.METHODS.get(self.name).config_cls())

    def save(self, model, directory, merge=False):
        model = super().save(model, directory)
        baselines.save_method_state(model, os.path.join(directory, BASELINE_DIR))
        return model


@dataclass(frozen=True)
class _Adapter(Method):
    """A PEFT adapter over the segmenter, the decoder in `modules_to_save`; or the PeftModel the caller built."""

    saved_as = "adapter"

    def prepare(self, model, args):
        if isinstance(model, PeftModel):
            self._check_given(model, args)
            return model
        return get_peft_model(model, self._config(model, args, decoder_modules(model)))

    def _check_given(self, model: PeftModel, args) -> None:
        raise NotImplementedError

    def _config(self, model: nn.Module, args, decoder: list[str]):
        raise NotImplementedError

    def save(self, model, directory, merge=False):
        if merge:
            model = model.merge_and_unload()
        model.save_pretrained(directory)
        return model


@dataclass(frozen=True)
class Lora(_Adapter):
    def _check_given(self, model, args):
        if is_fishertune(model):
            raise ValueError("method='lora' was given a FisherTune PeftModel; use method='sparse' (FisherTune).")

    def _config(self, model, args, decoder):
        return args.lora_config(target_modules=target_regex(model), modules_to_save=decoder)


@dataclass(frozen=True)
class Sparse(_Adapter):
    """FisherTune: sparse deltas on the entries phase 2 selects (`FisherTuneConfig` with the run's budget)."""

    is_sparse = True

    def _check_given(self, model, args):
        if not is_fishertune(model):
            raise ValueError(
                f"method='sparse' needs a FisherTune adapter but the PeftModel holds "
                f"{type(model.peft_config[model.active_adapter]).__name__}; use method='lora' for other PEFT methods."
            )
        config = model.peft_config[model.active_adapter]
        # The run's budget, resolved as the adapter resolves it, must be the adapter's (what the arguments set).
        wanted = args.tuner_config()
        for name, value in args.tuner_settings().items():
            saved = getattr(config, name)
            if getattr(wanted, name) != saved:
                raise ValueError(
                    f"args.{name}={value!r} but the FisherTuneConfig of the model says {saved!r}; "
                    f"leave args.{name} unset (None) or make them agree."
                )

    def _config(self, model, args, decoder):
        # Algorithm 1 selects from its estimated scores after the warm-up; a data-free selection at injection would
        # be a global top-k over every targeted entry (277M for ViT-L) thrown away at the end of phase 2.
        return args.tuner_config(modules_to_save=decoder, init_criterion=None)


#: The methods by name, FisherTune's first.
METHODS: Registry[Method] = Registry("method", "fishertune.training.METHODS.register(<a Method subclass>(name))")
for _method in (
    Sparse("sparse"),
    Method("full", card_line="every weight of the backbone and the decoder fine-tuned (full fine-tuning)."),
    Frozen("frozen", card_line="the backbone frozen, only the decoder trained."),
    Lora("lora", card_line="PEFT LoRA on the q, k, v and FFN linears of every block, plus the decoder."),
    # fishertune.baselines' own registry: a baseline added there is a method here with no other edit.
    *(Baseline(b.name, card_line=b.config_cls.card_line) for b in baselines.METHODS.values()),
):
    METHODS.register(_method)
#: The methods other than FisherTune's sparse tuning (the baselines of the ablation).
BASELINE_METHODS = tuple(n for n, m in METHODS.items() if not m.is_sparse)


def get_method(name: str) -> Method:
    """The method `name`: `'sparse'` is FisherTune (pick the selection with `criterion`), the others the baselines."""
    return METHODS.get(name)


def prepare_model(model: nn.Module, args: TrainingArguments) -> nn.Module:
    """Return the model `args.method` trains (wrapping it with PEFT where the method needs it)."""
    model = get_method(args.method).prepare(model, args)
    if args.reentrant_checkpointing():
        # The frozen patch embedding's output does not require grad, so a reentrant checkpoint would never run the
        # backward of its blocks: the deltas / adapters would get no gradient. transformers does the same for PEFT.
        base_model(model).enable_input_require_grads()
    return model
