"""`<out>/metrics.jsonl`: one JSON line per finished epoch, the record a user (and the tests) read.

Written by rank 0 only, after each epoch; a worker group that restarts from a checkpoint first drops
the lines of the epochs after it (`keep_epochs_up_to`), so each epoch has one line, in order, however
often it was trained. Buckets have no append, so each write rewrites the (small) file: one PUT on a
bucket, a temporary file renamed over it on a local disk, so a worker that dies mid-write (its node
taken away) leaves the previous file whole.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """The run's metrics file under an output URI."""

    def __init__(self, out: str, *, storage_options: dict | None = None):
        self.uri = out.rstrip("/") + "/" + METRICS_FILE
        self.fs, self.path = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))

    def read(self) -> list[dict[str, Any]]:
        """Every record written so far, in order ([] when there is no file yet)."""
        if not self.fs.exists(self.path):
            return []
        with self.fs.open(self.path, "r") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def keep_epochs_up_to(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (left by a run that died before checkpointing them)."""
        records = self.read()
        kept = [record for record in records if record.get("epoch", 0) <= epoch]
        if len(kept) != len(records):
            self._write(kept)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record at the end."""
        self._write([*self.read(), record])

    def _write(self, records: list[dict[str, Any]]) -> None:
        parent = self.path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        text = "".join(json.dumps(record) + "\n" for record in records)
        if not isinstance(self.fs, LocalFileSystem):
            with self.fs.open(self.path, "w") as handle:
                handle.write(text)
            return
        partial = f"{parent}/.{METRICS_FILE}.{os.getpid()}.partial"  # hidden: source listings skip it
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, self.path)


def format_epoch(record: dict[str, Any]) -> str:
    """One line for the user: epoch, losses, PSNR/SSIM (and the noisy input's PSNR), throughput."""
    noisy = f" (noisy input {record['val_noisy_psnr']:.2f} dB)" if "val_noisy_psnr" in record else ""
    return (
        f"epoch {record['epoch']}/{record.get('epochs', '?')}  train loss {record['train_loss']:.5f}  "
        f"val loss {record['val_loss']:.5f}  PSNR {record['val_psnr']:.2f} dB{noisy}  "
        f"SSIM {record['val_ssim']:.3f}  {record['images_per_s']:.0f} images/s"
    )
