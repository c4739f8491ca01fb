"""FastGAN's losses: paper Eq. 2-4 (§3.2 and §4), all in this one file.

    L_D = -E_x[min(0, -1 + D(x))] - E_z[min(0, -1 - D(G(z)))] + L_recons      (Eq. 3, hinge)
    L_G = -E_z[D(G(z))]                                                       (Eq. 4)
    L_recons = E_{f ~ D_encode(x), x ~ I_real} [ || decoder(f) - T(x) || ]    (Eq. 2)

Since -min(0, -1 + D(x)) = relu(1 - D(x)), D's hinge terms are E[relu(1 - D(x))] and
E[relu(1 + D(G(z)))]: D is pushed to give
reals logits above +1 and fakes logits below -1, and a logit already past its margin costs nothing.
Two details come from the authors' code, not from the equations:
- the margin is not 1 but drawn uniformly from [0.8, 1.0] for every logit, a small random label
  smoothing (`hinge_margin`);
- D has two real/fake heads, each giving a 5x5 map of logits (Fig. 4): one on the full image, one
  on its 128x128 version. Both maps go into one mean (`both_logits`).

L_recons trains D's decoders on real images only (§3.2). T(x) is what each decoder must rebuild from
D's features: the augmented real image at 128x128 for `decoder_big` and `decoder_small`, one quarter
of it for `decoder_part`. The authors measure ||.|| with LPIPS (plumbing/distances.py loads it, an
optional extra); the default here is a pixel distance (`pixel_distance`), which needs no download.

A coursework change of loss (the non-saturating loss, say; docs/hacking.md) is a change of the three
functions `real_loss`, `fake_loss` and `generator_loss`: train.py and bench.py call them and compute
no loss of their own.
This module imports only discriminator.py (the crop and resize that define the decoders' targets).
"""

import torch
import torch.nn.functional as F

from discriminator import crop_quarter, resize_to_128


# ------------------------------------------------------------------------------------------------
# The hinge loss (Eq. 3 for D, Eq. 4 for G)
# ------------------------------------------------------------------------------------------------

def both_logits(logits_big, logits_small):
    """D's two 5x5 logit maps, (B, 1, 5, 5) each, as one vector (2 * B * 25,): both heads count
    equally in every mean below. In float32 even under autocast, so the losses are summed in full
    precision."""
    return torch.cat([logits_big.flatten(), logits_small.flatten()]).float()


def hinge_margin(logits):
    """The margin of every logit, drawn from U[0.8, 1.0] (the authors' code; Eq. 3 writes 1)."""
    return torch.rand_like(logits) * 0.2 + 0.8


def real_loss(logits):
    """D's loss on real images, the hinge (Eq. 3, first term): E[relu(m - D(x))]. Zero once every
    logit > m."""
    return F.relu(hinge_margin(logits) - logits).mean()


def fake_loss(logits):
    """D's loss on generated images, the hinge (Eq. 3, second term): E[relu(m + D(G(z)))]. Zero once
    every logit < -m."""
    return F.relu(hinge_margin(logits) + logits).mean()


def generator_loss(logits):
    """G's loss (Eq. 4): -E[D(G(z))]. G raises D's logits on its images; no margin, no clipping."""
    return -logits.mean()


# ------------------------------------------------------------------------------------------------
# The reconstruction loss (Eq. 2)
# ------------------------------------------------------------------------------------------------

def pixel_distance(kind="mse"):
    """||.|| of Eq. 2 in pixels: one distance per image, (B, C, 128, 128) x2 -> (B,), the mean over
    channels and pixels of the squared ('mse') or absolute ('l1') difference."""
    if kind == "mse":
        return lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))
    if kind == "l1":
        return lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))
    raise ValueError(f"unknown pixel distance {kind!r}; known: mse, l1")


def reconstruction_targets(real_aug, part):
    """T(x) of Eq. 2 for each decoder: what D was shown, the *augmented* real image (B, C, S, S),
    resized to 128x128 for 'big' and 'small', and its quarter `part` (discriminator.crop_quarter)
    resized to 128x128 for 'part'. Each (B, C, 128, 128)."""
    whole = resize_to_128(real_aug)
    return {"big": whole, "small": whole, "part": resize_to_128(crop_quarter(real_aug, part))}


def reconstruction_loss(recons, real_aug, part, distance):
    """L_recons (Eq. 2) in the authors' form: one distance per image, summed over the images of the
    batch, summed over the decoders. A sum, not a mean, so the term grows with the batch as theirs
    does (8 times a per-image mean at batch 8).

    `recons`: D's reconstructions {'big', 'small', 'part'}, each (B, C, 128, 128) (an empty dict in
    the ablation without decoders: the loss is 0); `part`: the quarter decoder_part rebuilt;
    `distance`: (B, C, 128, 128) x2 -> (B,), e.g. `pixel_distance('mse')`."""
    targets = reconstruction_targets(real_aug, part)
    loss = torch.zeros((), device=real_aug.device)
    for name, rec in recons.items():
        loss = loss + distance(rec.float(), targets[name].float()).sum()   # (B,) -> ()
    return loss
