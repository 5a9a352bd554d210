"""The data one run reads: its training split (less a validation share, or a finished run's
synthetic set), the validation set held out of it, and the test split. Experiments, defenses and
re-scoring all read a run's data through `load_run_data`, so they see the same rows."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ..config import ExperimentConfig
from ..errors import DataError
from .from_run import synthetic_as_train
from .realdata import RealData, check_data
from .registry import load_dataset

# The validation set is the same for every run of a dataset and portion: its draw depends on neither
# the run's seed nor its attack, so settings compared on it are compared on the same images.
VALIDATION_SEED = int.from_bytes(hashlib.sha256(b"ddbackdoor validation split").digest()[:8], "little") >> 1


def validation_split(data: RealData, portion: float) -> tuple[RealData, RealData | None]:
    """(the rest, the validation set): floor(portion * n_c) rows of every class c, drawn with
    `VALIDATION_SEED`; the rest keeps its rows in their order. portion 0: (data, None)."""
    if portion <= 0:
        return data, None
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    held = [
        rows[torch.randperm(rows.numel(), generator=generator)[: math.floor(portion * rows.numel())]]
        for rows in data.indices_by_class()
    ]
    chosen = torch.zeros(len(data), dtype=torch.bool)
    chosen[torch.cat(held)] = True
    if not chosen.any():
        raise DataError(f"data.val_portion={portion} holds out no image of {data.name}; raise it")
    return data.subset(~chosen), data.subset(chosen)


@dataclass
class RunData:
    """What a run distils from (`train`), may choose settings on (`validation`) and reports on (`test`)."""

    train: RealData
    validation: RealData | None
    test: RealData


def load_run_data(config: ExperimentConfig) -> RunData:
    """The run's three sets, checked (dtype, range, labels) before any work starts."""
    train, test = load_dataset(config.dataset, config.data.root, config.data.image_size, config.data.download)
    train, validation = validation_split(train, config.data.val_portion)
    if config.data.from_run is not None:  # the attacker sees a distilled set, no real image
        train = synthetic_as_train(config.data.from_run, train, config.dataset)
    for data, split in ((train, "train"), (validation, "validation"), (test, "test")):
        if data is None:
            continue
        try:
            check_data(data, split)
        except ValueError as err:
            raise DataError(f"{err}; check the dataset files") from None
    return RunData(train, validation, test)
