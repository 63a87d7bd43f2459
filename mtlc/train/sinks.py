"""Where a run's progress goes besides metrics.jsonl: TensorBoard, the progress bar and
the end-of-epoch table on the console."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mtlc.spec import Spec
from mtlc.train import runfolder
from mtlc.train.errors import TrainError


class NullLog:
    """metrics.jsonl on a rank that does not write (every rank but 0)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def short_losses(losses: dict[str, float]) -> str:
    """Losses for the progress bar: 'task 0.123  task 0.456'."""
    return "  ".join(f"{t} {v:.3f}" for t, v in losses.items())


def open_tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter into the run folder's tensorboard/."""
    tensorboard_available()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / runfolder.TENSORBOARD))


def tb_step(writer: Any, record: dict[str, Any]) -> None:
    """A step record's losses, weights and learning rate as TensorBoard scalars."""
    step = record["step"]
    for t, v in record["loss"].items():
        writer.add_scalar(f"loss/{t}", v, step)
    for t, v in record["weights"].items():
        writer.add_scalar(f"weight/{t}", v, step)
    writer.add_scalar("lr", record["lr"], step)


def tb_epoch(writer: Any, record: dict[str, Any]) -> None:
    """An epoch record's validation metrics, losses and Δm as TensorBoard scalars."""
    step = record["step"]
    for t, ms in record["metrics"].items():
        for k, v in ms.items():
            writer.add_scalar(f"val/{t}/{k}", v, step)
    for t, v in record["val_loss"].items():
        writer.add_scalar(f"val_loss/{t}", v, step)
    if record["delta_m"] is not None:
        writer.add_scalar("val/delta_m", record["delta_m"], step)


def epoch_table(spec: Spec, record: dict[str, Any]) -> Any:
    """The end-of-epoch table: per task train/val loss, balancer weight and val metrics."""
    from rich.table import Table

    title = f"epoch {record['epoch']}/{spec.train.epochs}  step {record['step']}"
    if record.get("delta_m") is not None:
        title += f"  Δm {record['delta_m']:+.2f}%"
    if record.get("best"):
        title += "  (best so far)"
    table = Table(title=title, title_justify="left")
    for name in ("task", "train loss", "val loss", "weight", "metric", "value"):
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")
    for t in record["val_loss"]:
        metrics = list(record["metrics"].get(t, {}).items()) or [("", None)]
        for i, (name, value) in enumerate(metrics):
            first = i == 0
            table.add_row(
                (t + (" (aux)" if spec.tasks[t].auxiliary else "")) if first else "",
                fmt(record["train_loss"].get(t)) if first else "",
                fmt(record["val_loss"][t]) if first else "",
                fmt(record["weights"].get(t)) if first else "",
                name,
                fmt(value) if name else "",
                end_section=i == len(metrics) - 1,
            )
    return table


def fmt(value: Any) -> str:
    """A table cell: '-' for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def tensorboard_available() -> None:
    """Refuse --tensorboard in one line when the package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise TrainError(
            "--tensorboard needs the tensorboard package: pip install 'mtlc[tensorboard]'"
        ) from None


def progress_bar(console: Any, enabled: bool) -> Any:
    """The per-epoch progress bar (rich); transient, so the epoch table replaces it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        disable=not enabled,
        transient=True,
    )
