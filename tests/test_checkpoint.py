"""Tests of checkpoint.py: an interrupted save leaves the previous checkpoint intact.

    python -m pytest -q test_checkpoint.py

What train.py writes into its checkpoints (networks, optimisers, random states, loadable with
weights_only=True) and the exact resume from them are tested in test_train.py, on the checkpoints of
a real run.
"""

import pytest
import torch

from plumbing import checkpoint
from plumbing.disk import WriteFailed


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A crash (here: a full disk) during a save leaves the previous file intact and no temporary file."""
    path = tmp_path / "latest.pt"
    good = {"format": checkpoint.CHECKPOINT_FORMAT, "w": torch.arange(10.0)}
    checkpoint.save_checkpoint(path, good)

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteFailed, match="latest.pt: No space left on device"):
        checkpoint.save_checkpoint(path, {"format": checkpoint.CHECKPOINT_FORMAT, "w": torch.zeros(10)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load_checkpoint(path)["w"], torch.arange(10.0))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
