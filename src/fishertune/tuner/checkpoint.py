"""Save and load checks of a FisherTune adapter: finite values, a complete layout, the active share.

A saved adapter holds, per targeted layer, its allocated entries (``fishertune_values``, ``_indices``,
``_ranks``) plus what the tensors alone do not say and a reload needs:

* ``<layer>.fishertune_shape`` for every targeted layer, also those that got no entry, so that a layer
  whose keys are missing is told apart from a layer that was never selected;
* ``<layer>.fishertune_active``: the layer's active prefix (the Eq. 16 schedule's state), so an adapter
  saved at ``delta_min`` reloads at ``delta_min``;
* ``base_model.model.fishertune_layout``: [targeted layers, targeted entries] of the model it was made for.

These extra entries are consumed at load time (they are not tensors of the model). Files written
before they existed still load; their missing layers are then only a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from peft.utils.other import AuxiliaryTrainingWrapper

from .layer import FisherTuneLayer

PREFIX = "base_model.model."
LAYOUT_KEY = PREFIX + "fishertune_layout"
_SUFFIXES = ("fishertune_values", "fishertune_indices", "fishertune_ranks", "fishertune_shape", "fishertune_active")


def tuner_layers(model: torch.nn.Module, adapter_name: str) -> dict[str, FisherTuneLayer]:
    """``{module name: layer}`` of the layers that target ``adapter_name`` (outside modules_to_save copies)."""
    aux, out = [], {}
    for name, module in model.named_modules():
        # An FSDP-wrapped model's state_dict has no FSDP infix; match its keys (as PEFT does).
        name = name.removeprefix("_fsdp_wrapped_module.")
        if isinstance(module, AuxiliaryTrainingWrapper):
            aux.append(name + ".")
        elif isinstance(module, FisherTuneLayer) and adapter_name in module.fishertune_active:
            if not any(name.startswith(a) for a in aux):
                out[name] = module
    return out


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """``(name, count)`` of the first floating tensor holding NaN/inf, in the mapping's order, else None."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and t.device.type != "meta":
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                return name, bad
    return None


def add_layout_for_save(model, adapter_name: str, to_return: dict, state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Refuse non-finite values (deltas and modules_to_save) and add the layout entries described above."""
    aux = {k: v for k, v in state_dict.items() if f".modules_to_save.{adapter_name}." in k}
    bad = first_nonfinite({**to_return, **aux})
    if bad is not None:
        raise ValueError(
            f"Refusing to save adapter '{adapter_name}': '{bad[0]}' holds {bad[1]} NaN/inf values. The training that "
            "produced it diverged; resume from an earlier checkpoint with a lower learning rate."
        )
    layers = tuner_layers(model, adapter_name)
    entries = 0
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight
        entries += weight.numel()
        to_return.setdefault(f"{name}.fishertune_shape.{adapter_name}", torch.tensor(tuple(weight.shape)))
        to_return[f"{name}.fishertune_active.{adapter_name}"] = torch.tensor(layer.fishertune_active[adapter_name])
    if layers:
        to_return[f"{LAYOUT_KEY}.{adapter_name}"] = torch.tensor([len(layers), entries])
    return to_return


def _origin(config, saved_layers: list[str], layout) -> str:
    base = getattr(config, "base_model_name_or_path", None)
    who = f"base model {base!r}" if base else "an unnamed base model"
    if layout is not None:
        return f"{who} with {int(layout[0])} targeted layers ({int(layout[1])} targeted entries)"
    span = f"{saved_layers[0]} ... {saved_layers[-1]}" if saved_layers else "none"
    return f"{who} with at least {len(saved_layers)} targeted layers ({span})"


def _short(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def allocate_from_checkpoint(model, config, adapter_name: str, state_dict: dict) -> dict:
    """Check ``state_dict`` and size every layer of ``model`` from it; returns it without the layout entries."""
    floats = {k: v for k, v in state_dict.items() if "fishertune_" in k or ".modules_to_save." in k}
    bad = first_nonfinite(floats)
    if bad is not None:
        raise ValueError(
            f"The adapter '{adapter_name}' holds {bad[1]} NaN/inf values in '{bad[0]}': the file comes from a diverged "
            "run or is corrupt. Load an earlier checkpoint."
        )
    layout = state_dict.pop(LAYOUT_KEY, None)
    saved: dict[str, dict[str, torch.Tensor]] = {}
    for key in list(state_dict):
        head, _, suffix = key.rpartition(".")
        if suffix in _SUFFIXES:
            saved.setdefault(head, {})[suffix] = state_dict[key]
    layers = tuner_layers(model, adapter_name)
    by_name = {}
    for name in saved:
        match = next((c for c in (name, name.removeprefix(PREFIX)) if c in layers), None)
        if match is None:
            raise ValueError(
                f"The adapter holds deltas for '{name}', which is not a FisherTune-targeted layer of this model: the "
                f"adapter was made for {_origin(config, sorted(saved), layout)}, or for other target_modules."
            )
        by_name[match] = name
    missing = [n for n in layers if n not in by_name]
    if missing:
        what = (
            f"The adapter has no keys for {len(missing)} of the {len(layers)} FisherTune layers of this model "
            f"({_short(missing)}); it was made for {_origin(config, sorted(saved), layout)}"
        )
        if layout is not None and int(layout[0]) > len(saved):
            raise ValueError(what + f"; the file holds only {len(saved)} of those layers: it is incomplete.")
        if layout is not None or any("fishertune_active" in parts for parts in saved.values()):
            raise ValueError(what + ". Load it onto that base model (same depth and target_modules).")
        warnings.warn(what + " (an older file: these layers may simply have no selected entry); they get no delta.")
    _check_ranks(saved, missing)
    trainable = {id(p): p.requires_grad for layer in layers.values() for p in layer.fishertune_values.values()}
    for name, layer in layers.items():
        parts = saved.get(by_name.get(name), {})
        empty = torch.zeros(0, dtype=torch.long)
        idx, ranks = parts.get("fishertune_indices", empty), parts.get("fishertune_ranks", empty)
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(
                f"The adapter's fishertune_indices of '{name}' hold duplicate entries: the file is corrupt."
            )
        shape = parts.get("fishertune_shape")
        layer.allocate(adapter_name, idx, ranks, shape=shape.tolist() if shape is not None else None)
        if idx.numel() == 0 and name in by_name:
            state_dict.pop(by_name[name] + ".fishertune_shape", None)  # an empty layer keeps no shape buffer
        active = parts.get("fishertune_active")
        if active is not None:
            n = int(active)
            if not 0 <= n <= idx.numel():
                raise ValueError(f"The adapter's active count {n} of '{name}' exceeds its {idx.numel()} entries.")
            layer.set_active_count(adapter_name, n)
    for key in [k for k in state_dict if k.endswith(".fishertune_active")]:
        del state_dict[key]
    # `allocate` re-enables the gradient of the active adapters (PEFT's set_adapter); a load must not change any
    # other adapter's trainability, and the loaded deltas train only when loaded with is_trainable=True.
    for layer in layers.values():
        for name, p in layer.fishertune_values.items():
            p.requires_grad_(not config.inference_mode if name == adapter_name else trainable.get(id(p), False))
    return state_dict


def _check_ranks(saved: dict, missing: list[str]) -> None:
    ranks = [parts["fishertune_ranks"].long() for parts in saved.values() if "fishertune_ranks" in parts]
    for name, parts in saved.items():
        r = parts.get("fishertune_ranks")
        if r is not None and r.numel() > 1 and not bool((r[1:] > r[:-1]).all()):
            raise ValueError(f"The adapter's fishertune_ranks of '{name}' are not increasing: the file is corrupt.")
    if not ranks:
        return
    flat = torch.cat(ranks)
    if torch.unique(flat).numel() != flat.numel():
        raise ValueError("The adapter's fishertune_ranks repeat a global rank across layers: the file is corrupt.")
    if flat.numel() and int(flat.max()) != flat.numel() - 1:
        raise ValueError(
            f"The adapter's global ranks have gaps ({flat.numel()} entries, highest rank {int(flat.max())}): the keys "
            f"of some selected layer are missing from the file (this model's layers without keys: "
            f"{_short(missing) or 'none'})."
        )


def check_saved_modules_to_save(model, adapter_name: str, config, saved_keys: list[str]) -> None:
    """Name the modules_to_save tensors a saved adapter lacks (PEFT itself would raise a bare KeyError)."""
    keys = set(saved_keys)
    missing = []
    for name, module in model.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            for k in module.adapter_state_dict_load_map(adapter_name):
                if f"{PREFIX}{name}.{k}" not in keys and f"{name}.{k}" not in keys:
                    missing.append(f"{name}.{k}")
    if missing:
        layers = sorted({k.rpartition(".")[0] for k in keys if k.endswith(".fishertune_shape")})
        raise ValueError(
            f"The saved adapter lacks {len(missing)} tensors of its modules_to_save ({_short(missing)}): it was made "
            f"for {_origin(config, layers, None)} with other modules_to_save, or the file is incomplete."
        )
