"""Several GPUs or machines with torchrun: one process per GPU, gradients averaged, rank 0 writes.

A reader of the paper may skip this file: with one process (`python train.py ...`) none of it
does anything. Under `torchrun --nproc_per_node=N train.py ...` (which sets RANK, LOCAL_RANK and
WORLD_SIZE) each process trains on its own slice of the images with batch/N of the global batch;
DistributedDataParallel (DDP) averages the gradients during backward, so the networks stay identical
on every process; only rank 0 keeps the EMA generator, logs, draws grids and saves checkpoints; and
the processes agree after every iteration on whether to stop (Ctrl-C, a cluster's SIGTERM, a NaN),
so that they all stop after the same one.
It imports nothing of ours but `cli`.
"""

import os

import torch

from plumbing.cli import UsageError, resolve_device


def setup_distributed(device_name, batch_size):
    """(rank, world, device). Under torchrun, join the process group: NCCL between GPUs, gloo between
    CPU processes (and for the GPU processes' few CPU tensors, see `agree`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world == 1:
        return 0, 1, device
    if device.type == "mps":
        raise UsageError("torchrun with --device mps: a Mac has one MPS device; run python train.py instead")
    if batch_size % world:
        raise UsageError(f"--batch_size {batch_size} is the batch of all {world} processes together "
                         f"and must be divisible by {world}")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def wrap_distributed(G, D, device, compile=False):
    """DDP around G and D, then torch.compile around each DDP module with --compile (PyTorch's advice
    for DDP; speed.speed_up leaves compiling to this function under torchrun). FastGAN's BatchNorm would otherwise see only batch/world images per GPU, so
    on CUDA it becomes SyncBatchNorm (statistics over the global batch). PyTorch's SyncBatchNorm runs on
    GPUs only: CPU processes keep per-process BatchNorm.

    D's decoders run on real images only. The training step back-propagates D's real pass locally
    (`no_sync`, see speed.StepContext.local) and its fake pass with synchronisation, and that last
    backward averages everything D has accumulated, the decoders' gradients included, although the
    decoders are not in its graph: DDP must only be told that a pass may leave parameters unused
    (find_unused_parameters). Without decoders (--no_recon) every parameter is used, and the costly
    search for unused ones is skipped."""
    if device.type == "cuda":
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D)
    ids = [device.index] if device.type == "cuda" else None
    DDP = torch.nn.parallel.DistributedDataParallel
    has_decoders = unwrap(D).decoder_big is not None
    G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids, find_unused_parameters=has_decoders)
    return (torch.compile(G), torch.compile(D)) if compile else (G, D)


def unwrap(net):
    """The plain nn.Module under torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        if hasattr(net, "_orig_mod"):
            net = net._orig_mod
        elif isinstance(net, torch.nn.parallel.DistributedDataParallel):
            net = net.module
        else:
            return net


def agree(flag, world):
    """True on every process if `flag` is true on any. A CPU tensor (gloo, also between GPU processes),
    so the GPUs never wait for it. With one process: `flag` itself."""
    if world == 1:
        return bool(flag)
    t = torch.tensor(float(bool(flag)))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t)


def first_of_all(value, world):
    """The largest of a 0-d tensor over all processes (e.g. the iteration of a first NaN, -1 for none)."""
    if world > 1:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return value


def shutdown(world, clean):
    """Leave the process group. After a clean finish (all processes got here from the same iteration:
    the end, an agreed stop, an agreed NaN) they first wait for each other: a process that tore down
    gloo while another still talked to it could abort the other at exit ('terminate called without
    an active exception'). After an error on one process the others may never come, so there is no
    barrier then; torchrun ends them.

    The barrier is torch.distributed.barrier (over gloo, on the CPU), not `agree`: its work holds no
    tensor that Python has let go of. With torch 2.4, gloo's worker thread may still be releasing
    such a tensor (which needs Python's lock) when the networks' DDP, freed on the way out of
    train.py, destroys the process group while holding that lock and waiting for the thread: both
    processes would hang at exit."""
    if world == 1 or not torch.distributed.is_initialized():
        return
    if clean:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
