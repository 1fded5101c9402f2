"""A training dataset whose augmentations are a function of (seed, epoch, sample index), and whose bad files
are reported by path.

Why keyed draws: the data loader fetches batches ahead of the step that uses them (accelerate prefetches
one, workers more), so a transform drawing from torch's global RNG gets numbers that depend on how far
the loader had run when a checkpoint was taken. A resumed run then augments differently from the
uninterrupted one. Seeding a private generator from (seed, epoch, index) makes every draw independent of
loader state, process and worker, so resuming from any step is bitwise identical.

Why bad files are checked here: the loaders read only image headers when a dataset is built (decoding
every image of a 25k-image set would take minutes); a truncated file is found when a batch decodes it.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

BAD_FILE_POLICIES = ("error", "skip")
_SLOTS = 257
#: What PIL and `datasets` raise for a file that cannot be decoded (truncated, corrupt, not an image).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadSampleError(RuntimeError):
    """A training sample could not be read or transformed; the message names its file."""


class KeyedTrainingDataset(torch.utils.data.Dataset):
    """`dataset` (`image`/`label` columns) with a training `transform` applied per sample, each sample's
    random draws from `numpy.random.default_rng((seed, epoch, index))`.

    The Trainer (through accelerate) calls `set_epoch` before each epoch, and loader workers, started
    per epoch, copy it. Persistent workers (`dataloader_persistent_workers=True`) keep the epoch they
    started in, so a run resumed in a later epoch would draw other numbers: leave that setting off.

    Args:
        dataset: a `datasets.Dataset` (or any indexable of `{"image", "label"}` dicts), no transform set.
        transform (`SegmentationTransforms` or a callable `(image, label, rng) -> (pixel_values, labels)`).
        seed (`int`): the run's seed (the recipes pass `--seed`).
        bad_file_policy (`str`): `"error"` stops at the first unreadable sample with its path;
            `"skip"` warns with the path and a running count and uses the next readable sample instead.
    """

    def __init__(self, dataset, transform, seed: int = 0, bad_file_policy: str = "error"):
        if bad_file_policy not in BAD_FILE_POLICIES:
            raise ValueError(
                f"bad_file_policy must be 'error' (stop naming the file) or 'skip' (warn, count and "
                f"use the next sample), got {bad_file_policy!r}."
            )
        self.dataset, self.seed, self.bad_file_policy = dataset, int(seed), bad_file_policy
        self._apply: Callable = getattr(transform, "sample", transform)
        self.epoch = 0
        self.skipped: dict[int, str] = {}  # index -> file, in this process (each loader worker counts its own)
        # Replacements made, one slot per process (0: the main process, 1 + i: loader worker i) in shared memory,
        # so the main process reads the total (`skip_count`) whatever worker made them.
        self._skip_slots = torch.zeros(_SLOTS, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def generator(self, index: int) -> np.random.Generator:
        # SeedSequence hashes the triple: neighbouring seeds, epochs or indices give unrelated streams.
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _load(self, index: int) -> dict:
        example = self.dataset[index]
        x, y = self._apply(example["image"], example.get("label"), self.generator(index))
        return {"pixel_values": x, "labels": y}

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        try:
            return self._load(index)
        except DECODE_ERRORS as err:
            failure = self._failure(index, err)
        if self.bad_file_policy == "error":
            raise failure
        self.skipped[index] = self.source_path(index) or f"sample {index}"
        self._count_skip()
        warnings.warn(
            f"{failure} Skipped ({len(self.skipped)} bad file(s) so far in this process); "
            "the next readable sample takes its place.",
            stacklevel=2,
        )
        for step in range(1, len(self)):
            other = (index + step) % len(self)
            if other in self.skipped:
                continue
            try:
                return self._load(other)
            except DECODE_ERRORS as err:
                self.skipped[other] = self.source_path(other) or f"sample {other}"
                self._count_skip()
                warnings.warn(str(self._failure(other, err)) + " Skipped.", stacklevel=2)
        raise BadSampleError(f"No readable training sample left ({len(self.skipped)} bad files).")

    def _count_skip(self) -> None:
        worker = torch.utils.data.get_worker_info()
        self._skip_slots[0 if worker is None else 1 + worker.id % (_SLOTS - 1)] += 1

    @property
    def skip_count(self) -> int:
        """Unreadable samples met so far in this process and its loader workers (a file met again in a later
        epoch counts again), under bad_file_policy='skip'."""
        return int(self._skip_slots.sum())

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [self[i] for i in indices]

    def _failure(self, index: int, err: BaseException) -> BadSampleError:
        where = self.source_path(index)
        what = f"file {where}" if where else f"sample {index} (no file path recorded)"
        return BadSampleError(
            f"Cannot read training {what}: {type(err).__name__}: {err}. Replace or delete the file (then resume "
            "with --resume_from_checkpoint last), or set bad_file_policy='skip' to skip unreadable files."
        )

    def source_path(self, index: int) -> Optional[str]:
        """The image (or label) file behind sample `index`, when the dataset records paths."""
        try:
            import datasets

            if not isinstance(self.dataset, datasets.Dataset):
                return None
            raw = self.dataset.cast_column("image", datasets.Image(decode=False))
            if "label" in raw.column_names and isinstance(raw.features["label"], datasets.Image):
                raw = raw.cast_column("label", datasets.Image(decode=False))
            row = raw[index]
        except Exception:  # the path is a courtesy of the error message; its lookup must not hide the error
            return None
        paths = [row[c].get("path") for c in ("image", "label") if isinstance(row.get(c), dict)]
        image_path = paths[0] if paths else None
        return image_path or next((p for p in paths if p), None)
