"""TensorBoard event files (tensorboardX) under the run directory, local or remote.

tensorboardX writes to a local folder; for a remote run directory the folder is a temporary one
that is copied up on every flush, so a crashed run loses at most one logging interval.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from tensorboardX import SummaryWriter

from data_shards.io import filesystem


class RunWriter:
    def __init__(self, url: str):
        self.url = url
        self.remote = "://" in url and not url.startswith("file://")
        local = tempfile.mkdtemp(prefix="comgan-tb-") if self.remote else url.removeprefix("file://")
        os.makedirs(local, exist_ok=True)
        self.local = local
        self.writer = SummaryWriter(local, flush_secs=30)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, grid_chw, step: int) -> None:
        self.writer.add_image(tag, np.asarray(grid_chw), step, dataformats="CHW")

    def hparams(self, params: dict, metrics: dict[str, float], name: str) -> None:
        """One entry of TensorBoard's HPARAMS tab (its own sub-folder `name`)."""
        self.writer.add_hparams(params, metrics, name=name)

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def _upload(self) -> None:
        if self.remote:
            fs, path = filesystem(self.url)
            fs.put(self.local.rstrip("/") + "/", path, recursive=True)
