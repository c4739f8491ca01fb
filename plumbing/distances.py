"""The per-image distances of D's reconstruction loss L_recons (paper §3.2, Eq. 2), in one place.

Eq. 2 compares each decoder's output with its target through a distance; the authors' code uses
LPIPS on VGG features (Zhang et al. 2018). Here the default is a pixel distance, which needs no
downloaded weights, and LPIPS is the optional `--recon lpips`. Each returns one value per image,
(B, C, 128, 128) x2 -> (B,); train.reconstruction_loss sums them over the batch, as the authors do.
A pixel MSE and LPIPS are different distances on different scales, so at the same `--recon_weight`
the term does not pull on D equally hard. Measured with the pixel MSE at weight 1 (docs/ablation.md):
L_recons is 3.5 times D's two hinge terms over a run's first 50 iterations and 2.1 times over its
last 50 (400 iterations, 128x128); weights 3 and 10 scored no better beyond the spread over 3 seeds.

Used by train.py (and bench.py, metrics.py); imports nothing of ours but `cli.UsageError`.
"""

import warnings

from plumbing.cli import UsageError


def pixel_distance(kind):
    """One distance per image, (B, C, 128, 128) x2 -> (B,): the mean over channels and pixels of the
    squared (mse) or absolute (l1) difference."""
    if kind == "mse":
        return lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))
    return lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))


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
