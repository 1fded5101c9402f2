"""Rein's AdamW param groups, and an AdamW that touches only the active prefix of FisherTune deltas.

Groups (empty ones are left out; the order is fixed so that a checkpoint's optimizer state maps
back onto a rebuilt optimizer): decoder with decay, decoder without decay, backbone with decay,
backbone without decay, backbone sparse deltas. No decay on norms, biases, embeddings, position
embeddings, CLS/mask/register tokens and query/level embeddings (Rein's `paramwise_cfg`), nor on
the learned tokens of the `fishertune.baselines` methods (Rein's tokens and scale, VPT's prompts).
The baselines' parameters (prefixed `rein_`, `vpt_`, ...) are backbone groups, with the backbone lr,
wherever they hang (Rein's query link and VQT's head links sit in the head).

The sparse deltas (`fishertune_values`) hold exactly the allocated entries, so their optimizer
state is allocated-sized. Only the active prefix of each is updated: the inactive tail gets no
decay, no moment update and no step count, and each entry counts its own Adam steps, so an entry
activated late by Eq. 16 starts with the bias correction of a fresh Adam instead of a jump.

What the decay of a sparse delta acts on (`sparse_weight_decay`): ``"delta"`` (default) decays the delta,
``delta <- delta (1 - lr wd)``, a pull of the tuned weight W0 + delta towards the pretrained W0 (L2-SP-like,
as the decay of LoRA's or an adapter's parameters acts); ``"weight"`` decays the tuned weight itself, as AdamW
does in full fine-tuning, ``delta <- delta - lr wd (W0 + delta)``, so that an active entry moves exactly as
AdamW would move that entry of a dense weight.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..tuner import FisherTuneLayer

# Learned tokens and lookup tables, whatever their module (HF ViTs, CLIP, Mask2Former, EoMT). The
# patch projection ("patch_embeddings.projection") is a conv weight and keeps its decay.
_NO_DECAY_KEYS = (
    "position_embedding",
    "pos_embed",
    "cls_token",
    "mask_token",
    "register_tokens",
    "class_embedding",
    "query_embed",
    "queries_embedder",
    "query_feat",
    "queries_features",
    "level_embed",
    "learnable_tokens",
    "layer_scale",  # DINOv2's per-channel LayerScale: a scale like a norm's weight
    # fishertune.baselines: Rein's tokens (matched by "learnable_tokens") and scale, VPT-deep's prompts
    "rein_tokens.scale",
    "vpt_prompts.prompt_embeddings",
)
SPARSE_KEY = "fishertune_values"
#: What weight decay acts on for the sparse deltas (see the module docstring).
SPARSE_DECAY = ("delta", "weight")
#: Attribute prefixes of the `fishertune.baselines` methods' modules. Their parameters are backbone-side
#: (backbone lr) even where one sits in the head (Rein's token-query link on Mask2Former's queries).
BASELINE_PREFIXES = ("rein_", "vpt_", "adaptformer_", "vqt_")


def _is_norm(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
        or "norm" in type(module).__name__.lower()
    )


def no_weight_decay(name: str, module: nn.Module) -> bool:
    """Rein's rule: no decay for norms, biases, embeddings and query/level embeddings."""
    if SPARSE_KEY in name:
        return False
    leaf = name.rsplit(".", 1)[-1]
    return (
        _is_norm(module)
        or isinstance(module, nn.Embedding)
        or leaf == "bias"
        or any(k in name.lower() for k in _NO_DECAY_KEYS)
    )


def build_param_groups(
    model: nn.Module, backbone_ids: set[int], decoder_lr: float, backbone_lr: float, weight_decay: float
) -> list[dict]:
    """Named AdamW groups of `model`'s trainable parameters (see the module docstring)."""
    buckets: dict[str, list[nn.Parameter]] = {
        k: [] for k in ("decoder", "decoder_no_decay", "backbone", "backbone_no_decay", "backbone_sparse")
    }
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            baseline = any(s.startswith(BASELINE_PREFIXES) for s in name.split("."))
            part = "backbone" if id(p) in backbone_ids or baseline else "decoder"
            if SPARSE_KEY in name:
                buckets["backbone_sparse"].append(p)
            elif no_weight_decay(name, module):
                buckets[f"{part}_no_decay"].append(p)
            else:
                buckets[part].append(p)
    groups = []
    for key, params in buckets.items():
        if params:
            lr = backbone_lr if key.startswith("backbone") else decoder_lr
            wd = 0.0 if key.endswith("no_decay") else weight_decay
            groups.append(
                {
                    "params": params,
                    "lr": lr,
                    "weight_decay": wd,
                    "group_name": key,
                    "sparse_prefix": key == "backbone_sparse",
                }
            )
    return groups


def sparse_prefix_hooks(model: nn.Module) -> tuple[dict, dict]:
    """``(active_counts, base_values)`` of every FisherTune delta of ``model`` for `FisherTuneAdamW`: its active
    prefix length, and a function ``n -> W0`` at the delta's first ``n`` entries (the pretrained values)."""
    counts, bases = {}, {}
    for module in model.modules():
        if isinstance(module, FisherTuneLayer):
            for adapter, values in module.fishertune_values.items():
                counts[values] = functools.partial(module.fishertune_active.get, adapter, 0)
                bases[values] = functools.partial(_base_prefix, module, adapter)
    return counts, bases


def _base_prefix(layer, adapter: str, n: int) -> torch.Tensor:
    return layer.get_base_layer().weight.detach().reshape(-1)[layer.fishertune_indices[adapter][:n].long()]


class FisherTuneAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW`; groups with `sparse_prefix=True` update only each parameter's active prefix.

    Args:
        params: param groups as from `build_param_groups`.
        active_counts: `{parameter: callable returning its active prefix length}` for the sparse
            groups (read at every step, so Eq. 16 changes need no optimizer call). A sparse
            parameter without an entry is treated as fully active.
        sparse_weight_decay (`str`, defaults to `"delta"`): what the decay of the sparse groups acts on,
            `"delta"` or `"weight"` (W0 + delta; needs `base_values`), see the module docstring.
        base_values: `{parameter: callable n -> the pretrained W0 at its first n entries}`
            (`sparse_prefix_hooks`), for `sparse_weight_decay="weight"`.
        **kwargs: `torch.optim.AdamW` arguments (`lr`, `betas`, `eps`, `weight_decay`).
    """

    def __init__(
        self,
        params: Iterable,
        active_counts: Mapping[nn.Parameter, Callable[[], int]] | None = None,
        sparse_weight_decay: str = "delta",
        base_values: Mapping[nn.Parameter, Callable[[int], torch.Tensor]] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(params, **kwargs)
        if sparse_weight_decay not in SPARSE_DECAY:
            raise ValueError(f"sparse_weight_decay must be one of {SPARSE_DECAY}, got {sparse_weight_decay!r}.")
        self.active_counts = dict(active_counts or {})
        self.sparse_weight_decay, self.base_values = sparse_weight_decay, dict(base_values or {})
        if sparse_weight_decay == "weight":
            missing = [
                i
                for g in self.param_groups
                if g.get("sparse_prefix")
                for i, p in enumerate(g["params"])
                if p not in self.base_values
            ]
            if missing:
                raise ValueError(
                    "sparse_weight_decay='weight' decays W0 + delta and needs the pretrained W0 of "
                    "every sparse delta: pass base_values=sparse_prefix_hooks(model)[1]."
                )
        for group in self.param_groups:
            if group.get("sparse_prefix") and (group["amsgrad"] or group["maximize"]):
                raise ValueError("The sparse FisherTune group supports plain AdamW only (no amsgrad/maximize).")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hidden = []
        for group in self.param_groups:
            if not group.get("sparse_prefix"):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._prefix_step(p, group)
                # AdamW skips parameters without a gradient: hide it so the dense update leaves p alone.
                hidden.append((p, p.grad))
                p.grad = None
        try:
            super().step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        return loss

    def _prefix_step(self, p: nn.Parameter, group: dict) -> None:
        state = self.state[p]
        if not state:
            # torch's Adam expects a scalar "step" (it is checked on load); the bias correction uses the
            # per-entry count "entry_step".
            state["step"] = torch.tensor(0.0)
            state["entry_step"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        count = self.active_counts.get(p)
        n = p.numel() if count is None else int(count())
        if n == 0:
            return
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        x, g = p[:n], p.grad[:n].to(p.dtype)
        m, v, t = state["exp_avg"][:n], state["exp_avg_sq"][:n], state["entry_step"][:n]
        t.add_(1)
        if self.sparse_weight_decay == "weight" and wd:  # decoupled decay of the tuned weight W0 + delta
            x.sub_((lr * wd) * (self.base_values[p](n).to(x) + x))
        else:  # of the delta: a pull towards W0
            x.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc1 = 1 - beta1 ** t.float()
        bc2 = 1 - beta2 ** t.float()
        denom = (v.float() / bc2).sqrt_().add_(eps)
        x.sub_((lr * m.float() / bc1 / denom).to(p.dtype))


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of `params` over processes (parameters DDP's reducer does not hold: those that appear
    or unfreeze after the model was wrapped). The same graph on every rank gives the same list of gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)  # gloo has no AVG: sum then divide
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def build_optimizer(model: nn.Module, backbone_ids: set[int], args) -> "FisherTuneAdamW":
    """The `FisherTuneAdamW` over `model`'s trainable parameters in Rein's groups (`build_param_groups`; `backbone_ids`:
    the ids of the backbone's parameters), with the training arguments' learning rates and AdamW settings."""
    groups = build_param_groups(
        model, backbone_ids,
        decoder_lr=args.learning_rate if args.decoder_learning_rate is None else args.decoder_learning_rate,
        backbone_lr=args.learning_rate if args.backbone_learning_rate is None else args.backbone_learning_rate,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    counts, bases = sparse_prefix_hooks(model)
    return FisherTuneAdamW(groups, active_counts=counts, lr=args.learning_rate,
                           betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                           weight_decay=args.weight_decay, sparse_weight_decay=args.sparse_weight_decay,
                           base_values=bases)  # fmt: skip


def carry_moments(old, new: torch.optim.Optimizer) -> None:
    """Give `new` the optimizer state `old` (None, or an optimizer, possibly accelerate-wrapped) holds for the same
    parameters."""
    old_state = getattr(old, "optimizer", old).state if old is not None else {}
    for group in new.param_groups:
        for p in group["params"]:
            if p in old_state:
                new.state[p] = old_state[p]


def fast_forward(scheduler, step: int) -> None:
    """Set a fresh `LambdaLR` scheduler to `step` of its curve (other schedulers are left as they are)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.last_epoch = step - 1
            scheduler.step()
