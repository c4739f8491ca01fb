"""The plumbing of a serious trainer: a first reading may skip it. One small piece of the method lives
here beside the machinery that applies it, and says so: images.py's random flip of the training
images (the authors' data augmentation).

    cli.py          one-line refusals (UsageError), the shared argument parser, the device choice
    images.py       loading a folder of images, the random flip, writing grids
    datasets.py     the paper's few-shot sets fetched by name into a missing --path folder
    distances.py    --recon: the distance inside Eq. 2 (losses.py's pixel distance, or the authors' LPIPS)
    checkpoint.py   atomic checkpoint writes and exact resume
    pretrained.py   the authors' released files read into our networks; train.py --init_from
    disk.py         files written whole, --keep, the disk a run takes, a failed write as one line
    distributed.py  several GPUs with torchrun
    speed.py        options that change speed, not what is learned
    monitor.py      progress lines, grids, Ctrl-C, a loss that turns NaN
    watch.py        the CPU hint of the first minute, the timelapse GIF, TensorBoard

The method itself is at the top level: sle.py, generator.py, discriminator.py, losses.py, diffaug.py,
ema.py, and train.py's loop.
"""
