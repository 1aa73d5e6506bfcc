"""The record that stops a stage on an error no restart can heal (cluster/failures.py)."""
from __future__ import annotations

import pytest
import torch

from cluster import failures
from data_shards.index import DatasetError


class Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise DatasetError("s3://bucket/train/shard-000003.tar is listed in manifest.json but missing")


def test_a_loader_process_error_keeps_its_own_line():
    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(DatasetError) as caught:
        next(iter(loader))
    assert str(caught.value) != failures.original_message(caught.value), "torch adds where it happened"
    assert failures.original_message(caught.value) == \
        "s3://bucket/train/shard-000003.tar is listed in manifest.json but missing"
    assert failures.original_message(DatasetError("plain")) == "plain"
    older_torch = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback:\n  ...\n"
                               "data_shards.index.DatasetError: x.tar is listed in manifest.json but missing")
    assert failures.original_message(older_torch) == "x.tar is listed in manifest.json but missing"


def test_a_record_is_read_once_and_redacts_credentials(tmp_path):
    stage_dir = str(tmp_path / "stage1")
    assert failures.recorded(stage_dir) is None
    failures.raise_if_recorded(stage_dir, "stage1")  # nothing recorded: nothing raised

    failures.record(stage_dir, "stage1", DatasetError("s3://key:secret@bucket/x.tar is missing"))
    assert failures.recorded(stage_dir)["kind"] == "DatasetError"
    with pytest.raises(failures.StageStopped, match="stage1 stopped: .*x.tar is missing \\(DatasetError\\). "
                                                    "Not retried") as caught:
        failures.raise_if_recorded(stage_dir, "stage1")
    assert "secret" not in str(caught.value)
    assert failures.recorded(stage_dir) is None, "cleared, so a fixed run starts clean"


def test_a_torn_record_still_stops_the_stage(tmp_path):
    (tmp_path / failures.RECORD).write_text('{"kind": "Data')
    with pytest.raises(failures.StageStopped, match="unreadable"):
        failures.raise_if_recorded(str(tmp_path), "stage2")


def test_only_input_errors_count_as_for_good():
    assert isinstance(DatasetError("x"), failures.FOR_GOOD)
    assert not isinstance(ConnectionError("reset by peer"), failures.FOR_GOOD)
    assert not isinstance(RuntimeError("gloo timeout"), failures.FOR_GOOD)
