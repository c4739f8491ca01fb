"""Tests of diffaug.py: DiffAugment (Zhao et al. 2020), the augmentation FastGAN applies to every
image D sees, real and fake (§4).

    python -m pytest -q tests/test_diffaug.py

Each policy keeps the batch's shape, passes a gradient back to its input (so G learns through it),
and draws its random parameters per sample; translation shifts with a zero fill, cutout zeros one
square, and colour on a flat image reduces to a brightness shift.
"""

import pytest
import torch

from diffaug import diff_augment


AUG_POLICIES = ["color", "translation", "cutout", "color,translation,cutout"]


@pytest.mark.parametrize("policy", AUG_POLICIES)
def test_diffaugment_keeps_shape_and_is_differentiable(policy):
    """DiffAugment keeps the batch shape and passes a non-zero gradient back to its input (Zhao et al. 2020)."""
    torch.manual_seed(0)
    x = (torch.rand(4, 3, 32, 24) * 2 - 1).requires_grad_()
    y = diff_augment(x, policy)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad != 0).any()


@pytest.mark.parametrize("policy", AUG_POLICIES)
def test_diffaugment_draws_per_sample(policy):
    """Each sample of a batch gets its own random augmentation (same image x8 -> different outputs)."""
    torch.manual_seed(0)
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).expand(8, 3, 32, 32).contiguous()
    y = diff_augment(x, policy)
    distinct = {tuple(y[i].flatten().tolist()) for i in range(8)}
    if policy.startswith("color"):
        assert len(distinct) == 8  # continuous random factors: all differ
    else:
        assert len(distinct) >= 4  # integer offsets: a few may coincide, not most


def test_diffaugment_empty_policy_is_identity():
    """An empty policy leaves the images untouched."""
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(diff_augment(x, ""), x)


def test_diffaugment_unknown_policy_raises():
    """An unknown policy name is refused with a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="translation"):
        diff_augment(torch.randn(2, 3, 8, 8), "color,rotation")


def test_diffaugment_translation_shifts_with_zero_fill():
    """Translation shifts each image by an integer offset of at most 1/8 of its size, filling with zeros."""
    torch.manual_seed(0)
    B, H, W = 16, 32, 24
    x = torch.rand(1, 3, H, W) + 0.5  # every pixel non-zero, so zeros in the output are fill
    x[:, :, H // 2, W // 2] = 10.0    # one bright marker pixel
    y = diff_augment(x.expand(B, 3, H, W).contiguous(), "translation")
    shifts = set()
    for b in range(B):
        pos = (y[b, 0] == 10.0).nonzero()
        assert pos.shape == (1, 2), "the marker must appear exactly once"
        dy, dx = pos[0, 0].item() - H // 2, pos[0, 1].item() - W // 2
        assert abs(dy) <= H // 8 and abs(dx) <= W // 8
        shifts.add((dy, dx))
        expected = torch.zeros(3, H, W)
        expected[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            x[0, :, max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
        assert torch.equal(y[b], expected)
        # |dy| rows and |dx| columns are entirely zero.
        assert int((y[b].abs().sum(dim=(0, 2)) == 0).sum()) == abs(dy)
        assert int((y[b].abs().sum(dim=(0, 1)) == 0).sum()) == abs(dx)
    assert len(shifts) > 1 and any(s != (0, 0) for s in shifts)


def test_diffaugment_cutout_zeros_a_square():
    """Cutout zeros one axis-aligned square of half the image size per sample (clipped at the edges)."""
    torch.manual_seed(0)
    B, H, W = 16, 32, 32
    y = diff_augment(torch.ones(B, 3, H, W), "cutout")
    assert ((y == 0) | (y == 1)).all()
    assert (y == y[:, :1]).all()  # the same hole in every channel
    full_holes = 0
    for b in range(B):
        hole = y[b, 0] == 0
        rows, cols = hole.any(dim=1), hole.any(dim=0)
        assert hole.any()
        # The hole is exactly the rectangle rows x cols, at most 16x16.
        assert torch.equal(hole, rows[:, None] & cols[None, :])
        assert rows.sum() <= H // 2 and cols.sum() <= W // 2
        full_holes += int(rows.sum() == H // 2 and cols.sum() == W // 2)
    assert full_holes > 0


def test_diffaugment_color_on_flat_image_is_a_brightness_shift():
    """On a flat grey image saturation and contrast do nothing; brightness adds U[-0.5, 0.5] per image."""
    torch.manual_seed(0)
    x = torch.full((16, 3, 8, 8), 0.2)
    y = diff_augment(x, "color")
    shift = y - x
    per_image = shift[:, :1, :1, :1]
    assert torch.allclose(shift, per_image.expand_as(shift), atol=1e-6)
    assert (per_image.abs() <= 0.5 + 1e-6).all()
    assert per_image.std() > 0.1
