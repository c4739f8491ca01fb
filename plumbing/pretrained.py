"""Weights trained elsewhere: the authors' released files read into our networks (sample.py --ckpt),
and a checkpoint to fine-tune from (train.py --init_from). docs/pretrained.md is the user's guide.

A reader of the paper may skip this file: it holds no part of the method, only names and shapes.

The authors' files. Their train.py saves two files every 5,000 iterations (and at the last one):

    models/{iter}.pth      {'g': G's state_dict with the EMA weights in it, 'd': D's state_dict}
    models/all_{iter}.pth  {'g': the trained G's state_dict, 'd': D's, 'g_ema': the EMA weights, a plain
                            list of tensors in G.parameters() order, 'opt_g', 'opt_d': Adam's state_dicts}

In {iter}.pth the EMA weights sit beside the trained G's buffers (spectral norm's vectors, BatchNorm's
running statistics): their train.py copies the average into G's parameters and saves G's state_dict.

Their networks are ours layer for layer (same layers, same parameter counts: test_fastgan.py), under
other names, which `generator_names` and `discriminator_names` below map module by module:
- modules: their G's `feat_64` is our `up.64`, `se_64` our `sle.64`; their D's `down_4` (the block
  from 256x256 to 128x128) our `down.128`, `se_2_16` (the 256x256 map gating the 32x32 one) our
  `sle.32`, `rf_big` our `logits_big`, `down_from_small` our `small`;
- spectral norm: theirs is the older hook, torch.nn.utils.spectral_norm, whose state_dict holds
  `weight_orig`, `weight_u`, `weight_v`; ours is torch.nn.utils.parametrizations.spectral_norm, whose
  state_dict holds the same three tensors as `parametrizations.weight.original`,
  `parametrizations.weight.0._u` and `parametrizations.weight.0._v` (the weight before normalisation,
  the power iteration's left vector (out,) and right vector (in * k * k,));
- nn.DataParallel (their multi_gpu runs) prefixes every key with `module.`: it is dropped.
Nothing in their files records the image size, the widths or nz; they are read from the shapes:
`init.init.0.weight_orig` is (nz, 2 * 16 * ngf, 4, 4), `rf_big.0.weight_orig` (16 * ndf, 8 * ndf, 1, 1),
and the deepest `feat_R` block present gives the size R. Their README says that some released models
come with "a different models.py" (other widths or depths): a file whose shapes do not fit our networks
is refused, naming the first key that does not fit and both shapes, before anything is loaded.

What their code computes differently, and what is done here (the details: docs/pretrained.md):
- tanh: their G applies tanh only at 1024x1024. At 256 and 512 its two images are the last
  convolutions' outputs (values reach +-4), which their save_image clamps to [-1, 1]. An imported 256 or
  512 G computes the same (`match_their_outputs`: our G's `tanh` becomes the identity), and sample.py's
  conversion to pixels clamps. Fine-tuning (train.py --init_from) trains with ours: tanh at every size.
- BatchNorm: their eval.py samples in train mode (`net_ig.eval()` is commented out), each batch
  normalised with its own statistics. Our default samples in eval mode, and an EMA generator read from
  their files first gets BatchNorm statistics of its own, recomputed from its samples (ema.py): the
  file's are the trained G's. `--bn batch` samples in train mode, as theirs does (`ready_to_sample`).
- spectral norm in train mode: every forward runs one power iteration, their hook v then u, torch's
  parametrization u then v. In eval mode both divide the weight by u . W v with the stored vectors,
  exactly; in train mode the two agree once the vectors have converged, as in a trained file (every
  training forward runs one iteration). docs/pretrained.md gives the measured differences.
"""

import re
from pathlib import Path

import torch
import torch.nn as nn

from discriminator import Discriminator
from ema import recompute_batchnorm_statistics
from generator import COMP_RESOLUTIONS, G_SLE_PAIRS, Generator
from plumbing.checkpoint import is_ours, read_file
from plumbing.cli import UsageError, given_flags

# Their spectral norm's tensors and ours (the suffix of each key).
SPECTRAL_NORM = {"weight_orig": "parametrizations.weight.original",
                 "weight_u": "parametrizations.weight.0._u",
                 "weight_v": "parametrizations.weight.0._v"}
# Buffers, not parameters: the keys of a state_dict that G.parameters(), and so 'g_ema', skips.
BUFFER_SUFFIXES = ("weight_u", "weight_v", "running_mean", "running_var", "num_batches_tracked")
# The statistics of a BatchNorm that files from older torch versions may lack (0 is torch's default).
OPTIONAL_KEYS = ("num_batches_tracked",)
# The flags a fine-tuning run takes from --init_from's file.
ARCH_FLAGS = ("im_size", "ngf", "ndf", "nz")
BN_MODES = ("eval", "batch")
STATISTICS_BATCH, STATISTICS_BATCHES = 8, 16   # BatchNorm statistics recomputed from 16 x 8 samples


# ------------------------------------------------------------------------------------------------
# Their module names and ours
# ------------------------------------------------------------------------------------------------

def generator_names(im_size):
    """{their module: ours} for every module of G with tensors, at im_size (their models.py, Generator).

    Their up-blocks are nn.Sequential: UpBlock = (Upsample, conv, BatchNorm, GLU), UpBlockComp =
    (Upsample, conv, NoiseInjection, BatchNorm, GLU, conv, NoiseInjection, BatchNorm, GLU); their SEBlock's
    `main` = (AdaptiveAvgPool, conv 4x4, Swish, conv 1x1, Sigmoid)."""
    names = {"init.init.0": "init.0", "init.init.1": "init.1"}     # transposed conv, BatchNorm
    for r in (8, 16, 32, 64, 128, 256, 512, 1024):
        if r > im_size:
            break
        if r in COMP_RESOLUTIONS:
            names.update({f"feat_{r}.1": f"up.{r}.conv1", f"feat_{r}.2": f"up.{r}.noise1", f"feat_{r}.3": f"up.{r}.bn1",
                          f"feat_{r}.5": f"up.{r}.conv2", f"feat_{r}.6": f"up.{r}.noise2", f"feat_{r}.7": f"up.{r}.bn2"})
        else:
            names.update({f"feat_{r}.1": f"up.{r}.conv", f"feat_{r}.2": f"up.{r}.bn"})
    for _, hi in G_SLE_PAIRS:
        if hi <= im_size:
            names.update({f"se_{hi}.main.1": f"sle.{hi}.conv_squeeze", f"se_{hi}.main.3": f"sle.{hi}.conv_excite"})
    names.update({"to_128": "to_128", "to_big": "to_big"})
    return names


def discriminator_names():
    """{their module: ours} for D (their models.py, Discriminator), the same at every size.

    Their `down_K` blocks are named by how far they have come (K = 4: the block from the 256x256 map to
    128x128), ours by the resolution they reach; inside, both are DownBlockComp(main, direct) and
    DownBlock(main) with the same layers in the same order. Their SEBlock `se_2_16` gates their
    `feat_16` (32x32) with `feat_2` (256x256): our `sle.32`. Their decoders' up-blocks are
    (Upsample, conv, BatchNorm, GLU), ours UpBlock(conv, bn)."""
    names = {"down_from_big": "stem", "down_from_small": "small", "rf_big": "logits_big", "rf_small": "logits_small"}
    names.update({f"down_{k}": f"down.{512 // k}" for k in (4, 8, 16, 32, 64)})       # down.128 ... down.8
    for k, r in (("2_16", 32), ("4_32", 16), ("8_64", 8)):
        names.update({f"se_{k}.main.1": f"sle.{r}.conv_squeeze", f"se_{k}.main.3": f"sle.{r}.conv_excite"})
    for d in ("decoder_big", "decoder_part", "decoder_small"):
        for i in (1, 2, 3, 4):
            names.update({f"{d}.main.{i}.1": f"{d}.main.{i}.conv", f"{d}.main.{i}.2": f"{d}.main.{i}.bn"})
        names[f"{d}.main.5"] = f"{d}.main.5"                          # the last conv, 32 -> nc
    return names


def translate(key, modules, suffixes):
    """A state_dict key in the other naming: the longest module prefix found in `modules` is replaced,
    then the tensor's own name by `suffixes` (spectral norm's). A key no prefix matches gives None.
    Used both ways (the tables inverted): 'feat_8.1.weight_orig' <-> 'up.8.conv1.parametrizations.weight.original'."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix, tail = ".".join(parts[:i]), ".".join(parts[i:])
        if prefix in modules:
            for a, b in suffixes.items():
                if tail == a or tail.endswith("." + a):
                    tail = tail[:len(tail) - len(a)] + b
                    break
            return f"{modules[prefix]}.{tail}"
    return None


# ------------------------------------------------------------------------------------------------
# Reading their files
# ------------------------------------------------------------------------------------------------

def is_theirs(state):
    """Whether a file's contents have the form of the authors' {iter}.pth or all_{iter}.pth."""
    return isinstance(state, dict) and isinstance(state.get("g"), dict) and isinstance(state.get("d"), dict)


def without_dataparallel(sd):
    """A state_dict with nn.DataParallel's 'module.' prefix dropped from every key that has it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _shape(t):
    return tuple(t.shape) if torch.is_tensor(t) else type(t).__name__


def _networks_of_their_shapes(g, d, path):
    """Our G and D at the size and widths read from their state_dicts g and d (for their shapes), and a
    description of them. Refuses what cannot be read or built."""
    w = g.get("init.init.0.weight_orig")                 # (nz, 2 * 16 * ngf, 4, 4): a transposed conv
    r = d.get("rf_big.0.weight_orig")                    # (16 * ndf, 8 * ndf, 1, 1)
    if not (torch.is_tensor(w) and w.dim() == 4 and torch.is_tensor(r) and r.dim() == 4):
        raise UsageError(f"{path}: its 'g' and 'd' lack init.init.0.weight_orig or rf_big.0.weight_orig, "
                         f"where the authors' networks keep the latent size and widths: not a FastGAN file")
    nz, ngf, ndf = w.shape[0], w.shape[1] // 32, r.shape[0] // 16
    sizes = [s for s in (1024, 512, 256) if any(k.startswith(f"feat_{s}.") for k in g)]
    if not sizes:
        raise UsageError(f"{path}: its 'g' has no feat_256, feat_512 or feat_1024 block: not a FastGAN generator")
    im_size = sizes[0]
    try:
        G, D = Generator(ngf=ngf, nz=nz, im_size=im_size), Discriminator(ndf=ndf, im_size=im_size)
    except ValueError as e:     # a width our networks cannot be built with (not a multiple of 8)
        raise UsageError(f"{path}: ngf {ngf}, ndf {ndf} (read from init.init.0 {_shape(w)} and rf_big.0 "
                         f"{_shape(r)}) do not build our networks: {e}")
    return G, D, f"{im_size}x{im_size}, ngf {ngf}, ndf {ndf}, nz {nz}"


def to_our_names(sd, modules, ours, what, path, described):
    """Their state_dict `sd` under our names, checked against `ours` (our network's state_dict, for the
    shapes): every tensor of the file has a place of the same shape in our network, and every tensor of
    our network is in the file. The first key that breaks either is refused, naming both shapes."""
    out = {}
    for k, v in sd.items():                                               # in the file's order
        mine = translate(k, modules, SPECTRAL_NORM)
        if mine not in ours:
            raise UsageError(f"{path}: {what}[{k}] has no place in the {described} networks that the "
                             f"file's other keys describe (a variant of the authors' models.py, not built here)")
        if not torch.is_tensor(v) or v.shape != ours[mine].shape:
            raise UsageError(f"{path}: {what}[{k}] is {_shape(v)} in the file, but the {described} networks "
                             f"that its other keys describe have {_shape(ours[mine])} there (a variant of the "
                             f"authors' models.py, not built here)")
        out[mine] = v
    inverse, spectral_inverse = {b: a for a, b in modules.items()}, {b: a for a, b in SPECTRAL_NORM.items()}
    for mine, t in ours.items():
        if mine not in out:
            if mine.endswith(OPTIONAL_KEYS):
                out[mine] = torch.zeros((), dtype=t.dtype)
                continue
            raise UsageError(f"{path}: {what} has no {translate(mine, inverse, spectral_inverse)}, which the "
                             f"{described} networks that its other keys describe have, {_shape(t)} (a variant "
                             f"of the authors' models.py, not built here)")
    return out


def with_ema_weights(g, g_ema, path):
    """all_{iter}.pth: the trained G's state_dict `g` with its parameters replaced by the 'g_ema' list,
    which holds them in G.parameters() order, i.e. the state_dict's order without the buffers. This is
    what their {iter}.pth holds (the average in G's parameters, the trained G's buffers)."""
    names = [k for k in g if not k.endswith(BUFFER_SUFFIXES)]
    if not isinstance(g_ema, (list, tuple)) or len(g_ema) != len(names):
        raise UsageError(f"{path}: 'g_ema' should list G's {len(names)} parameters, it holds "
                         f"{len(g_ema) if isinstance(g_ema, (list, tuple)) else type(g_ema).__name__}")
    for k, t in zip(names, g_ema):
        if not torch.is_tensor(t) or t.shape != g[k].shape:
            raise UsageError(f"{path}: 'g_ema' has {_shape(t)} where G's parameter {k} is {_shape(g[k])}")
    return {**g, **dict(zip(names, g_ema))}


def from_theirs(state, path):
    """The authors' {iter}.pth or all_{iter}.pth as a checkpoint of ours: {'iteration' (read from the file's
    name, as their train.py names it), 'args', 'G' (None for {iter}.pth, which holds no trained G),
    'G_ema', 'D', 'authors': what the file was}."""
    g, d = without_dataparallel(state["g"]), without_dataparallel(state["d"])
    G, D, described = _networks_of_their_shapes(g, d, path)
    names = generator_names(G.im_size)
    G_shapes, D_shapes = G.state_dict(), D.state_dict()
    full = "g_ema" in state                                               # all_{iter}.pth
    ema = with_ema_weights(g, state["g_ema"], path) if full else g
    ours = {"G_ema": to_our_names(ema, names, G_shapes, "'g'", path, described),
            "G": to_our_names(g, names, G_shapes, "'g'", path, described) if full else None,
            "D": to_our_names(d, discriminator_names(), D_shapes, "'d'", path, described)}
    number = re.fullmatch(r"(?:all_)?(\d+)\.pth", Path(path).name)
    kind = "all_{iter}.pth (the trained G, its EMA, D)" if full else "{iter}.pth (the EMA generator, D)"
    return {"iteration": int(number.group(1)) if number else "? (not in the file's name)",
            "args": {"im_size": G.im_size, "ngf": G.ngf, "ndf": D.ndf, "nz": G.nz,
                     "no_sle": False, "no_recon": False, "class_names": None},
            **ours,
            "authors": {"kind": kind, "described": described, "tanh": G.im_size == 1024,
                        "dataparallel": any(k.startswith("module.") for k in state["g"])}}


def read_weights(path, need_raw=False):
    """A checkpoint of ours as it is, or one of the authors' files in our names (`from_theirs`), both
    read with weights_only=True. Anything else is one UsageError line. `need_raw`: the trained G is
    wanted (sample.py --raw), which their {iter}.pth does not hold."""
    state = read_file(path)
    if is_ours(state):
        return state
    if not is_theirs(state):
        raise UsageError(f"{path}: not a checkpoint written by this project's train.py, nor one of the "
                         f"authors' files ({{iter}}.pth with 'g' and 'd'; all_{{iter}}.pth with 'g_ema' too)")
    state = from_theirs(state, path)
    if need_raw and state["G"] is None:
        raise UsageError(f"{path}: the authors' {{iter}}.pth holds only the EMA generator; the trained G "
                         f"(--raw) is in their all_{{iter}}.pth")
    return state


# ------------------------------------------------------------------------------------------------
# Sampling an imported generator
# ------------------------------------------------------------------------------------------------

def match_their_outputs(G, state, log=print):
    """An authors' G at 256 or 512 computes its images as theirs does: without tanh (said once).
    Ours, and theirs at 1024, are left as they are."""
    theirs = state.get("authors")
    if theirs is not None and not theirs["tanh"]:
        G.tanh = nn.Identity()
        log(f"the authors' {G.im_size}x{G.im_size} generator has no tanh on its outputs: as theirs, its "
            f"images are clamped to [-1, 1] only when written (their save_image does the same)")
    return G


def ready_to_sample(G, state, raw=False, bn="eval", log=print):
    """G (built from `state`, on its device) made ready for sample.py.

    bn 'eval': eval mode, BatchNorm with running statistics: a checkpoint of ours has the EMA generator's
    own (recomputed when train.py wrote it); an EMA generator from the authors' files gets its own here,
    recomputed from 16 x 8 of its samples (ema.py), since theirs are the trained G's. bn 'batch': train
    mode, as their eval.py samples: each batch normalised with its own statistics (and one spectral-norm
    power iteration per forward), so an image depends on the others in its batch."""
    theirs = state.get("authors")
    if theirs is not None:
        log(f"the authors' {theirs['kind']}: {theirs['described']}, read from the tensors' shapes"
            + (", DataParallel's 'module.' dropped" if theirs["dataparallel"] else ""))
    match_their_outputs(G, state, log)
    if bn == "batch":
        return G.train()
    if theirs is not None and not raw:
        log(f"BatchNorm statistics of the EMA generator recomputed from {STATISTICS_BATCH * STATISTICS_BATCHES} "
            f"of its samples (the file holds the trained G's; --bn batch: their train-mode sampling)")
        recompute_batchnorm_statistics(G, STATISTICS_BATCH, STATISTICS_BATCHES, seed=0)
    return G.eval()


# ------------------------------------------------------------------------------------------------
# train.py --init_from
# ------------------------------------------------------------------------------------------------

def defer_architecture(parser, argv, args):
    """With --init_from, the size and widths (ARCH_FLAGS) not given on the command line become None:
    `init_from` takes them from the file, and refuses a given one that the file contradicts."""
    if getattr(args, "init_from", None) is not None:
        given = given_flags(parser, argv, ARCH_FLAGS)
        for k in ARCH_FLAGS:
            if k not in given:
                setattr(args, k, None)
    return args


def init_from(args, log=print):
    """train.py --init_from PATH (ours or the authors'): the weights a fine-tuning run starts from,
    {'G', 'D', 'G_ema'} state_dicts (None without --init_from). The file's size and widths go into args
    (a conflicting --im_size, --ngf, --ndf or --nz is refused); args.init_from becomes the file's absolute
    path and args.init_source says what it held, so args.json records where the weights came from.
    Adam and the iteration count start afresh: that is train.py's fresh run. G starts from the trained
    G where the file has one, else (their {iter}.pth) from the EMA weights, like the EMA generator.
    With --resume as well, train.py continues the run from its checkpoint (checkpoint.resume_state
    checks that it started from this file): only the size and widths are taken from here."""
    if getattr(args, "init_from", None) is None:
        return None
    path = Path(args.init_from)
    state = read_weights(path)
    a = state["args"]
    for k in ARCH_FLAGS:
        if getattr(args, k) is None:
            setattr(args, k, a[k])
        elif getattr(args, k) != a[k]:
            raise UsageError(f"--{k} {getattr(args, k)}: --init_from {path} holds networks with --{k} {a[k]}; "
                             f"leave out --{k} (a fine-tuning run takes its size and widths from the file)")
    for k in ("no_sle", "no_recon"):
        if bool(a.get(k)) != bool(getattr(args, k)):
            raise UsageError(f"--init_from {path} holds networks trained {'with' if a.get(k) else 'without'} "
                             f"--{k}; {'add' if a.get(k) else 'leave out'} --{k} to fine-tune them")
    if a.get("class_names") or getattr(args, "classes", False):
        raise UsageError(f"--init_from {path}: fine-tuning is for unconditional networks (without --classes)")
    theirs = state.get("authors")
    args.init_from = str(path.resolve())
    args.init_source = (f"the authors' {theirs['kind']}, {theirs['described']}" if theirs is not None else
                        f"this project's checkpoint at iteration {state['iteration']}, {a['im_size']}x{a['im_size']}, "
                        f"ngf {a['ngf']}, ndf {a['ndf']}, nz {a['nz']}")
    log(f"init_from: {args.init_from}: {args.init_source}; " + ("its size and widths; the weights, Adam and the "
        "count come from --resume's checkpoint" if args.resume else "Adam and the iteration count start afresh"))
    return {"G": state["G"] if state["G"] is not None else state["G_ema"], "D": state["D"], "G_ema": state["G_ema"]}
