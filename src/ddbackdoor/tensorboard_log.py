"""`log.tensorboard=true`: a run's history as TensorBoard scalars in RUN/tensorboard/ (distillation
loss per iteration; CTA, ASR and ASR-all mean per evaluation), for people who watch runs there.
Uses tensorboardX when installed, else torch's writer (which needs the tensorboard package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .distill.base import SyntheticSet
from .errors import ConfigError


def summary_writer(directory: Path) -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log.tensorboard=true needs tensorboardX (pip install tensorboardX) or tensorboard"
            ) from None
    return SummaryWriter(str(directory))


class TensorBoardLog:
    """A distiller hook; `history` is the run's list of evaluation records (shared, appended to)."""

    def __init__(self, directory: Path, history: list[dict]):
        self.writer = summary_writer(directory)
        self.history = history
        self.written = len(history)  # a resumed run's earlier evaluations are already there

    def on_iteration(self, iteration: int, synthetic: SyntheticSet) -> None:
        losses = synthetic.metadata.get("loss_history") or []
        if losses:
            self.writer.add_scalar("distill/loss", losses[-1], iteration)
        self.flush_evaluations()

    def flush_evaluations(self) -> None:
        for record in self.history[self.written :]:
            for key, value in record.items():
                if isinstance(value, dict) and "mean" in value:
                    self.writer.add_scalar(f"eval/{key}", value["mean"], record["iteration"])
        self.written = len(self.history)
        self.writer.flush()

    def close(self) -> None:
        self.flush_evaluations()
        self.writer.close()
