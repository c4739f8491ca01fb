"""The FastGAN discriminator: paper §3.2, Fig. 4, Eq. 2.

D is both a real/fake classifier and, on real images, an *encoder*: three small decoders must rebuild
the image from D's own feature maps,

    L_recons = E_{f ~ D_encode(x), x ~ I_real} [ || G(f) - T(x) || ]                   (Eq. 2)

where G here is a decoder and T crops/resizes the real image to what that decoder should produce.
The paper's argument (§3.2): with very few images a plain D overfits by latching on to a few
discriminative details; having to keep enough information to *reconstruct* the image forces D to
extract a comprehensive description of its input, which gives G a more informative signal.

Structure (Fig. 4), for im_size 256, 512 or 1024 (the authors' networks exactly):
- a stem brings the full image to a 256x256 map; five residual down-blocks go 256 -> 8;
- SLE (sle.py) inside D: the 256x256 map gates the 32x32 map, 128 gates 16, 64 gates 8;
- `logits_big`: 1x1 conv, BN, LeakyReLU, 4x4 conv (no padding) on the 8x8 map -> (B, 1, 5, 5);
- a second, small branch reads a 128x128 version of the image down to 8x8 -> `logits_small` (B, 1, 5, 5);
- decoders (128x128 outputs): `decoder_big` from the 8x8 map, `decoder_part` from one random 8x8
  quarter of the 16x16 map, `decoder_small` from the small branch's 8x8 map.
For im_size 128 (ours, for CPUs): the stem keeps 128x128 (d[256] channels), four down-blocks reach 8x8,
and the SLEs are 128->16 and 64->8; the small branch and decoders are unchanged.

The decoders are part of D (their parameters train with D's optimiser) but run only when
reconstructions are asked for, i.e. on real images.

Not in the paper: with `--classes`, conditional.py adds Miyato & Koyama's projection term to both
logit maps and D takes the classes as `D(img, img_128, y=y)`; without, `projection` is None.
"""

import torch.nn as nn
import torch.nn.functional as F

from generator import UpBlock, check_config, init_weights, sn_conv2d
from sle import SLE

# Channel width of D's feature map at each resolution, as a multiple of ndf (authors' `nfc` in D).
D_WIDTH = {4: 16, 8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}

# Decoder widths after each up-block: int(32 * G_WIDTH[r]) at 16, 32, 64, 128 (a fixed 32, not ndf).
DECODER_WIDTHS = (128, 64, 64, 32)

# Which quarter of the 16x16 map (and of the image) `decoder_part` rebuilds: part -> (row, col) half.
QUARTERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def lrelu():
    return nn.LeakyReLU(0.2, inplace=True)


class DownBlock(nn.Module):
    """Plain down-block of the small branch: conv 4x4 stride 2, BN, LeakyReLU.  (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.main = nn.Sequential(sn_conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), lrelu())

    def forward(self, x):
        return self.main(x)


class DownBlockComp(nn.Module):
    """Residual down-block (Fig. 4): the mean of a learned path and a cheap direct path.

    path A: conv 4x4 stride 2, BN, LeakyReLU, conv 3x3, BN, LeakyReLU
    path B: avg-pool 2, conv 1x1, BN, LeakyReLU
    (B, c_in, H, W) -> (B, c_out, H/2, W/2)"""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.main = nn.Sequential(
            sn_conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), lrelu(),
            sn_conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), lrelu(),
        )
        self.direct = nn.Sequential(
            nn.AvgPool2d(2, 2), sn_conv2d(c_in, c_out, 1, 1, 0), nn.BatchNorm2d(c_out), lrelu(),
        )

    def forward(self, x):
        return (self.main(x) + self.direct(x)) / 2   # (B, c_out, H/2, W/2)


class Decoder(nn.Module):
    """§3.2's small decoder: adaptive-avg-pool to 8x8, four UpBlocks (8 -> 128), conv 3x3, tanh.
    (B, c_in, h, w) -> (B, nc, 128, 128)."""

    def __init__(self, c_in, nc=3):
        super().__init__()
        widths = (c_in,) + DECODER_WIDTHS
        self.main = nn.Sequential(
            nn.AdaptiveAvgPool2d(8),                                          # (B, c_in, 8, 8)
            *[UpBlock(widths[i], widths[i + 1]) for i in range(4)],           # (B, 32, 128, 128)
            sn_conv2d(widths[-1], nc, 3, 1, 1),                               # (B, nc, 128, 128)
            nn.Tanh(),
        )

    def forward(self, x):
        return self.main(x)


def crop_quarter(x, part):
    """The quarter `part` (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) of (B, C, H, W)."""
    row, col = QUARTERS[part]
    h, w = x.shape[2] // 2, x.shape[3] // 2
    return x[:, :, row * h:(row + 1) * h, col * w:(col + 1) * w]


def resize_to_128(x):
    """D's second input, and the decoders' target: (B, C, H, W) -> (B, C, 128, 128). Area averaging
    when shrinking (the authors use nearest, which aliases; area is the faithful downscale), nearest
    when growing (a 64x64 quarter at im_size 128)."""
    if x.shape[-1] == 128:
        return x
    return F.interpolate(x, size=(128, 128), mode="area" if x.shape[-1] > 128 else "nearest")


class Discriminator(nn.Module):
    """FastGAN's D (Fig. 4).

    `D(img, img_128)` -> `(logits_big, logits_small)`, each (B, 1, 5, 5).
    `D(img, img_128, part=k)` -> `(logits_big, logits_small, recons)` where `recons` is a dict of
    three (B, nc, 128, 128) reconstructions: 'big' (the whole image from the 8x8 map), 'part' (quarter k,
    see `crop_quarter`, from the same quarter of the 16x16 map) and 'small' (the 128x128 image from the
    small branch). Ask for them on real images only (§3.2).
    `D(..., y=y)`: a class-conditional D (conditional.py) judges image i as one of class y[i]; without y
    it gives the class-free part of its logits (train.py's reconstruction grid reads only `recons`).
    An unconditional D ignores y.
    """

    def __init__(self, ndf=64, nc=3, im_size=1024):
        super().__init__()
        check_config(im_size, ndf, "ndf")
        self.ndf, self.nc, self.im_size = ndf, nc, im_size
        d = {r: int(ndf * m) for r, m in D_WIDTH.items()}

        # Stem: bring the full image to the first map of the residual trunk.
        if im_size == 1024:   # 1024 -> 512 -> 256
            self.stem = nn.Sequential(
                sn_conv2d(nc, d[1024], 4, 2, 1), lrelu(),
                sn_conv2d(d[1024], d[512], 4, 2, 1), nn.BatchNorm2d(d[512]), lrelu())
        elif im_size == 512:  # 512 -> 256
            self.stem = nn.Sequential(sn_conv2d(nc, d[512], 4, 2, 1), lrelu())
        elif im_size == 256:  # 256 -> 256
            self.stem = nn.Sequential(sn_conv2d(nc, d[512], 3, 1, 1), lrelu())
        else:                 # 128 -> 128 (ours): the 256 stem's rule, one stage lower
            self.stem = nn.Sequential(sn_conv2d(nc, d[256], 3, 1, 1), lrelu())

        # Residual trunk down to 8x8. The map at resolution r has d[2r] channels (authors' naming:
        # the 256x256 map carries d[512]), so each down-block goes d[2r] -> d[r].
        top = min(im_size, 256)
        self.trunk_resolutions = [r for r in (128, 64, 32, 16, 8) if r < top]  # outputs of the blocks
        self.down = nn.ModuleDict(
            {str(r): DownBlockComp(d[4 * r], d[2 * r]) for r in self.trunk_resolutions})
        # SLEs inside D: early high-resolution maps gate late low-resolution ones (x8 apart).
        self.sle = nn.ModuleDict(
            {str(hi): SLE(d[16 * hi], d[2 * hi]) for hi in (32, 16, 8) if 8 * hi <= top})

        # Real/fake logits from the 8x8 map: (B, d16, 8, 8) -> (B, d8, 8, 8) -> (B, 1, 5, 5).
        self.logits_big = nn.Sequential(
            sn_conv2d(d[16], d[8], 1, 1, 0), nn.BatchNorm2d(d[8]), lrelu(),
            sn_conv2d(d[8], 1, 4, 1, 0))

        # Small branch on the 128x128 image: 128 -> 64 -> 32 -> 16 -> 8, then (B, 1, 5, 5) logits.
        self.small = nn.Sequential(
            sn_conv2d(nc, d[256], 4, 2, 1), lrelu(),  # (B, d256, 64, 64)
            DownBlock(d[256], d[128]),                # (B, d128, 32, 32)
            DownBlock(d[128], d[64]),                 # (B, d64, 16, 16)
            DownBlock(d[64], d[32]))                  # (B, d32, 8, 8)
        self.logits_small = sn_conv2d(d[32], 1, 4, 1, 0)

        # The three decoders of §3.2.
        self.decoder_big = Decoder(d[16], nc)
        self.decoder_part = Decoder(d[32], nc)
        self.decoder_small = Decoder(d[32], nc)
        self.projection = None           # not in the paper: the class projection, see conditional.py
        init_weights(self)

    def remove_sle(self):
        """Table 2's ablation: D without its internal SLEs (built, then dropped: see Generator.remove_sle)."""
        self.sle = nn.ModuleDict()
        return self

    def remove_decoders(self):
        """Table 2's ablation: a plain discriminator, no decoders and so no L_recons (§3.2 removed)."""
        self.decoder_big = self.decoder_part = self.decoder_small = None
        return self

    def forward(self, img, img_128, part=None, y=None):
        feats = {}
        x = self.stem(img)                                 # (B, d512, 256, 256), or (B, d256, 128, 128) at 128
        feats[x.shape[-1]] = x
        for r in self.trunk_resolutions:
            x = self.down[str(r)](x)                       # (B, d[2r], r, r)
            if str(r) in self.sle:                         # 32, 16, 8: gated by the map at 8r
                x = self.sle[str(r)](feats[8 * r], x)
            feats[r] = x
        feat_8 = feats[8]                                  # (B, d16, 8, 8)
        logits_big = self.logits_big(feat_8)               # (B, 1, 5, 5)

        feat_small = self.small(img_128)                   # (B, d32, 8, 8)
        logits_small = self.logits_small(feat_small)       # (B, 1, 5, 5)
        if self.projection is not None and y is not None:  # class-conditional D (conditional.py): + <V[y], phi(x)>
            logits_big = logits_big + self.projection["big"](feat_8, y)             # + (B, 1, 1, 1)
            logits_small = logits_small + self.projection["small"](feat_small, y)   # + (B, 1, 1, 1)
        if part is None:
            return logits_big, logits_small

        # Eq. 2's decoders, on real images only (none after `remove_decoders`: an empty dict).
        recons = {}
        if self.decoder_big is not None:
            recons["big"] = self.decoder_big(feat_8)                            # (B, nc, 128, 128)
            recons["small"] = self.decoder_small(feat_small)                    # (B, nc, 128, 128)
            recons["part"] = self.decoder_part(crop_quarter(feats[16], part))   # 8x8 quarter -> (B, nc, 128, 128)
        return logits_big, logits_small, recons
