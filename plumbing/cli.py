"""Command-line plumbing shared by the scripts: refused input as one line, and the device to run on.

A reader of the paper may skip this file. It holds no part of the method: only what makes the
scripts (`train.py`, `sample.py`, `metrics.py`, `bench.py`, `ablation.py`) refuse bad input the same
way, as one line `SCRIPT: error: ...` on stderr and exit status 2, with no traceback.
This module imports nothing of ours, so every other module may raise `UsageError`.
"""

import argparse

import torch


class UsageError(Exception):
    """Input we refuse. The scripts print its message as one line on stderr and exit 2, no traceback.
    The message names the file or flag at fault and says what to do instead."""


class DefaultOnceFormatter(argparse.HelpFormatter):
    """--help shows each flag's default once: appended as "(default: X)" unless the help text already
    says its default, and not at all for a switch (off unless given) or a default of None (which the
    help text explains)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or action.option_strings == [] or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (the usage is in --help), exit code 2,
    and each default is shown once in --help (DefaultOnceFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultOnceFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def given_flags(parser, argv, dests):
    """Which of the arguments `dests` the command line `argv` sets itself rather than leaving at their
    defaults, as argparse reads it (abbreviations and --flag=value included): parsing into a namespace
    that already holds a marker in each, argparse sets only what argv gives."""
    unset = object()
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**{d: unset for d in dests}))
    return {d for d in dests if getattr(ns, d) is not unset}


# The devices --device accepts, and the order in which `auto` tries them: an NVIDIA GPU, then the
# GPU of an Apple-silicon Mac (PyTorch's MPS backend), then the CPU, which is always there.
DEVICE_ORDER = ("cuda", "mps", "cpu")
DEVICE_NAMES = {"cuda": "no CUDA device (NVIDIA GPU) is available",
                "mps": "PyTorch's MPS backend (the GPU of an Apple-silicon Mac) is not available"}


def add_device_argument(parser, where=""):
    """The one --device flag of every script: auto, cuda, mps or cpu (see `resolve_device`)."""
    parser.add_argument("--device", choices=("auto", *DEVICE_ORDER), default="auto",
                        help=f"{where}auto: CUDA if present, else Apple's MPS, else the CPU")


def device_available(name):
    """Whether PyTorch can run on device type `name` here."""
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    return name == "cpu"


def resolve_device(name):
    """'auto' -> the first available of CUDA, MPS, CPU; a device asked for by name that is not
    available here is refused (UsageError), never silently replaced by another."""
    if name == "auto":
        return torch.device(next(d for d in DEVICE_ORDER if device_available(d)))
    if not device_available(name):
        raise UsageError(f"--device {name}: {DEVICE_NAMES[name]} here (use --device cpu or auto)")
    return torch.device(name)
