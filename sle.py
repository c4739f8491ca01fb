"""Skip-Layer channel-wise Excitation (SLE): paper §3.1, Eq. 1, Fig. 3 (right).

    y = F(x_low, {W_i}) * x_high                                         (Eq. 1)

A ResBlock adds a layer's input to its output, so both must have the same shape, and in practice
the skip spans one or two layers. SLE instead *multiplies* a high-resolution feature map x_high by a
per-channel gate computed from a far lower-resolution map x_low (in the generator: 8x8 gates 128x128).
Because the gate is one number per channel, the two maps may differ in size and in width, the skip
can span many layers, and it costs almost nothing: F sees x_low pooled to 4x4.

F, exactly as in the authors' code (the box in Fig. 3):
    adaptive-avg-pool to 4x4 -> conv 4x4, no padding (-> 1x1) -> Swish -> conv 1x1 -> sigmoid

Multiplying by a gate in (0, 1) is a channel-wise "excitation" in the spirit of Squeeze-and-Excitation
(Hu et al. 2018), except that the squeeze reads *another* layer. Because the gates decide which
channels of the high-resolution path are used, feeding the gates from a second latent mixes styles
(§4.2, Fig. 5): the high-resolution path keeps the content, the gates bring the style.

This module imports nothing of ours; generator.py and discriminator.py build on it.
"""

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm


class SLE(nn.Module):
    """Gate `x_high` (B, ch_high, H, W) channel-wise by a function of `x_low` (B, ch_low, h, w).

    Works for any pair of resolutions: x_low is first pooled to 4x4 whatever its size.
    Every conv is bias-free and spectrally normalised, like every other conv of FastGAN (§4).
    """

    def __init__(self, ch_low, ch_high):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        # 4x4 conv with no padding turns the 4x4 map into a 1x1 "descriptor" of ch_high channels.
        self.conv_squeeze = spectral_norm(nn.Conv2d(ch_low, ch_high, 4, 1, 0, bias=False))
        self.swish = nn.SiLU()  # Swish(x) = x * sigmoid(x); the authors' code uses it here.
        self.conv_excite = spectral_norm(nn.Conv2d(ch_high, ch_high, 1, 1, 0, bias=False))

    def gate(self, x_low):
        """The per-channel gate F(x_low) of Eq. 1: (B, ch_low, h, w) -> (B, ch_high, 1, 1) in (0, 1)."""
        g = self.pool(x_low)          # (B, ch_low, 4, 4)
        g = self.conv_squeeze(g)      # (B, ch_high, 1, 1)
        g = self.swish(g)             # (B, ch_high, 1, 1)
        g = self.conv_excite(g)       # (B, ch_high, 1, 1)
        return torch.sigmoid(g)       # (B, ch_high, 1, 1), every entry in (0, 1)

    def forward(self, x_low, x_high):
        # Broadcasting the (B, C, 1, 1) gate over H and W is Eq. 1's channel-wise product.
        return x_high * self.gate(x_low)  # (B, ch_high, H, W)
