"""Tests of checkpoint.py: an interrupted save leaves the previous checkpoint intact.

    python -m pytest -q tests/test_checkpoint.py

What train.py writes into its checkpoints (networks, optimisers, random states, loadable with
weights_only=True) and the exact resume from them are tested in test_train.py, on the checkpoints of
a real run.
"""

import io

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



@pytest.mark.parametrize("saved_layout, resumed_layout", [(torch.contiguous_format, torch.channels_last),
                                                          (torch.channels_last, torch.contiguous_format)])
def test_fused_adam_resumed_in_the_other_layout_steps_as_if_never_stopped(saved_layout, resumed_layout):
    """A run saved without --channels_last and resumed with it (or the reverse): after
    checkpoint.load_optimizer_state, fused Adam (which walks weight, gradient and moments in memory
    order) takes the same two steps as the run that never stopped. With the moments left in the
    saved layout, a 4x3x5x5 conv weight ends 0.02 off."""
    torch.manual_seed(0)
    start, grads = torch.randn(4, 3, 5, 5), [torch.randn(4, 3, 5, 5) for _ in range(3)]

    def adam(w, layout):
        p = torch.nn.Parameter(w.clone().contiguous(memory_format=layout))
        return p, torch.optim.Adam([p], lr=1e-2, betas=(0.5, 0.999), fused=True)

    def step(p, opt, g, layout):
        p.grad = g.contiguous(memory_format=layout)        # a conv's weight gradient has its weight's layout
        opt.step()

    p, opt = adam(start, saved_layout)
    step(p, opt, grads[0], saved_layout)
    saved_weight, buffer = p.detach().clone(), io.BytesIO()
    torch.save(opt.state_dict(), buffer)                   # as a checkpoint holds it
    for g in grads[1:]:                                    # the run that never stopped
        step(p, opt, g, saved_layout)

    buffer.seek(0)
    q, resumed = adam(saved_weight, resumed_layout)
    checkpoint.load_optimizer_state(resumed, torch.load(buffer, weights_only=True))
    for g in grads[1:]:
        step(q, resumed, g, resumed_layout)
    assert q.is_contiguous(memory_format=resumed_layout)
    assert torch.allclose(q, p, rtol=0, atol=1e-6), (q - p).abs().max()


def test_the_mps_random_state_is_saved_and_restored_where_there_is_one(monkeypatch):
    """On a Mac's GPU (MPS) the checkpoint holds its random generator's state too, and resuming
    restores it; elsewhere it holds None. MPS is replaced here by a stand-in generator state."""
    assert (checkpoint.rng_state()["mps"] is None) == (not torch.backends.mps.is_available())
    restored = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.arange(8, dtype=torch.uint8))
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    state = checkpoint.rng_state()
    checkpoint.set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], torch.arange(8, dtype=torch.uint8))
