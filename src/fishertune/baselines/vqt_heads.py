"""How the package's segmentation heads read VQT's query outputs (our reading: VQT only defines a classifier).

VQT feeds the query outputs of all blocks, concatenated, to a linear classifier. For segmentation:

- Light head ([`~fishertune.models.LightSegmenter`]): the queries of each layer are averaged,
  layer-normalised (no affine: intermediate ViT features differ in scale from layer to layer) and
  concatenated over layers, and a linear map `vqt_classifier` [K, L*C] of that vector is added to
  every pixel's class logits. The head's classifier is a 1x1 conv, so this equals adding a projected
  context vector to the per-pixel features before it, at K*L*C parameters instead of (k*C)*L*C.
- Mask2Former ([`~fishertune.models.PyramidMask2Former`], HF `Mask2FormerTransformerModule`, found
  as Rein's token-query link finds it): Rein's `return_auto` applied to the query outputs. Each
  layer's (normalised) outputs are mapped to the decoder width by a shared `transform`, pooled over
  layers (max, mean, last), merged to one vector per VQT query, and a learned [num_queries, T] `mix`
  assigns them to the decoder queries, whose content (`inputs_embeds` of the masked-attention
  decoder, per image) they are added to. Rein's link replaces the query *parameters*, which HF
  repeats over the batch; VQT's outputs differ per image, so the decoder's forward is wrapped instead.

The final map of each link (`vqt_classifier`, `mix`) is zero-initialised: installing VQT leaves the
predictions unchanged. The links hang in the head under `vqt_`-prefixed names, so
`save_method_state` saves them with the queries and the trainer gives them the backbone lr, as it
does for Rein's head-side `rein_querys2feat`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import wrap_forward
from .rein import _find_query_module


def _normalized(features: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(features, features.shape[-1:])


class VQTLightLink(nn.Module):
    """Image-level class logits from VQT's query outputs, added to the light head's per-pixel logits."""

    def __init__(self, num_layers: int, dim: int, num_labels: int):
        super().__init__()
        self.classifier = nn.Linear(num_layers * dim, num_labels, bias=False)  # the head has the bias
        nn.init.zeros_(self.classifier.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` [B, L, T, C] -> logits offset [B, K, 1, 1]."""
        context = _normalized(features.mean(dim=2)).flatten(1)
        return self.classifier(context)[:, :, None, None]


class VQTQueryLink(nn.Module):
    """Per-image Mask2Former query content from VQT's query outputs (Rein's `return_auto` pooling)."""

    def __init__(self, dim: int, num_vqt_queries: int, hidden_dim: int, num_queries: int):
        super().__init__()
        self.transform = nn.Linear(dim, hidden_dim)
        self.merge = nn.Linear(3 * hidden_dim, hidden_dim)
        self.mix = nn.Parameter(torch.zeros(num_queries, num_vqt_queries))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` [B, L, T, C] -> query content offset [B, num_queries, hidden_dim]."""
        x = self.transform(_normalized(features))  # [B, L, T, D]
        pooled = torch.cat([x.amax(dim=1), x.mean(dim=1), x[:, -1]], dim=-1)  # [B, T, 3D]
        return torch.einsum("qt,btd->bqd", self.mix, self.merge(pooled))


def vqt_head(model: nn.Module) -> tuple[str, nn.Module, dict] | None:
    """`(path, module, spec)` of the head VQT links to in `model`, or None; `spec["kind"]` names it."""
    from ..models.light import LightHead

    found = _find_query_module(model)
    if found is not None:
        num_queries, hidden = found[1].queries_features.weight.shape
        return found[0], found[1], {"kind": "mask2former", "hidden_dim": int(hidden), "num_queries": int(num_queries)}
    for name, module in model.named_modules():
        if isinstance(module, LightHead):
            return name, module, {"kind": "light", "num_labels": int(module.classifier.out_channels)}
    return None


def link_num_parameters(spec: dict | None, dim: int, num_layers: int, num_vqt_queries: int) -> int:
    """Parameters of the link that `install_link` would make for a head described by `spec`."""
    if spec is None:
        return 0
    if spec["kind"] == "light":
        return num_layers * dim * spec["num_labels"]
    d, q = spec["hidden_dim"], spec["num_queries"]
    return (dim * d + d) + (3 * d * d + d) + q * num_vqt_queries


def install_link(found: tuple[str, nn.Module, dict], queries: nn.Module, num_layers: int, dim: int) -> None:
    """Attach the link for `found = vqt_head(model)` and make the head read `queries.features()`."""
    _, module, spec = found
    t = queries.query_embeddings.shape[1]
    if spec["kind"] == "light":
        module.vqt_classifier = VQTLightLink(num_layers, dim, spec["num_labels"])
        wrap_forward(module, _light_forward(module.vqt_classifier, queries))
    else:
        module.vqt_query_link = VQTQueryLink(dim, t, spec["hidden_dim"], spec["num_queries"])
        wrap_forward(module.decoder, _decoder_forward(module.vqt_query_link, queries))


def _light_forward(link: VQTLightLink, queries: nn.Module):
    def make(original):
        def forward(features, *args, **kwargs):
            logits = original(features, *args, **kwargs)
            return logits + link(queries.features(batch_size=logits.shape[0])).to(logits.dtype)

        return forward

    return make


def _decoder_forward(link: VQTQueryLink, queries: nn.Module):
    def make(original):
        def forward(*args, **kwargs):
            embeds = kwargs.get("inputs_embeds")
            if args or embeds is None:  # HF's transformer module passes everything by keyword
                raise NotImplementedError("VQT's query link needs the decoder called with inputs_embeds=.")
            offset = link(queries.features(batch_size=embeds.shape[1]))  # [B, Q, D]
            kwargs["inputs_embeds"] = embeds + offset.transpose(0, 1).to(embeds.dtype)
            return original(**kwargs)

        return forward

    return make
