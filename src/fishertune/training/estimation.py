"""Phase 2 of Algorithm 1 in the trainer: estimate the scores over T2 batches, select, write the files.

`FisherTuneTrainer.start_tuning` calls `estimate_and_select` at the end of phase 1 (method "sparse") and keeps and
logs the `EstimationResult` it returns.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from transformers.utils import logging

from .. import atomic
from ..outputs import PLOT_NAME, SCORES_NAME, SELECTION_NAME, STATISTICS_NAME
from ..tuner import FisherTuneLayer
from . import bad_files

logger = logging.get_logger(__name__)


@dataclass
class EstimationResult:
    """What phase 2 produced: the scores (broadcast from rank 0), the selection's summary (allocated entries and
    shares per target kind), the number of batches T2 and the `fishertune.fisher.EstimationTiming`."""

    scores: dict
    summary: dict
    batches: int
    timing: Any

    def log_entry(self) -> dict[str, float]:
        """The phase-2 log entry (`phase` 2, the batches, the summary, the estimation's seconds when it read data)."""
        seconds = {} if self.timing.total_s is None else {"estimation_seconds": self.timing.total_s}
        if self.timing.seconds_per_batch is not None:
            seconds["estimation_seconds_per_batch"] = self.timing.seconds_per_batch
        return {"phase": 2.0, "estimation_batches": float(self.batches), **self.summary, **seconds}


@contextlib.contextmanager
def _restore_epoch(dataset, epoch):
    try:
        yield
    finally:
        if epoch is not None:
            dataset.set_epoch(epoch)


def estimate_and_select(model, args, make_loader: Callable[[], Any], dataset, batches: int) -> EstimationResult:
    """Estimate over `batches` batches of `make_loader()` (with a private RNG stream), broadcast the scores from rank
    0, select them in `model`, save the scores, selection and plot (`args.should_save`), and return the result.
    `dataset` is the training dataset, whose epoch the new loader must not change."""
    from .. import fisher

    config = args.estimation_config(batches)
    devices = [torch.cuda.current_device()] if args.device.type == "cuda" else []
    # A private RNG stream: the estimation (data order, DSU draws, sampled labels) is the same whenever it
    # runs, and training after it draws the same numbers as a run resumed from a later checkpoint.
    # A fresh loader may reset the dataset's epoch (accelerate does when its sampler has none); the
    # training loader's must survive it.
    epoch = getattr(dataset, "epoch", None)
    with torch.random.fork_rng(devices=devices), _restore_epoch(dataset, epoch):
        torch.manual_seed(args.seed)
        loader = bad_files.AgreedLoader(make_loader(), lambda err: bad_files.agree(err, args.world_size))
        weights = model.fishertune_target_weights()
        timing = fisher.EstimationTiming()
        if args.save_estimation_statistics and fisher.get_criterion(config.criterion).needs_data:
            stats = fisher.estimate_statistics(
                model, loader, weights, config, per_batch_delta=True, disable_tqdm=args.disable_tqdm, timing=timing
            )
            if args.should_save:  # F, F', both dF readings: any criterion or exchange can be re-scored
                os.makedirs(args.output_dir, exist_ok=True)
                atomic.write_with(
                    os.path.join(args.output_dir, STATISTICS_NAME), lambda tmp: fisher.save_statistics(stats, tmp)
                )
            # Saving the statistics happens between the passes and the scoring, outside both timings.
            scores = {
                n: s.detach().float().cpu() for n, s in fisher.scores_from_stats(stats, config, timing=timing).items()
            }
        else:
            scores = fisher.estimate_scores(
                model, loader, weights, config, disable_tqdm=args.disable_tqdm, timing=timing
            )
    # The Trainer zeroed the gradients before this callback; none may leak into the first tuning step.
    model.zero_grad(set_to_none=True)
    scores = _broadcast(scores, args.device)
    counts = model.select(scores)
    summary = _selection_summary(counts, model.num_targeted())
    # The loader may hold fewer batches than T2 asks for: the record says how many the scores come from.
    t2 = batches
    used = timing.num_batches if fisher.get_criterion(config.criterion).needs_data else t2
    if used < t2:
        logger.warning(
            f"estimation_batches={t2} asks for more batches than the training data holds: the scores "
            f"are estimated over {used} batch(es), recorded as estimation_batches={used}."
        )
        summary["estimation_batches_requested"] = float(t2)
    summary["estimation_batches"] = float(used)
    if args.should_save:
        _write_selection(fisher, model, scores, counts, summary, args)
    return EstimationResult(scores=scores, summary=summary, batches=batches, timing=timing)


def _broadcast(scores: dict, device) -> dict:
    # The estimator promises equal scores on all ranks; broadcasting makes the masks equal by construction.
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return scores
    out = {}
    for name, s in scores.items():
        t = s.to(device).float().contiguous()
        dist.broadcast(t, src=0)
        out[name] = t.cpu()
    return out


def _selection_summary(counts: dict[str, int], num_targeted: int) -> dict[str, float]:
    total = max(sum(counts.values()), 1)
    by_kind: dict[str, int] = {}
    for name, n in counts.items():
        kind = name.rsplit(".", 1)[-1]
        by_kind[kind] = by_kind.get(kind, 0) + n
    summary = {
        "allocated_entries": float(sum(counts.values())),
        "allocated_fraction": sum(counts.values()) / max(num_targeted, 1),
    }
    summary.update({f"selected_share/{k}": v / total for k, v in sorted(by_kind.items())})
    return summary


def _write_selection(fisher, model, scores, counts, summary, args) -> None:
    os.makedirs(args.output_dir, exist_ok=True)
    # Renamed into place: a new inode, so the hard links older checkpoints hold keep the old scores.
    atomic.write_with(os.path.join(args.output_dir, SCORES_NAME), lambda tmp: fisher.save_scores(scores, tmp))
    atomic.write_json(os.path.join(args.output_dir, SELECTION_NAME), {"per_layer": counts, **summary})
    if args.save_sensitivity_plot:
        _plot(fisher, model, scores, os.path.join(args.output_dir, PLOT_NAME))


def _plot(fisher, model, scores, path) -> None:
    adapter = model.active_adapter
    masks = {}
    for name, module in model.base_model.model.named_modules():  # names as in the scores
        if isinstance(module, FisherTuneLayer) and name in scores:
            mask = torch.zeros(scores[name].numel(), dtype=torch.bool)
            if module.num_allocated(adapter):
                mask[module.fishertune_indices[adapter].cpu()] = True
            masks[name] = mask.view_as(scores[name])
    try:
        atomic.write_with(path, lambda tmp: fisher.plot_sensitivity_map(scores, masks, tmp))
    except Exception as err:  # a plot must not end a long run
        logger.warning(f"Could not plot the sensitivity map: {err}")
