"""The FastGAN generator: paper §3.1 and Fig. 3.

    z (B, nz), seen as (B, nz, 1, 1)
      init: ConvTranspose 4x4, BN, GLU  -> 4x4      --.
      UpBlockComp                        -> 8x8      --|--.
      UpBlock                            -> 16x16    --|--|--.
      UpBlockComp                        -> 32x32    --|--|--|--.
      UpBlock                            -> 64x64    <-'  |  |  |   x SLE(4x4 -> 64x64)
      UpBlockComp                        -> 128x128  <----'  |  |   x SLE(8x8 -> 128x128); to_128, tanh: image_128
      UpBlock                            -> 256x256  <-------'  |   x SLE(16x16 -> 256x256)
      UpBlockComp                        -> 512x512  <----------'   x SLE(32x32 -> 512x512)
      UpBlock                            -> 1024x1024
      to_big (conv 3x3), tanh on the last map: the image at im_size
    (the blocks above im_size are absent; each SLE squeezes the low-resolution map on its left into
    per-channel gates that multiply the high-resolution map it points to)

The paper's design choices, and where each lives below:
- "A minimal number of layers at high resolution" (§3): one up-block per resolution, each a nearest
  upsample, one 3x3 conv, BatchNorm and GLU. The channel width halves as resolution doubles above 64,
  so 1024x1024 costs only ngf/8 channels.
- Every other up-block is a "comp" block with two conv stages and learned-strength noise injection
  (as in StyleGAN), giving the network more capacity at 8, 32, 128 and 512.
- SLE (§3.1, Eq. 1, `sle.py`) gates the maps at 64, 128, 256 and 512 with the maps at 4, 8, 16 and 32.
- Spectral norm on every conv and weights N(0, 0.02) (§4), done by `sn_conv2d` and `init_weights`.

Where we depart from the authors' code: their generator returns its images *without* tanh at 256
and 512 and with tanh only at 1024, so at 256 and 512 its images leave [-1, 1] from the start
(docs/measurements.md measures by how much). The data lie in [-1, 1], so we apply tanh to both
outputs at every size: D then never sees fakes outside the range of the reals.

Also defined here and reused by discriminator.py: `sn_conv2d`, `init_weights`, `UpBlock`, and the
channel-width table.

Not in the paper: with `--classes`, conditional.py turns G's BatchNorms into BigGAN's class-conditional
ones and G takes the classes as `G(z, y=y)`; without, `class_embedding` is None.
"""

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from sle import SLE

# The resolutions FastGAN is built for. 256, 512 and 1024 are the authors' networks exactly; 128 is
# the same rules with the stages above 128 removed, so the method can be taught on a CPU.
SUPPORTED_SIZES = (128, 256, 512, 1024)

# Channel width of G's feature map at each resolution, as a multiple of ngf (Fig. 3; authors' `nfc`).
G_WIDTH = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}

# SLE pairs of the generator: (low resolution that makes the gate, high resolution it gates).
G_SLE_PAIRS = ((4, 64), (8, 128), (16, 256), (32, 512))

# Resolutions reached by a "comp" up-block (two conv stages + noise); the others use a plain one.
COMP_RESOLUTIONS = (8, 32, 128, 512)


def check_config(im_size, width, width_name):
    """Refuse a size or width the networks cannot be built for, naming the allowed values."""
    if im_size not in SUPPORTED_SIZES:
        raise ValueError(f"im_size must be one of {SUPPORTED_SIZES}, got {im_size!r}")
    # Widths are ngf times 1/8 at 1024x1024: a multiple of 8 keeps every layer's width whole.
    if not isinstance(width, int) or width <= 0 or width % 8 != 0:
        raise ValueError(f"{width_name} must be a positive multiple of 8 (8, 16, 32, 64, ...), got {width!r}")


def sn_conv2d(*args, **kwargs):
    """A bias-free Conv2d with spectral norm (§4: 'spectral normalization on every conv')."""
    return spectral_norm(nn.Conv2d(*args, bias=False, **kwargs))


def init_weights(net):
    """The authors' initialisation, in one place: conv weights ~ N(0, 0.02); BatchNorm gamma ~ N(1, 0.02),
    beta = 0. Spectral norm estimates each weight's largest singular value sigma with power-iteration
    vectors u, v; torch's parametrization runs 15 iterations when it is applied, so it is applied anew
    after the redraw, on the new weights (then one iteration per training forward).
    Where this differs from the authors' code: their hook-based spectral_norm starts u and v at random
    and runs one iteration per training forward, so their first forwards divide each conv by an
    estimate of sigma that is still too low; ours starts from a converged one (the two are measured
    side by side in docs/measurements.md)."""
    for m in list(net.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            normed = parametrize.is_parametrized(m, "weight")
            if normed:
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            nn.init.normal_(m.weight, 0.0, 0.02)
            if normed:
                spectral_norm(m)   # 15 power iterations on the new weights
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class NoiseInjection(nn.Module):
    """x + w * n with one learned scalar w (initialised to 0) and n ~ N(0, 1) of shape (B, 1, H, W):
    StyleGAN's per-pixel noise, one map broadcast over all channels, its strength learned.

    The noise is passed in, not drawn here: `Generator.draw_noise` draws every injection's noise at
    once, so a caller can fix it (same seed, same image) and share it between two latents (style mixing).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        return x + self.weight * noise   # (B, C, H, W) + (1,) * (B, 1, H, W) -> (B, C, H, W)


class UpBlock(nn.Module):
    """Fig. 3's 'UpBlock': nearest upsample x2, conv 3x3, BatchNorm, GLU.  (B, c_in, H, W) -> (B, c_out, 2H, 2W).

    GLU splits the 2*c_out channels in two halves and returns a * sigmoid(b): a learned gate, cheaper
    than a second conv. Also used by D's decoders (§3.2)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = sn_conv2d(c_in, 2 * c_out, 3, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_out)
        self.glu = nn.GLU(dim=1)

    def forward(self, x):
        x = self.up(x)      # (B, c_in, 2H, 2W)
        x = self.conv(x)    # (B, 2*c_out, 2H, 2W)
        x = self.bn(x)      # (B, 2*c_out, 2H, 2W)
        return self.glu(x)  # (B, c_out, 2H, 2W)


class UpBlockComp(nn.Module):
    """Fig. 3's 'UpBlock-Comp': an UpBlock with noise injection, then a second conv/noise/BN/GLU stage.

    Takes its two noise maps, each (B, 1, 2H, 2W), as `noise`."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = sn_conv2d(c_in, 2 * c_out, 3, 1, 1)
        self.noise1 = NoiseInjection()
        self.bn1 = nn.BatchNorm2d(2 * c_out)
        self.conv2 = sn_conv2d(c_out, 2 * c_out, 3, 1, 1)
        self.noise2 = NoiseInjection()
        self.bn2 = nn.BatchNorm2d(2 * c_out)
        self.glu = nn.GLU(dim=1)

    def forward(self, x, noise):
        x = self.conv1(self.up(x))                                    # (B, 2*c_out, 2H, 2W)
        x = self.glu(self.bn1(self.noise1(x, noise[0])))              # (B, c_out, 2H, 2W)
        x = self.glu(self.bn2(self.noise2(self.conv2(x), noise[1])))  # (B, c_out, 2H, 2W)
        return x


class Generator(nn.Module):
    """FastGAN's G (Fig. 3). `G(z)` with z of shape (B, nz) returns `(img, img_128)`:
    (B, nc, im_size, im_size) and (B, nc, 128, 128), both in [-1, 1].

    `G(z, z_style=w)` mixes styles (§4.2, Fig. 5): the main path (the content) grows from z, while the
    low-resolution maps that feed the SLE gates (4, 8, 16, 32) come from w.
    `G(z, noise=G.draw_noise(B))` fixes the injected noise; by default it is drawn fresh.
    `G(z, y=y)`: a class-conditional G (conditional.py) makes image i of class y[i]; others ignore y.
    """

    def __init__(self, ngf=64, nz=256, nc=3, im_size=1024):
        super().__init__()
        check_config(im_size, ngf, "ngf")
        if not isinstance(nz, int) or nz <= 0:
            raise ValueError(f"nz must be a positive integer, got {nz!r}")
        self.ngf, self.nz, self.nc, self.im_size = ngf, nz, nc, im_size
        f = {r: int(ngf * m) for r, m in G_WIDTH.items()}  # channels at each resolution

        # Input: z seen as a (B, nz, 1, 1) map; a 4x4 transposed conv makes it a 4x4 map (Fig. 3, top).
        self.init = nn.Sequential(
            spectral_norm(nn.ConvTranspose2d(nz, 2 * f[4], 4, 1, 0, bias=False)),  # (B, 2*f4, 4, 4)
            nn.BatchNorm2d(2 * f[4]),
            nn.GLU(dim=1),                                                         # (B, f4, 4, 4)
        )
        # One up-block per resolution from 8 to im_size, comp blocks at 8, 32, 128, 512.
        self.resolutions = [r for r in (8, 16, 32, 64, 128, 256, 512, 1024) if r <= im_size]
        self.up = nn.ModuleDict()
        for r in self.resolutions:
            block = UpBlockComp if r in COMP_RESOLUTIONS else UpBlock
            self.up[str(r)] = block(f[r // 2], f[r])
        # SLE modules: `sle_64` is the gate of the 64x64 map, computed from the 4x4 map, and so on.
        self.sle = nn.ModuleDict(
            {str(hi): SLE(f[lo], f[hi]) for lo, hi in G_SLE_PAIRS if hi <= im_size}
        )
        # Output heads (tanh applied in forward): a 1x1 conv on the 128x128 map, a 3x3 conv on the last.
        self.to_128 = sn_conv2d(f[128], nc, 1, 1, 0)
        self.to_big = sn_conv2d(f[im_size], nc, 3, 1, 1)
        # tanh on both images. The authors' G has it at 1024 only: plumbing/pretrained.py makes this an
        # identity for their 256 and 512 weights, so that an imported G computes what theirs computes.
        self.tanh = nn.Tanh()
        self.class_embedding = None      # not in the paper: BigGAN's class embedding, see conditional.py
        init_weights(self)

    def remove_sle(self):
        """Table 2's ablation: the same generator without skip-layer excitation (the high-resolution
        maps pass through ungated). The SLEs are built, then dropped, so that the layers every variant
        shares draw the same initial weights from one seed."""
        self.sle = nn.ModuleDict()
        return self

    def draw_noise(self, batch_size, device=None, generator=None, dtype=None):
        """Every noise map the comp blocks inject, in forward order: {resolution: [n1, n2]}, each (B, 1, r, r)."""
        return {
            r: [torch.randn(batch_size, 1, r, r, device=device, generator=generator, dtype=dtype)
                for _ in range(2)]
            for r in self.resolutions if r in COMP_RESOLUTIONS
        }

    def _block(self, r, x, noise):
        block = self.up[str(r)]
        return block(x, noise[r]) if r in COMP_RESOLUTIONS else block(x)

    def low_res_path(self, z, noise):
        """The maps at 4, 8, 16 and 32: the SLE gates' inputs (the 'style' of Fig. 5)."""
        feats = {4: self.init(z.view(z.shape[0], -1, 1, 1))}  # (B, f4, 4, 4)
        for r in (8, 16, 32):
            feats[r] = self._block(r, feats[r // 2], noise)   # (B, f8, 8, 8) ... (B, f32, 32, 32)
        return feats

    def forward(self, z, z_style=None, noise=None, y=None):
        if noise is None:
            noise = self.draw_noise(z.shape[0], z.device, dtype=z.dtype)
        if self.class_embedding is not None:   # class-conditional G (conditional.py): every BatchNorm
            self.class_embedding(y)            # takes its gain and bias from y's class embedding
        feats = self.low_res_path(z, noise)  # content path up to 32x32
        # The gates read the style latent's low-resolution maps; by default, the content's own.
        # The same noise is used on both paths, so G(z, z_style=z) == G(z).
        gates_from = feats if z_style is None else self.low_res_path(z_style, noise)

        x = feats[32]                                   # (B, f32, 32, 32)
        for r in self.resolutions:
            if r <= 32:
                continue
            x = self._block(r, x, noise)                # (B, f[r], r, r)
            if str(r) in self.sle:                      # 64, 128, 256, 512: Eq. 1
                x = self.sle[str(r)](gates_from[r // 16], x)
            if r == 128:
                img_128 = self.tanh(self.to_128(x))     # (B, nc, 128, 128)
        img = self.tanh(self.to_big(x))                 # (B, nc, im_size, im_size)
        return img, img_128
