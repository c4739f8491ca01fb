"""DiffAugment: Differentiable Augmentation (Zhao et al. 2020, arXiv 2006.10738), as used by FastGAN (§4).

With 100 images, D memorises the training set within a few thousand iterations and its feedback to
G becomes useless. DiffAugment augments *every* image D sees, real and fake alike, with the same
random family of transforms. Because the transforms are differentiable, G's gradient flows back
through them, so G learns to produce un-augmented images (augmenting only the reals would teach G to
produce augmented-looking images: the augmentation would "leak").

FastGAN uses the policy "color,translation". Each transform draws fresh random parameters per sample:
- color: brightness (add U[-0.5, 0.5]), saturation (scale the distance to the pixel's grey by U[0, 2]),
  contrast (scale the distance to the image mean by U[0.5, 1.5]);
- translation: shift by up to 1/8 of the size in each direction, filling with zeros;
- cutout: zero a random square of half the size.
Images are (B, C, H, W) in [-1, 1]. This module imports nothing of ours.
"""

import torch


def _rand(x, *shape):
    """Uniform [0, 1) numbers on x's device and dtype, one per sample: shape (B, *shape)."""
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def brightness(x):
    return x + (_rand(x, 1, 1, 1) - 0.5)                           # shift each image by U[-0.5, 0.5]


def saturation(x):
    grey = x.mean(dim=1, keepdim=True)                             # (B, 1, H, W)
    return (x - grey) * (_rand(x, 1, 1, 1) * 2) + grey             # x U[0, 2] around the grey


def contrast(x):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)                     # (B, 1, 1, 1)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean           # x U[0.5, 1.5] around the mean


def translation(x, ratio=0.125):
    """Shift each image by its own integer offset in [-ratio*size, ratio*size]; uncovered pixels are 0.

    Written as a gather of source pixels, so the gradient reaches every pixel that stays in view."""
    B, C, H, W = x.shape
    max_dy, max_dx = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (B, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (B, 1, 1), device=x.device)
    # Output pixel (i, j) shows source pixel (i - dy, j - dx) when that lies inside the image.
    src_i = torch.arange(H, device=x.device).view(1, H, 1) - dy      # (B, H, 1)
    src_j = torch.arange(W, device=x.device).view(1, 1, W) - dx      # (B, 1, W)
    inside = ((src_i >= 0) & (src_i < H)) & ((src_j >= 0) & (src_j < W))   # (B, H, W)
    flat = src_i.clamp(0, H - 1) * W + src_j.clamp(0, W - 1)         # (B, H, W) flat source index
    out = x.reshape(B, C, H * W).gather(2, flat.view(B, 1, H * W).expand(B, C, H * W))
    return out.view(B, C, H, W) * inside.unsqueeze(1).to(x.dtype)    # (B, C, H, W)


def cutout(x, ratio=0.5):
    """Zero one square of (ratio*H) x (ratio*W) per image, centred anywhere (it may hang off the edge)."""
    B, C, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = torch.randint(0, H + 1 - ch % 2, (B, 1, 1), device=x.device)   # centre of the hole
    cx = torch.randint(0, W + 1 - cw % 2, (B, 1, 1), device=x.device)
    i = torch.arange(H, device=x.device).view(1, H, 1)
    j = torch.arange(W, device=x.device).view(1, 1, W)
    hole = ((i >= cy - ch // 2) & (i < cy - ch // 2 + ch)) & ((j >= cx - cw // 2) & (j < cx - cw // 2 + cw))
    return x * (~hole).unsqueeze(1).to(x.dtype)                      # (B, C, H, W)


POLICIES = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def diff_augment(x, policy="color,translation"):
    """Apply the comma-separated `policy` ('color', 'translation', 'cutout') to a batch (B, C, H, W).

    An empty policy is the identity. Unknown names raise a ValueError that lists the known ones."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        if name not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r}; known: {', '.join(POLICIES)}")
        for transform in POLICIES[name]:
            x = transform(x)
    return x
