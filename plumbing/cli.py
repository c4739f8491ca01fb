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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (the usage is in --help), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def resolve_device(name):
    """'auto' -> CUDA when present, else the CPU; 'cuda' without a GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)
