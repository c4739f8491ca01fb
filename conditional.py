"""Class-conditional FastGAN and orthogonal regularisation: two ideas of BigGAN (Brock et al., ICLR 2019)
that FastGAN does not use.

A reader of the FastGAN paper may skip this file: none of it is FastGAN, and with train.py's defaults
none of it runs. FastGAN is unconditional (it learns one few-shot set) and already takes two things
from BigGAN: the hinge loss and the EMA generator (sample.py adds BigGAN's truncation trick, which the
authors' code does not use: their z is plain N(0, I)). This file adds two more:

1. Classes (`--classes`): one network learns several few-shot sets at once, and the class says which
   set an image belongs to. G is told the class by BigGAN's class-conditional BatchNorm (BigGAN §3 and
   its Appendix B): every BatchNorm of G keeps its normalisation but takes its gain and bias from the
   class,
        h' = BN(h) * (1 + W_gain e_y + b_gain) + (W_bias e_y + b_bias),        e_y = E[y]
   where E is ONE class embedding shared by the whole of G, projected linearly to each layer's gains
   and biases (BigGAN's "shared embedding", the "Shared" column of its Table 1: fewer parameters and
   faster training than an embedding per layer). D is told the class by Miyato & Koyama's projection
   (ICLR 2018, "cGANs with Projection Discriminator", §3, Eq. 3), which BigGAN uses too:
        D(x, y) = psi(phi(x)) + < V[y], phi(x) >
   phi(x): D's features of the image pooled over positions; psi: D's unconditional head; V: one learned
   vector per class. The inner product asks "do these features look like class y?", and it is a
   *projection* rather than an extra input channel: the paper shows that this form follows from the
   log-likelihood ratio of the class model (§3) and trains better than concatenating y.
2. Orthogonal regularisation (`--ortho BETA`, BigGAN §3.1): a penalty on G's loss that keeps the
   filters of each layer from pointing the same way. BigGAN found that it makes G "amenable to the
   truncation trick" (smooth enough that truncated latents give good images: 60% of its runs against
   16% without). FastGAN does not use it; BigGAN's paper chose beta = 1e-4 (`--ortho 1e-4`, which in
   BigGAN's released code is a strength of 2e-4: see section 3 below).

Where each piece meets FastGAN's networks:
- G (generator.py): every nn.BatchNorm2d of G (the 4x4 input block and every up-block, 2*f[r] channels)
  becomes a `ConditionalBatchNorm2d`, all fed by one `ClassEmbedding` (128-d, BigGAN's size). BigGAN
  also concatenates a chunk of z to e_y for each layer ("skip-z", hierarchical latents); FastGAN feeds z
  at the input only, and so do we.
- D (discriminator.py): FastGAN's D has two heads, each a 5x5 map of logits (§3.2): `logits_big` from
  the 8x8 map of the main trunk and `logits_small` from the 8x8 map of the small branch. Each gets its
  own projection, from the map its logits come from, phi = that map's mean over its 8x8 positions:
        logits_big   (B, 1, 5, 5) += < V_big[y],   mean(feat_8) >        (B, 1, 1, 1)
        logits_small (B, 1, 5, 5) += < V_small[y], mean(feat_small) >    (B, 1, 1, 1)
  The class term is the same for the 25 patch logits of an image: whether the image fits its class is
  a question about the whole image. A mean, not Miyato & Koyama's sum over positions, so that the term
  is on the scale of one patch logit (a sum over 64 positions would swamp the hinge's margin of 1). V is
  spectrally normalised, as in their code and BigGAN's D (FastGAN normalises every layer of D too).
- Unconditional networks are untouched: `make_conditional_generator` and `add_projection` convert a
  built G and D in place, and generator.py and discriminator.py each hold one `if` for the classes.
  G(z, y=y) and D(img, img_128, y=y) then take y, (B,) class indices; G refuses to run without y,
  D without y gives the class-free part psi(phi(x)) of its logits.

Batches (images.py): drawn uniformly over the images, as without classes, so each class appears in
proportion to its size; the fakes of an iteration are made for the classes of its reals (train.py).

Also here, for the scripts: `grid_labels` (the training grids' classes). This module imports nothing
of ours.
"""

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

EMBED_DIM = 128   # size of G's shared class embedding: BigGAN's (its `shared_dim`)


# ------------------------------------------------------------------------------------------------
# 1. G: class-conditional BatchNorm from one shared class embedding (BigGAN §3, Appendix B)
# ------------------------------------------------------------------------------------------------

class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are linear functions of the class embedding e_y (BigGAN):
    (B, C, H, W) -> (B, C, H, W),  BN(x) * (1 + W_gain e_y + b_gain) + (W_bias e_y + b_bias).

    G's blocks call their BatchNorm with the feature map alone, so the class embedding of the current
    batch, `e` (B, dim), is handed to every layer by G's `ClassEmbedding` before each forward pass.
    Weights N(0, 0.02) like FastGAN's convs (§4), biases 0: gains start at 1 +- 0.23, different per class."""

    def __init__(self, num_features, dim=EMBED_DIM):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)   # normalise only; running statistics as BN's
        self.to_gain = nn.Linear(dim, num_features)            # e_y (B, dim) -> (B, C), added to 1
        self.to_bias = nn.Linear(dim, num_features)            # e_y (B, dim) -> (B, C)
        for lin in (self.to_gain, self.to_bias):
            nn.init.normal_(lin.weight, 0.0, 0.02)
            nn.init.zeros_(lin.bias)
        self.e = None                                          # (B, dim), set by ClassEmbedding

    def forward(self, x):
        gain = 1 + self.to_gain(self.e)                        # (B, C)
        bias = self.to_bias(self.e)                            # (B, C)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]   # (B, C, H, W)


class ClassEmbedding(nn.Module):
    """G's shared class embedding E (BigGAN's "shared embedding"): one learned 128-d vector per class.
    `forward(y)`, y (B,) class indices, looks up e_y (B, dim) and hands it to each of G's
    `ConditionalBatchNorm2d` for the pass that follows (G.forward calls it first). Also keeps the class
    names (the sorted subfolder names of the training folder), so a loaded G knows its classes."""

    def __init__(self, class_names, layers, dim=EMBED_DIM):
        super().__init__()
        self.names = list(class_names)
        self.embed = nn.Embedding(len(self.names), dim)        # entries N(0, 1), torch's default init
        # (BigGAN's code initialises its shared embedding with its G init, orthogonal by default)
        self.layers = layers     # G's ConditionalBatchNorm2d modules: a plain list (they are registered in G)

    def forward(self, y):
        if y is None:
            raise ValueError(f"this generator is class-conditional ({len(self.names)} classes): call it "
                             f"with y, the class index of each image, e.g. G(z, y=y)")
        e = self.embed(y)                                      # (B, dim)
        for layer in self.layers:
            layer.e = e
        return e


def make_conditional_generator(G, class_names, dim=EMBED_DIM):
    """Turn a built FastGAN generator into BigGAN's class-conditional one, in place: every
    nn.BatchNorm2d becomes a ConditionalBatchNorm2d (same width), and G gets its shared ClassEmbedding.
    Every other layer keeps its weights. Returns G."""
    layers = []
    for parent in list(G.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                cbn = ConditionalBatchNorm2d(child.num_features, dim).to(child.running_mean.device)
                setattr(parent, name, cbn)     # also in an nn.Sequential, whose children are named '0', '1', ...
                layers.append(cbn)
    G.class_embedding = ClassEmbedding(class_names, layers, dim).to(next(G.parameters()).device)
    return G


# ------------------------------------------------------------------------------------------------
# 2. D: the projection term on both logit maps (Miyato & Koyama 2018, §3, Eq. 3)
# ------------------------------------------------------------------------------------------------

class Projection(nn.Module):
    """< V[y], phi(x) > for one of D's logit maps: feat (B, C, h, w) and y (B,) -> (B, 1, 1, 1), added
    to every logit of that map. phi = the mean of the map over positions; V spectrally normalised."""

    def __init__(self, n_classes, channels):
        super().__init__()
        self.embed = spectral_norm(nn.Embedding(n_classes, channels))   # V: (n_classes, C)

    def forward(self, feat, y):
        phi = feat.mean(dim=(2, 3))                                    # (B, C): pooled over the 8x8 positions
        return (self.embed(y) * phi).sum(dim=1).view(-1, 1, 1, 1)      # (B, 1, 1, 1)


def add_projection(D, n_classes):
    """Give a built FastGAN discriminator the projection term on both of its logit maps, in place:
    `projection['big']` reads the trunk's 8x8 map (the input of logits_big), `projection['small']` the
    small branch's 8x8 map (the input of logits_small). Returns D."""
    channels = {"big": D.logits_big[0].in_channels, "small": D.logits_small.in_channels}   # d[16], d[32]
    device = next(D.parameters()).device
    D.projection = nn.ModuleDict({k: Projection(n_classes, c) for k, c in channels.items()}).to(device)
    return D


# ------------------------------------------------------------------------------------------------
# 3. Orthogonal regularisation of G (BigGAN §3.1)
# ------------------------------------------------------------------------------------------------
#
#     R_beta(W) = beta * || W W^T * (1 - I) ||_F^2,    W: one row per filter, (out, in * kh * kw)
#
# The entry (i, j) of W W^T is the inner product of filters i and j; the diagonal (each filter's
# squared norm) is masked out. BigGAN §3.1: the full orthogonality penalty ||W W^T - I||^2 "is known
# to be limiting", so it keeps only the off-diagonal part, which pushes filters apart without
# constraining their norms; it sweeps beta and selects 1e-4. (The paper writes W^T W with the filters
# as columns; the same matrix.)
#
# Which convention: we differentiate the formula above as written, so `--ortho BETA` adds to each
# weight's gradient  d R / d W = 4 BETA (W W^T * (1 - I)) W.  BigGAN's released code (its `ortho`
# update) adds  2 strength (W W^T * (1 - I)) W,  the gradient of strength/2 * ||W W^T * (1 - I)||^2:
# half the formula's. So `--ortho 1e-4` here equals a strength of 2e-4 in BigGAN's code
# (test_conditional.py pins the gradient).
#
# Which weights: "the generator's weights" (§3.1), i.e. every conv, transposed conv and linear weight
# of G, the linear maps of the conditional BatchNorms included, but not the shared class embedding
# (a table of class vectors, not filters: BigGAN's released code leaves it out too) and not the 1-D
# parameters (BatchNorm gains and biases, the noise strengths).
#
# Raw or normalised weight: FastGAN puts spectral norm on every conv, so a layer computes with
# W / sigma(W) and its stored weight (`parametrizations.weight.original`) has a free scale: multiplying
# it by c changes nothing G computes. A penalty on the stored weight (what BigGAN's code does: its
# spectral norm also divides on the fly) could then be lowered by shrinking every weight, which leaves
# G as it is and only raises Adam's effective step size. We regularise the normalised weight, the one
# the layer computes with: its scale is fixed (largest singular value 1), so the penalty can only fall
# by decorrelating the filters, which is what §3.1 asks. sigma is the layer's own estimate, u^T W v with
# the vectors u, v of its power iteration as this step's forward pass of G left them, so the penalty
# sees exactly the weights of that forward pass and runs no power iteration of its own.

def normalised_weight(layer):
    """The weight `layer` computes with, as a matrix with one row per output filter (out, in*kh*kw):
    W / sigma(W) for a spectrally normalised layer (sigma from its power-iteration vectors, no new
    iteration), the plain weight otherwise. A transposed conv's weight (in, out, kh, kw) is read by its
    output filters."""
    if parametrize.is_parametrized(layer, "weight"):
        W = layer.parametrizations.weight.original
        sn = layer.parametrizations.weight[0]                  # torch's spectral norm: buffers _u, _v
        W = W / torch.vdot(sn._u, sn._reshape_weight_to_matrix(W) @ sn._v)
    else:
        W = layer.weight
    if isinstance(layer, nn.ConvTranspose2d):
        W = W.transpose(0, 1)                                  # (out, in, kh, kw)
    return W.flatten(1)                                        # (out, in * kh * kw)


def orthogonal_penalty(G, beta):
    """BigGAN's R_beta summed over G's conv, transposed conv and linear weights (0-d tensor), to be
    added to G's loss only. beta = 0 (FastGAN's setting) computes nothing and returns 0.
    Works on a DDP- or compile-wrapped G (their .modules() reach G's layers)."""
    if beta == 0:
        return 0.0
    total = 0.0
    for layer in G.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            W = normalised_weight(layer)                       # (out, fan_in)
            gram = W @ W.t()                                   # (out, out): filter inner products
            off_diagonal = gram * (1 - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype))
            total = total + off_diagonal.square().sum()
    return beta * total


# ------------------------------------------------------------------------------------------------
# For the scripts: the classes of the training grids
# ------------------------------------------------------------------------------------------------

def grid_labels(class_names, device, per_class=4, unconditional=16):
    """(number of samples, their classes) of train.py's sample grids, 4 per row: without classes 16
    samples and no labels; with classes one row of `per_class` samples per class, (K * per_class,)."""
    if not class_names:
        return unconditional, None
    y = torch.arange(len(class_names)).repeat_interleave(per_class)    # 0 0 0 0 1 1 1 1 ...
    return len(y), y.to(device)
