"""The plumbing of a serious trainer: none of it is in the paper, and a first reading may skip it.

    cli.py          one-line refusals (UsageError), the shared argument parser, the device choice
    images.py       loading a folder of images, the random flip, writing grids
    datasets.py     the paper's few-shot sets fetched by name into a missing --path folder
    checkpoint.py   atomic checkpoint writes and exact resume
    disk.py         files written whole, --keep, the disk a run takes, a failed write as one line
    distributed.py  several GPUs with torchrun
    speed.py        options that change speed, not what is learned
    monitor.py      progress lines, grids, Ctrl-C, a loss that turns NaN

The method itself is at the top level: sle.py, generator.py, discriminator.py, diffaug.py, ema.py,
and train.py's loop.
"""
