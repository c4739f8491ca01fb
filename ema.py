"""The EMA generator: an exponential moving average of G's weights, from which every sample is drawn
(paper §4, after BigGAN, Brock et al. 2019, §4 and Appendix; Karras et al. 2018).

G's weights oscillate from iteration to iteration as G and D chase each other; their running average
is a smoother, usually better generator, at the cost of one extra copy of G. Two details decide
whether it is better in practice, and both are handled here:

1. The ramp-up. A fixed decay of 0.999 keeps 0.999^t of the random initialisation after t iterations:
   55% after 600 iterations, 37% after 1000. A short run's average would be mostly noise. Following
   StyleGAN2-ADA (Karras et al. 2020, `ema_rampup` = 0.05 in its training loop), the half-life of the
   average is at most 5% of the iterations done so far:
        half_life(t) = min(half_life(decay), RAMPUP * t),   decay(t) = 0.5 ** (1 / half_life(t)),
   where half_life(decay) = ln 0.5 / ln decay (693 iterations at 0.999). At the first iteration the
   decay is 0.5 ** 20 (the average becomes G), and the share of the initialisation left after t
   iterations is below 1e-6 for every t. The long-run decay (`--ema`, 0.999 by default) is in effect
   from the first iteration t with RAMPUP * t >= half_life on: from iteration 13,857 at 0.999, i.e.
   after 13,856 iterations (test_fastgan.py computes the figure from `ema_decay`).
2. BatchNorm statistics. G's BatchNorm layers keep running averages of the statistics of G's own
   feature maps, and eval mode normalises with them. The average of G's weights is a different
   network, whose feature maps have other statistics: averaging G's running statistics gives the
   EMA generator statistics that are not its own, and its eval-mode samples wash out towards a flat
   grey image. So the EMA generator's running statistics are recomputed from its own forward
   passes (`recompute_batchnorm_statistics`) before every use for output: the training grids,
   `--eval_every`, and every checkpoint as written (so sample.py, metrics and the ablation read a
   generator that is ready to use).

This module imports nothing of ours: it works on any generator with BatchNorm layers.
"""

import math

import torch
import torch.nn as nn

RAMPUP = 0.05   # the average's half-life is at most this share of the iterations done so far


def ema_decay(iteration, decay):
    """The decay in effect at `iteration` (1, 2, ...): the long-run `decay`, or less early on."""
    half_life = math.log(0.5) / math.log(decay) if decay > 0 else 0.0   # in iterations
    half_life = min(half_life, RAMPUP * iteration)
    return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0


def _is_batchnorm_statistic(name):
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


class EMA:
    """G_ema <- decay * G_ema + (1 - decay) * G after every training iteration.

    Averaged: G's parameters. Copied: spectral norm's power-iteration vectors (buffers that follow
    the weights). Not touched: BatchNorm's statistics, recomputed instead (see the module's text).
    The pairs of tensors are listed once, when the EMA is made."""

    def __init__(self, G_ema, G, decay=0.999):
        self.decay = decay
        self.avg_dst = [p.data for p in G_ema.parameters()]
        self.avg_src = [p.data for p in G.parameters()]
        pairs = [(b_ema, b) for (name, b_ema), (_, b) in zip(G_ema.named_buffers(), G.named_buffers())
                 if not _is_batchnorm_statistic(name)]
        self.copy_dst = [a for a, _ in pairs]
        self.copy_src = [b for _, b in pairs]

    @torch.no_grad()
    def update(self, iteration):
        """Fold G's weights after `iteration` (1, 2, ...) into the average."""
        weight = 1.0 - ema_decay(iteration, self.decay)
        for avg, p in zip(self.avg_dst, self.avg_src):
            avg.lerp_(p, weight)          # avg + weight * (p - avg): the running average, updated
        for dst, src in zip(self.copy_dst, self.copy_src):
            dst.copy_(src)


@torch.no_grad()
def recompute_batchnorm_statistics(G, batch_size=8, batches=16, seed=0, classes=0):
    """Set every BatchNorm running mean and variance of G to the average, over `batches` batches of
    `batch_size` of G's own samples, of the batch statistics that training-mode BatchNorm would use.

    The latents and noise come from a generator seeded with `seed`: the result is a function of G's
    weights alone, and the run's random numbers are untouched. Only the BatchNorm layers run in
    training mode; everything else (spectral norm's power iteration included) stays in eval mode.
    Cost: `batches` forward passes of G without gradients (no backward, no D), before each grid,
    evaluation and checkpoint. A class-conditional G (`classes` > 0, conditional.py) gets labels drawn uniformly over
    its classes by the same generator, after each batch's latents and noise. Returns G in eval mode."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    G.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None            # a cumulative average over the batches below, not an EMA
        bn.train()
    device = next(G.parameters()).device
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        z = torch.randn(batch_size, G.nz, generator=g).to(device)
        noise = {r: [n.to(device) for n in ns] for r, ns in G.draw_noise(batch_size, generator=g).items()}
        if classes:
            G(z, noise=noise, y=torch.randint(classes, (batch_size,), generator=g).to(device))   # (B,)
        else:
            G(z, noise=noise)
    for bn in bns:
        bn.momentum = 0.1             # BatchNorm's default, as built
        bn.eval()
    return G
