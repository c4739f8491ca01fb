"""The distance inside D's reconstruction loss L_recons (paper §3.2, Eq. 2), chosen by `--recon`.

Eq. 2 compares each decoder's output with its target through a distance; the authors' code uses
LPIPS on VGG features (Zhang et al. 2018). The default here is a pixel distance
(`losses.pixel_distance`), which needs no downloaded weights; LPIPS is the optional `--recon lpips`,
loaded here because it is an optional extra that downloads its weights. Each returns one value per
image, (B, C, 128, 128) x2 -> (B,); losses.reconstruction_loss sums them over the batch, as the
authors do. A pixel MSE and LPIPS are different distances on different scales, so at the same
`--recon_weight` the term does not pull on D equally hard (docs/ablation.md measures the terms).

Used by train.py; imports losses.py and `cli.UsageError`.
"""

import warnings

from losses import pixel_distance
from plumbing.cli import UsageError


def lpips_distance(device):
    """The authors' distance: LPIPS on VGG features (Zhang et al. 2018), one value per image. An
    optional extra: `pip install lpips`; its VGG weights download once on first use."""
    try:
        import lpips
    except ImportError:
        raise UsageError("--recon lpips needs the lpips package: pip install lpips (or use --recon mse)")
    try:
        with warnings.catch_warnings():   # torchvision's deprecation notes about lpips' own call
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="vgg", verbose=False).to(device).eval().requires_grad_(False)
    except Exception as e:   # no network for the VGG weights, most often
        raise UsageError(f"--recon lpips: could not build LPIPS-VGG ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); its VGG weights download "
                         f"once on first use, so run once with a network (or use --recon mse)")
    return lambda a, b: net(a, b).flatten()                    # (B,)


def reconstruction_distance(kind, device):
    """train.py's --recon: 'mse' or 'l1' (pixels) or 'lpips' (the authors')."""
    return lpips_distance(device) if kind == "lpips" else pixel_distance(kind)
