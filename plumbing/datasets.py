"""Fetch the paper's few-shot datasets by name: `python train.py --path data/panda` on a fresh machine.

A reader of the paper may skip this file. It holds no part of the method: only the machinery that,
when `--path` names a missing folder such as `data/panda`, downloads the matching 100-image set that
the DiffAugment authors (Zhao et al. 2020) publish as a plain zip file, and unpacks it into that
folder, safely and all at once. Standard library only; of ours it imports just `cli.UsageError`.

    ensure_dataset("data/panda")   # -> Path("data/panda"), fetched on first use, untouched afterwards
"""

import http.client
import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

from plumbing.cli import UsageError

DEFAULT_BASE_URL = "https://data-efficient-gans.mit.edu/datasets"
BASE_URL_ENV = "FASTGAN_DATASETS_URL"   # another server (a mirror, or the tests' local one)
TIMEOUT_S = 30                          # per connect and per read: a dead server must not hang a run
CHUNK = 1 << 16                         # bytes read at a time (64 KiB)
WAIT_S = 0.5                            # under torchrun, how often the other processes look for the folder


class Dataset(NamedTuple):
    short: str      # what to give --path: data/panda
    full: str       # the name on the server: 100-shot-panda.zip (also accepted as --path data/100-shot-panda)
    images: int     # as published (FastGAN Table 2; DiffAugment's README)
    subject: str
    source: str     # and licence, as published


_COLLECTED = "collected by Zhao et al. (DiffAugment, 2020); no licence stated for the images"
_ANIMALFACE = ("a subset of the AnimalFace dataset (Si & Zhu) chosen by Zhao et al. (DiffAugment, 2020); "
               "no licence stated for the images")

# The facts behind the table in docs/guide.md. The image counts are the papers'; we do not check them after
# a download (a re-published zip may differ), we only count what arrived and say so.
DATASETS = (
    Dataset("panda", "100-shot-panda", 100, "photos of pandas", _COLLECTED),
    Dataset("obama", "100-shot-obama", 100, "portraits of Barack Obama", _COLLECTED),
    Dataset("grumpy_cat", "100-shot-grumpy_cat", 100, "photos of Grumpy Cat", _COLLECTED),
    Dataset("cat", "AnimalFace-cat", 160, "cat faces", _ANIMALFACE),
    Dataset("dog", "AnimalFace-dog", 389, "dog faces", _ANIMALFACE),
    Dataset("bridge_of_sighs", "100-shot-bridge_of_sighs", 100, "the Bridge of Sighs, Venice", _COLLECTED),
    Dataset("medici_fountain", "100-shot-medici_fountain", 100, "the Medici Fountain, Paris", _COLLECTED),
    Dataset("temple_of_heaven", "100-shot-temple_of_heaven", 100, "the Temple of Heaven, Beijing", _COLLECTED),
    Dataset("wuzhen", "100-shot-wuzhen", 100, "Wuzhen, a water town in China", _COLLECTED),
)
KNOWN_DATASETS = {d.short: d.full for d in DATASETS}        # short name -> full name
_BY_NAME = {**{d.short: d for d in DATASETS}, **{d.full: d for d in DATASETS}}

# The size the paper trains these sets at: FastGAN §4 trains the 100-shot sets and AnimalFace at
# 256x256 (Table 2), and DiffAugment publishes all nine at 256x256.
PAPER_SIZE = 256


def named_dataset(path):
    """The known set `path` is named after (its last component: `panda` or `100-shot-panda`), or None."""
    return _BY_NAME.get(Path(path).name)


def dataset_url(full_name):
    """Where a set is downloaded from: $FASTGAN_DATASETS_URL (default DiffAugment's server)/NAME.zip."""
    base = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{full_name}.zip"


def ensure_dataset(path, log=print):
    """`path` as a folder of images, fetched first when it is missing and named after a known set.

    - an existing folder is returned as it is: never modified, never downloaded again;
    - a missing folder whose last component is a known name (`panda`, ..., or `100-shot-panda`, ...)
      is downloaded and unpacked into exactly that folder (its parent is created if needed);
    - anything else (another missing folder, a file) is a UsageError, one line saying what to do;
    - under torchrun only the first process of each machine (LOCAL_RANK 0) downloads: the others wait
      until the folder is there.
    `log` receives the one-line messages (what is fetched, from where, how big; what arrived); the
    progress bar goes to stderr."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{path}: is a file, not a folder (give --path a folder of images)")
    if path.is_symlink():   # a link to nothing: renaming a folder onto it would fail, say so instead
        raise UsageError(f"{path}: is a broken symbolic link (remove it, or point it at a folder of images)")
    dataset = _BY_NAME.get(path.name)
    if dataset is None:
        raise UsageError(f"{path}: no such folder (give --path a folder of images, or one of the names "
                         f"that can be fetched: {', '.join(KNOWN_DATASETS)})")
    if os.environ.get("LOCAL_RANK", "0") != "0":
        # torchrun: the first process of this machine fetches, the others wait for the folder, which
        # appears whole (one rename). If that process fails, it says why and torchrun stops the others.
        while not path.is_dir():
            time.sleep(WAIT_S)
        return path
    _fetch(dataset, path.name, path, log)
    return path


# ------------------------------------------------------------------------------------------------
# Download, check, unpack, rename: the folder appears complete or not at all
# ------------------------------------------------------------------------------------------------

def _fetch(dataset, label, target, log):
    url = dataset_url(dataset.full)
    # Every failure below is one line: the URL, what went wrong, and how to do it by hand.
    by_hand = f"download it by hand and unzip it so that the images are in {os.path.join(target, '')}"

    def failed(why):
        return UsageError(f"could not fetch {label} from {url} ({_one_line(why)}); {by_hand}")

    parent = target.parent
    created = _make_parents(parent)   # the folders we made, removed again if the fetch fails
    # Both temporary names are hidden (a leading dot), beside the target (same file system, so the
    # final rename is atomic) and carry our pid (two processes, say torchrun's ranks, never share one).
    stem = f".{target.name}.{os.getpid()}."
    tmp_zip = tmp_dir = None
    ok = False
    try:
        fd, tmp_zip = tempfile.mkstemp(prefix=stem, suffix=".zip.part", dir=parent)
        tmp_zip = Path(tmp_zip)
        with os.fdopen(fd, "wb") as out:
            size = _download(url, out, dataset, target, log, failed)
        tmp_dir = Path(tempfile.mkdtemp(prefix=stem, suffix=".unzip", dir=parent))
        n_files = _unpack(tmp_zip, tmp_dir, url, target, failed)
        source = _content_root(tmp_dir)
        try:
            # The one step that makes the folder appear, whole. A rename never copies, so no reader
            # can see half a dataset at `target`, and an interruption before it leaves nothing there.
            os.rename(source, target)
        except OSError as e:
            if not target.is_dir():
                raise failed(f"cannot move the unpacked files to {target}: {e.strerror or e}") from None
            # Another process (another rank of the same run) got there first: its copy is complete too.
            log(f"{target}: fetched meanwhile by another process; using that copy")
        else:
            log(f"{target}: {n_files} files of {dataset.full} ready ({_mb(size)})")
        ok = True
    except OSError as e:    # the disk is full, a folder is not writable, ...
        raise failed(f"{type(e).__name__}: {e.strerror or e}") from None
    finally:
        # try/finally also runs on Ctrl-C (KeyboardInterrupt): whatever went wrong, no partial file
        # or folder stays behind, and the next run starts clean.
        if tmp_zip is not None:
            tmp_zip.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not ok:
            for folder in reversed(created):    # deepest first; only if still empty
                try:
                    folder.rmdir()
                except OSError:
                    pass


def _make_parents(parent):
    """mkdir -p `parent`; returns the folders it created, outermost first."""
    missing = []
    p = parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{parent}: cannot create the folder ({e.strerror or e})") from None
    return missing[::-1]


def _download(url, out, dataset, target, log, failed):
    """Stream `url` into the open file `out`; returns the number of bytes. Refuses an HTTP error, an
    unreachable server, a stalled one (TIMEOUT_S), and a body shorter than its Content-Length."""
    request = urllib.request.Request(url, headers={"User-Agent": "fastgan-minimal/1.0 (datasets.py)"})
    try:
        # The timeout bounds the connect and every read: without it a dead server hangs the run forever.
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            total = _content_length(response)
            log(f"{target}: no such folder; fetching {dataset.full} ({dataset.images} images"
                f"{f', {_mb(total)}' if total else ''}) from {url}")
            progress = _Progress(dataset.full, total)
            done = 0
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    progress.update(done)
            finally:
                progress.close(done)
    except urllib.error.HTTPError as e:         # 404, 403, 500, ...: the server answered, with an error
        raise failed(f"HTTP Error {e.code}: {e.reason}") from None
    except urllib.error.URLError as e:          # no network, no such host, connection refused, TLS
        raise failed(_why(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:   # stalled or cut off after the connection was made
        raise failed(_why(e)) from None
    # http.client quietly returns fewer bytes when the connection closes early: count them ourselves.
    if total is not None and done != total:
        raise failed(f"the download stopped after {done} of {total} bytes")
    return done


def _content_length(response):
    try:
        n = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return n if n >= 0 else None


def _unpack(zip_path, dest, url, target, failed):
    """Check the whole archive, then extract it into the (empty, temporary) folder `dest`. Returns
    the number of files. Nothing is extracted unless every member passes every check."""
    # An HTML error page served with status 200, a captive portal, half a file: not a zip at all.
    if not zipfile.is_zipfile(zip_path):
        raise failed("the server sent something that is not a zip file")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            # testzip() decompresses every member and checks its CRC: a truncated or corrupted
            # archive is refused here, before a single image reaches the disk.
            bad = zf.testzip()
            if bad is not None:
                raise failed(f"the zip is damaged: member {bad!r} fails its checksum")
            members = [m for m in zf.infolist() if not _is_mac_metadata(m.filename)]
            root = dest.resolve()
            for info in members:
                problem = _unsafe(info, root, target)
                if problem:
                    raise UsageError(f"{url}: refused to unpack the zip: its member {info.filename!r} "
                                     f"{problem} (nothing was written to {target})")
            n_files = sum(not m.is_dir() for m in members)
            if n_files == 0:
                raise failed("the zip holds no files")
            # A zip bomb (or a full disk) should fail before we fill the disk, not half-way through.
            needed, free = sum(m.file_size for m in members), shutil.disk_usage(dest).free
            if needed > free:
                raise failed(f"the zip unpacks to {_mb(needed)} but only {_mb(free)} are free there")
            for info in members:
                zf.extract(info, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        # BadZipFile: a broken directory or header; zlib.error/EOFError: a truncated member;
        # NotImplementedError: an unknown compression; RuntimeError: an encrypted member.
        raise failed(f"the zip is damaged or unreadable: {type(e).__name__}: {e}") from None
    return n_files


def _unsafe(info, root, target):
    """Why this zip member must not be extracted into `root`, or None when it is safe. A zip is data
    from the network: its member names are chosen by whoever made (or tampered with) the file."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    # "/etc/cron.d/x" or "C:\\x": an absolute name would be written wherever it points.
    if name.startswith(("/", "\\")) or (name[:1].isalpha() and name[1:2] == ":"):
        return "has an absolute path"
    # "../../.bashrc" climbs out of the folder it is unpacked into ("zip slip").
    if ".." in parts:
        return "has '..' in its path"
    # The upper 16 bits of external_attr hold the Unix file mode of the member, when the zip was made
    # on Unix. A symbolic link there could point anywhere (a later write through it would land outside
    # the folder); devices, pipes and sockets have no business in a folder of images. Some writers
    # (Python's own writestr) record permissions only, with no file type: nothing to check then.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and stat.S_ISLNK(kind):
        return "is a symbolic link"
    if kind and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
        return "is not a regular file or folder"
    # Belt and braces: wherever the checks above missed, the resolved destination must stay inside.
    dest = (root / name).resolve()
    if dest != root and root not in dest.parents:
        return f"would land outside {target}"
    return None


def _is_mac_metadata(name):
    """macOS's zip adds __MACOSX/._IMAGE.png resource files: not images, and they would end up in
    the training set's folder (where the loader would try, and fail, to decode them)."""
    return name.replace("\\", "/").split("/")[0] == "__MACOSX"


def _content_root(folder):
    """A zip of one top-level folder (100-shot-panda/img0.png, ...) gives that folder's contents to
    the target, so that the images land at data/panda/..., not data/panda/100-shot-panda/...."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


# ------------------------------------------------------------------------------------------------
# Small helpers: the progress bar and the formatting of sizes and messages
# ------------------------------------------------------------------------------------------------

class _Progress:
    """Download progress on stderr: one line rewritten with \\r on a terminal (at most 10 times a
    second); in a log file, a plain line at every quarter (or one at the end when the size is unknown)."""

    def __init__(self, name, total):
        self.name, self.total = name, total
        self.stream = sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.next_quarter = 1
        self.last_draw = 0.0
        self.drawn = False

    def _line(self, done):
        if not self.total:
            return f"{self.name}: {_mb(done)}"
        frac = min(done / self.total, 1.0)
        bar = "#" * int(30 * frac)
        return f"{self.name}: [{bar:<30}] {100 * frac:3.0f}% of {_mb(self.total)}"

    def update(self, done):
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.1 or done == self.total:
                self.stream.write("\r" + self._line(done))
                self.stream.flush()
                self.last_draw, self.drawn = now, True
        elif self.total:
            if 4 * done >= self.next_quarter * self.total and self.next_quarter <= 4:
                while self.next_quarter <= 4 and 4 * done >= self.next_quarter * self.total:
                    self.next_quarter += 1
                self.stream.write(self._line(done) + "\n")
                self.stream.flush()

    def close(self, done):
        if self.tty and self.drawn:
            self.stream.write("\n")             # leave the bar's last state on its own line
        elif not self.tty and not self.total:
            self.stream.write(self._line(done) + "\n")
        self.stream.flush()


def _mb(n):
    """A size for people: 734 bytes, 52 kB, 27.1 MB."""
    if n < 1000:
        return f"{n} bytes"
    return f"{n / 1e3:.0f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def _why(e):
    """What went wrong, in a few words: 'Connection refused', 'no answer within 30 s', ..."""
    if isinstance(e, TimeoutError):
        return f"no answer within {TIMEOUT_S} s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, BaseException):
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return str(e)                       # URLError's reason may be a plain string


def _one_line(x):
    """Exception texts may hold newlines; a UsageError is printed as one line."""
    return " ".join(str(x).split())
