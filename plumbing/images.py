"""Image files in and out: a folder of training images as uint8 tensors, and PNG grids of results.

A reader of the paper may skip this file but for one function: `flip_and_normalise`, the random
left-right flip of every training image, which is the authors' data augmentation (their loader's
RandomHorizontalFlip; DiffAugment, diffaug.py, comes on top). The rest is what a training tool needs
around the method: finding the images of a folder, decoding any of Pillow's formats to 8-bit RGB,
refusing a folder with nothing readable in one line that names it, keeping a few-shot set on the
training device (in memory) or decoding a large one from disk every iteration (streamed), and
writing the grids a person looks at. Used by train.py, sample.py, metrics.py, ablation.py and monitor.py.
With `--classes` (conditional.py) the subfolders of the training folder are the classes, and every
image carries the index of its class (`class_folders`, `labelled_batch`).
It imports nothing of ours but `cli.UsageError`, `disk.atomic_write` and datasets.py (the named sets' size).
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from plumbing import datasets
from plumbing.cli import UsageError
from plumbing.disk import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
STREAM_ABOVE_BYTES = 2 * 2 ** 30   # a set larger than this (as uint8) is streamed, not kept in memory


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

def find_images(folder):
    """Every file under `folder` (recursively) with an image extension, sorted for a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder (give a folder of images)")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def default_image_size(folder, sizes):
    """(size, why) for a run that gives no --im_size: a named set's size in the paper (256 for the
    DiffAugment sets, datasets.PAPER_SIZE); for any other folder the largest of `sizes` (the supported
    ones, ascending) not above the median shorter side of its images, the smallest if all are above.
    Reads only the images' headers. `why` is the line a run prints."""
    if datasets.named_dataset(folder) is not None:
        return datasets.PAPER_SIZE, f"{datasets.PAPER_SIZE}: the paper's size for {folder}"
    sides = []
    for p in find_images(folder):
        try:
            with Image.open(p) as img:
                sides.append(min(img.size))
        except Exception:    # PIL raises several types for broken files; loading names them later
            continue
    if not sides:
        return sizes[0], f"{sizes[0]}: no readable image in {folder} to read a size from"
    median = float(np.median(sides))
    size = max([s for s in sizes if s <= median], default=sizes[0])
    return size, f"{size}: the images' median shorter side is {median:g} px"


def class_folders(folder):
    """--classes: the class names of `folder`, its subfolders sorted by name (hidden ones skipped); class
    i is the i-th name. Fewer than two classes, or images lying directly in `folder`, are refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder (give a folder of images)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise UsageError(f"{folder}: --classes needs at least two class subfolders (one per class, e.g. "
                         f"{folder}/cat/*.jpg and {folder}/dog/*.jpg), found {len(names)}; without "
                         f"classes, leave out --classes")
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise UsageError(f"{folder}: {len(loose)} image(s) lie directly in the folder, outside any class "
                         f"(e.g. {loose[0].name}); with --classes move each into its class's subfolder")
    return names


def class_paths(folder, names):
    """(paths, labels): the image files of every class subfolder, class by class, and the class index
    of each (a list of ints)."""
    paths, labels = [], []
    for i, name in enumerate(names):
        found = find_images(Path(folder) / name)
        paths += found
        labels += [i] * len(found)
    return paths, labels


def check_classes_readable(folder, names, paths, labels):
    """Refuse a class with no readable image in one line naming its folder: each class is searched
    until its first image that decodes."""
    for i, name in enumerate(names):
        if not any(_decodes(p) for p, label in zip(paths, labels) if label == i):
            raise UsageError(f"{Path(folder) / name}: no readable image in this class (looked for "
                             f"{', '.join(IMAGE_EXTENSIONS)}, recursively); with --classes every subfolder "
                             f"of {folder} is a class: add images to it or remove it")


def _decodes(path):
    try:
        load_image(path, 8)
        return True
    except Exception:  # PIL raises several types for broken files
        return False


def to_rgb(img):
    """Any PIL image as 8-bit RGB: grey and palette are expanded, transparency is composited on white,
    CMYK is converted, 16- and 32-bit greys are scaled down to 8 bits instead of being clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "F" and a.max() > 255 else (1.0 if img.mode == "F" else 255.0)
        img = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode == "LA" or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def load_image(path, im_size):
    """Decode one file: ((3, im_size, im_size) uint8 array, (original width, height)). Non-square images
    are stretched to a square, as the authors' `transforms.Resize((im_size, im_size))` does, with a
    Lanczos filter (theirs: bilinear). Raises if the file does not decode."""
    with Image.open(path) as img:
        img.load()
        original_size = img.size
        img = to_rgb(img)
    if img.size != (im_size, im_size):
        img = img.resize((im_size, im_size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy(), original_size


def load_images(folder, im_size, log=print, paths=None, limit=None, kept=False):
    """Images of a folder as one uint8 tensor (N, 3, im_size, im_size), decoded once (the first `limit`
    readable ones, or all). With `kept`: (that tensor, the positions in `paths` of the images it holds).

    Files that do not decode are named, skipped and counted; images that are smaller than im_size
    or not square are resized, with one line saying how many. No image at all is a UsageError."""
    paths = find_images(folder) if paths is None else paths
    arrays, bad, resized, positions = [], [], 0, []
    for i, p in enumerate(paths):
        if limit is not None and len(arrays) == limit:
            break
        try:
            a, (w, h) = load_image(p, im_size)
        except Exception as e:  # PIL raises several types for broken files
            bad.append(p)
            log(f"warning: skipping {p}: not a readable image ({type(e).__name__})")
            continue
        resized += (w != h) or w < im_size
        arrays.append(a)
        positions.append(i)
    if not arrays:
        raise UsageError(f"{folder}: no readable images found (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                         f"recursively{f'; {len(bad)} file(s) failed to decode' if bad else ''})")
    if bad:
        log(f"warning: skipped {len(bad)} unreadable file(s) of {len(paths)}")
    if resized:
        log(f"note: {resized} of {len(arrays)} images were smaller than {im_size} or not square; "
            f"resized to {im_size}x{im_size}")
    images = torch.from_numpy(np.stack(arrays))
    return (images, positions) if kept else images


def flip_and_normalise(batch_uint8):
    """uint8 (B, C, H, W) on the device -> float in [-1, 1], each image flipped left-right with p = 0.5
    (the authors' only data augmentation besides DiffAugment). Done on the device: no host round trip."""
    x = batch_uint8.float().div_(127.5).sub_(1.0)                                    # (B, C, H, W)
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5                    # (B, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


class InMemoryData:
    """A few-shot set lives on the training device as one uint8 tensor: 100 images at 1024x1024 are
    300 MB, far cheaper than decoding JPEGs every iteration. Each batch is drawn afresh, without
    replacement within the batch (the authors' loader goes through the set epoch by epoch instead),
    by the device's own random generator (no host synchronisation).

    With classes, `labels` (N,) holds each image's class index, and `labelled_batch` returns the
    labels of the images it drew: images are drawn uniformly as without classes, so each class
    appears in proportion to its number of images."""

    def __init__(self, images_uint8, device, channels_last=False, labels=None):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.images = images_uint8.to(device).contiguous(memory_format=fmt)   # (N, 3, S, S) uint8
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)  # (N,)
        self.device = device

    def __len__(self):
        return self.images.shape[0]

    def batch(self, batch_size):
        return self.labelled_batch(batch_size)[0]                    # (B, 3, S, S) in [-1, 1]

    def labelled_batch(self, batch_size):
        """(images (B, 3, S, S) in [-1, 1], their class indices (B,), or None without classes)."""
        n = len(self)
        if n >= batch_size:
            idx = torch.randperm(n, device=self.device)[:batch_size]
        else:  # fewer images than the batch: draw with replacement
            idx = torch.randint(n, (batch_size,), device=self.device)
        return flip_and_normalise(self.images[idx]), None if self.labels is None else self.labels[idx]


class _FileDataset(torch.utils.data.Dataset):
    """Item i: (image i as uint8 (3, S, S), its class index, -1 without classes)."""

    def __init__(self, paths, im_size, labels=None):
        self.paths, self.im_size = paths, im_size
        self.labels = labels if labels is not None else [-1] * len(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return torch.from_numpy(load_image(self.paths[i], self.im_size)[0]), self.labels[i]
        except Exception:  # a file broken since the scan: show a black image rather than stop the run
            return torch.zeros(3, self.im_size, self.im_size, dtype=torch.uint8), self.labels[i]


class _IterationBatches(torch.utils.data.Sampler):
    """Batch k of the stream is a function of (seed, k) alone, so a resumed run reads the same images."""

    def __init__(self, n, batch_size, seed, start):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self):
        k = self.start
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            if self.n >= self.batch_size:
                yield torch.randperm(self.n, generator=g)[:self.batch_size].tolist()
            else:
                yield torch.randint(self.n, (self.batch_size,), generator=g).tolist()
            k += 1


class StreamingData:
    """A set too large for memory (FFHQ: 70k images) is decoded by worker processes every iteration."""

    def __init__(self, paths, im_size, batch_size, device, seed, start, workers, channels_last=False,
                 labels=None):
        self.device, self.channels_last, self.labelled = device, channels_last, labels is not None
        self.n = len(paths)
        loader = torch.utils.data.DataLoader(
            _FileDataset(paths, im_size, labels), batch_sampler=_IterationBatches(self.n, batch_size, seed, start),
            num_workers=workers, pin_memory=str(device).startswith("cuda"),
            persistent_workers=workers > 0)
        self.stream = iter(loader)

    def __len__(self):
        return self.n

    def batch(self, batch_size):
        return self.labelled_batch(batch_size)[0]                    # (B, 3, S, S) in [-1, 1]

    def labelled_batch(self, batch_size):
        """(images (B, 3, S, S) in [-1, 1], their class indices (B,), or None without classes)."""
        x, y = next(self.stream)                                     # (B, 3, S, S) uint8, (B,)
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return flip_and_normalise(x), y.to(self.device, non_blocking=True) if self.labelled else None


def training_data(folder, im_size, batch_size, device, rank=0, world=1, seed=0, start=0, stream=False,
                  workers=4, channels_last=False, keep=8, log=print, classes=None):
    """The training set of one process: (data with `.batch(batch_size)` and `.labelled_batch(batch_size)`,
    real images as uint8 on the CPU: the whole set when it is kept in memory, the first `keep` readable
    ones when it is streamed).

    Under torchrun each process trains on its own slice of the images (rank, rank + world, ...).
    A set over 2 GiB as uint8 (or any with `stream`) is streamed from disk instead of kept in memory;
    a streamed batch is a function of (seed + rank, iteration) alone, so `start` resumes it exactly.
    `classes` (--classes: the names from `class_folders`): the images of each class subfolder, each
    with its class index; the labels are sliced with the images under torchrun and travel with them."""
    paths, labels = class_paths(folder, classes) if classes else (find_images(folder), None)
    if world > 1 and len(paths) < world:
        raise UsageError(f"{folder}: fewer images than the {world} processes; each process trains on "
                         f"its own share of them")
    if classes:
        check_classes_readable(folder, classes, paths, labels)
        counts = ", ".join(f"{name} {labels.count(i)}" for i, name in enumerate(classes))
        log(f"classes: {len(classes)} ({counts} images); batches drawn uniformly over the images")
    if stream or len(paths) * 3 * im_size ** 2 > STREAM_ABOVE_BYTES:
        reals = load_images(folder, im_size, log=log, paths=paths, limit=keep)
        data = StreamingData(paths[rank::world], im_size, batch_size, device, seed + rank, start, workers,
                             channels_last, None if labels is None else labels[rank::world])
        log(f"data: {len(paths)} images at {im_size}x{im_size} from {folder} (streamed from disk)")
        return data, reals
    reals, kept = load_images(folder, im_size, log=log, paths=paths, kept=True)   # (N, 3, S, S) uint8
    log(f"data: {len(reals)} images at {im_size}x{im_size} from {folder} (in memory on {device})")
    labels = None if labels is None else [labels[i] for i in kept]                  # of the readable ones
    return InMemoryData(reals[rank::world], device, channels_last,
                        None if labels is None else labels[rank::world]), reals


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------

def to_uint8(x):
    """(B, C, H, W) floats in [-1, 1] -> uint8 (B, C, H, W) on the CPU."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def save_grid(images, path, nrow=8, pad=2, max_tile=None):
    """Save a batch (B, C, H, W) in [-1, 1] (float) or uint8 as one PNG grid of `nrow` columns, each
    image shrunk to `max_tile` pixels if larger (None: full size). Written whole or not at all; a
    failed write is disk.WriteFailed, naming the file."""
    if max_tile is not None and images.shape[-1] > max_tile:      # area: the mean of each pixel block
        images = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        images = F.interpolate(images, size=(max_tile, max_tile), mode="area")
    images = images if images.dtype == torch.uint8 else to_uint8(images)
    B, C, H, W = images.shape
    ncol = min(nrow, B)
    rows = math.ceil(B / ncol)
    grid = torch.full((C, rows * (H + pad) + pad, ncol * (W + pad) + pad), 255, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = images[i]
    with atomic_write(path) as f:
        Image.fromarray(grid.permute(1, 2, 0).numpy().squeeze()).save(f, format="PNG")
