"""Tests of datasets.py: fetching the paper's few-shot sets by name, safely and all at once.

    python -m pytest -q tests/test_datasets.py

Nothing here touches the network beyond 127.0.0.1: each test builds its own small zips (a few PNGs
made with Pillow) and serves them from a local HTTP server, to which FASTGAN_DATASETS_URL points.
The last three tests run the scripts end to end (train.py, metrics.py) in a subprocess.
"""

import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from plumbing import datasets
from plumbing.cli import UsageError
from plumbing.datasets import KNOWN_DATASETS, ensure_dataset
from tests.helpers import PROJECT, png_bytes

NAMES = ["img0.png", "img1.png", "img2.png", "img3.png"]


# ------------------------------------------------------------------------------------------------
# Fixtures: images, zips, a local server
# ------------------------------------------------------------------------------------------------

def picture(i, size=64, noise=False):
    """uint8 (size, size, 3): a flat colour per index, or seeded noise (which PNG cannot compress)."""
    if noise:
        return np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return np.full((size, size, 3), (40 * i, 255 - 40 * i, 90), np.uint8)


IMAGES = {name: png_bytes(picture(i)) for i, name in enumerate(NAMES)}


def make_zip(members, compression=zipfile.ZIP_DEFLATED):
    """A zip as bytes. `members`: (name or ZipInfo, bytes) pairs, written as given (no sanitising)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def dataset_zip(top="100-shot-panda", images=IMAGES):
    """The layout of the published zips as we handle it: one top-level folder holding the images."""
    return make_zip([(f"{top}/{name}" if top else name, data) for name, data in images.items()])


class Server:
    """A local HTTP server. `routes[path] = (status, headers, body)`; any other path is a 404.
    `requests` lists the paths asked for, in order."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        self.delay = None            # a threading.Event the handler waits on before answering, if set
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                state.requests.append(self.path)
                if state.delay is not None:
                    state.delay.wait(5)
                if self.path not in state.routes:
                    self.send_error(404, "Not Found")
                    return
                status, headers, body = state.routes[self.path]
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)   # HTTP/1.0: the connection closes after this

            def log_message(self, *args):
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass                     # a client that gave up (the timeout test) is expected

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, full_name, body, status=200, headers=None):
        self.routes[f"/{full_name}.zip"] = (status, headers or {"Content-Type": "application/zip"}, body)


@pytest.fixture
def server(monkeypatch):
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("FASTGAN_DATASETS_URL", s.url)
    yield s
    if s.delay is not None:
        s.delay.set()
    s.httpd.shutdown()
    s.httpd.server_close()
    thread.join(5)


def by_hand(target):
    return f"download it by hand and unzip it so that the images are in {target}{os.sep}"


def assert_clean(parent, expected=()):
    """The folder holds exactly `expected`: no hidden temporary file or folder, no partial target."""
    assert sorted(os.listdir(parent)) == sorted(expected)


def fetch_error(target, **kw):
    with pytest.raises(UsageError) as e:
        ensure_dataset(target, log=lambda m: None, **kw)
    message = str(e.value)
    assert "\n" not in message and "\r" not in message
    return message


# ------------------------------------------------------------------------------------------------
# 1, 2: fetching by short name and by full name; a present folder is never fetched again
# ------------------------------------------------------------------------------------------------

def test_short_name_is_fetched_into_that_folder_once(server, tmp_path):
    body = dataset_zip()
    server.serve("100-shot-panda", body)
    target = tmp_path / "data" / "panda"               # data/ does not exist yet: it is created
    logs = []

    assert ensure_dataset(target, log=logs.append) == target
    # The zip's single top-level folder is dropped: the images are directly in data/panda/.
    assert sorted(os.listdir(target)) == NAMES
    for name, data in IMAGES.items():
        assert (target / name).read_bytes() == data
    assert server.requests == ["/100-shot-panda.zip"]
    assert_clean(tmp_path / "data", ["panda"])
    url = f"{server.url}/100-shot-panda.zip"
    assert logs == [f"{target}: no such folder; fetching 100-shot-panda (100 images, {len(body)} bytes) from {url}",
                    f"{target}: 4 files of 100-shot-panda ready ({len(body)} bytes)"]

    # Second call: the folder is there, nothing is requested, nothing is said.
    logs.clear()
    assert ensure_dataset(str(target), log=logs.append) == target
    assert server.requests == ["/100-shot-panda.zip"]
    assert logs == []


def test_under_torchrun_only_the_first_process_of_a_machine_fetches(server, tmp_path, monkeypatch):
    """torchrun's other processes on a machine (LOCAL_RANK 1, ...) request nothing: each waits until
    the folder is there, then goes on; the first process (LOCAL_RANK 0) fetches it. A name that cannot
    be fetched is refused at once in every process."""
    server.serve("100-shot-panda", dataset_zip())
    target = tmp_path / "data" / "panda"
    monkeypatch.setattr(datasets, "WAIT_S", 0.05)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UsageError, match="no such folder"):
        ensure_dataset(tmp_path / "not-a-dataset", log=lambda m: None)
    found, logs, waiting, sleep = [], [], threading.Event(), time.sleep
    monkeypatch.setattr(datasets.time, "sleep", lambda s: (waiting.set(), sleep(s)))   # the wait's first look
    other = threading.Thread(target=lambda: found.append(ensure_dataset(target, log=logs.append)))
    other.start()
    assert waiting.wait(timeout=60)
    assert other.is_alive() and server.requests == [] and not target.exists()    # waiting, nothing fetched
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert ensure_dataset(target, log=lambda m: None) == target                   # the first process fetches
    other.join(timeout=10)
    assert not other.is_alive() and found == [target] and logs == []
    assert server.requests == ["/100-shot-panda.zip"] and sorted(os.listdir(target)) == NAMES


def test_full_name_is_fetched_too(server, tmp_path):
    server.serve("100-shot-obama", dataset_zip(top="obama-images"))
    target = tmp_path / "data" / "100-shot-obama"
    assert ensure_dataset(target, log=lambda m: None) == target
    assert sorted(os.listdir(target)) == NAMES
    assert server.requests == ["/100-shot-obama.zip"]
    assert_clean(tmp_path / "data", ["100-shot-obama"])


def test_flat_zip_and_macos_metadata(server, tmp_path):
    """A zip without a top-level folder unpacks as it is; macOS's __MACOSX/ files are left out."""
    members = [(n, d) for n, d in IMAGES.items()] + [("__MACOSX/._img0.png", b"\0\5\26\7")]
    server.serve("AnimalFace-cat", make_zip(members))
    target = tmp_path / "cat"
    ensure_dataset(target, log=lambda m: None)
    assert sorted(os.listdir(target)) == NAMES
    assert server.requests == ["/AnimalFace-cat.zip"]


def test_progress_on_stderr_without_a_terminal(server, tmp_path, capsys):
    """Not a terminal (pytest captures stderr): a few plain lines, one per quarter crossed, no \\r."""
    images = {f"n{i}.png": png_bytes(picture(i, size=128, noise=True)) for i in range(4)}   # ~200 kB: several reads
    body = dataset_zip(images=images)
    assert len(body) > 3 * datasets.CHUNK
    server.serve("100-shot-panda", body)
    ensure_dataset(tmp_path / "panda", log=lambda m: None)
    captured = capsys.readouterr()
    assert captured.out == "" and "\r" not in captured.err
    lines = captured.err.splitlines()
    assert 2 <= len(lines) <= 4
    percents = [int(line.split("] ")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    assert lines[-1] == f"100-shot-panda: [{'#' * 30}] 100% of {len(body) / 1e3:.0f} kB"


# ------------------------------------------------------------------------------------------------
# 3: unsafe zip members are refused before anything is written
# ------------------------------------------------------------------------------------------------

def symlink_member(name, points_to):
    info = zipfile.ZipInfo(name)
    info.create_system = 3                               # made on Unix: external_attr holds a mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, points_to.encode()


def fifo_member(name):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info, b""


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "fifo"])
def test_unsafe_members_are_refused(server, tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = {
        "dotdot": ("../evil.png", IMAGES["img0.png"]),
        "absolute": (str(outside / "evil.png"), IMAGES["img0.png"]),
        "symlink": symlink_member("100-shot-panda/evil.png", str(outside / "evil.png")),
        "fifo": fifo_member("100-shot-panda/evil.png"),
    }[kind]
    good = [(f"100-shot-panda/{n}", d) for n, d in IMAGES.items()]
    server.serve("100-shot-panda", make_zip(good[:2] + [evil] + good[2:]))
    data = tmp_path / "data"
    data.mkdir()
    target = data / "panda"

    message = fetch_error(target)
    name = evil[0] if isinstance(evil[0], str) else evil[0].filename
    why = {"dotdot": "has '..' in its path", "absolute": "has an absolute path",
           "symlink": "is a symbolic link", "fifo": "is not a regular file or folder"}[kind]
    assert message == (f"{server.url}/100-shot-panda.zip: refused to unpack the zip: its member {name!r} "
                       f"{why} (nothing was written to {target})")
    assert_clean(data)                                   # no target, no temporary zip or folder
    assert os.listdir(outside) == []
    assert not list(tmp_path.rglob("evil.png"))           # nothing anywhere, inside or out


# ------------------------------------------------------------------------------------------------
# 4, 5: broken downloads and unreachable servers: one line, nothing left behind
# ------------------------------------------------------------------------------------------------

def test_truncated_download_short_of_its_content_length(server, tmp_path):
    body = dataset_zip()
    server.serve("100-shot-panda", body, headers={"Content-Length": str(len(body) + 1000)})
    target = tmp_path / "data" / "panda"
    url = f"{server.url}/100-shot-panda.zip"
    assert fetch_error(target) == (f"could not fetch panda from {url} (the download stopped after "
                                   f"{len(body)} of {len(body) + 1000} bytes); {by_hand(target)}")
    assert_clean(tmp_path)                               # even the data/ folder we made is gone


def test_half_a_zip_is_not_a_zip(server, tmp_path):
    body = dataset_zip()
    server.serve("100-shot-panda", body[:len(body) // 2])
    target = tmp_path / "data" / "panda"
    url = f"{server.url}/100-shot-panda.zip"
    assert fetch_error(target) == (f"could not fetch panda from {url} (the server sent something that is "
                                   f"not a zip file); {by_hand(target)}")
    assert_clean(tmp_path)


def test_html_page_is_not_a_zip(server, tmp_path):
    server.serve("100-shot-panda", b"<html><body>Moved.\n</body></html>\n",
                 headers={"Content-Type": "text/html"})
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "panda"
    url = f"{server.url}/100-shot-panda.zip"
    assert fetch_error(target) == (f"could not fetch panda from {url} (the server sent something that is "
                                   f"not a zip file); {by_hand(target)}")
    assert_clean(tmp_path / "data")                      # a folder that was there stays, empty


def test_damaged_member_fails_its_checksum(server, tmp_path):
    body = bytearray(make_zip([(f"p/{n}", d) for n, d in IMAGES.items()], zipfile.ZIP_STORED))
    at = body.find(IMAGES["img2.png"]) + 40               # inside img2.png's stored bytes
    body[at] ^= 0xFF
    server.serve("100-shot-panda", bytes(body))
    target = tmp_path / "panda"
    url = f"{server.url}/100-shot-panda.zip"
    assert fetch_error(target) == (f"could not fetch panda from {url} (the zip is damaged: member "
                                   f"'p/img2.png' fails its checksum); {by_hand(target)}")
    assert_clean(tmp_path)


def test_http_404(server, tmp_path):
    target = tmp_path / "data" / "grumpy_cat"
    url = f"{server.url}/100-shot-grumpy_cat.zip"
    assert fetch_error(target) == (f"could not fetch grumpy_cat from {url} (HTTP Error 404: Not Found); "
                                   f"{by_hand(target)}")
    assert server.requests == ["/100-shot-grumpy_cat.zip"]
    assert_clean(tmp_path)


def test_connection_refused(monkeypatch, tmp_path):
    with socket.socket() as s:                           # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FASTGAN_DATASETS_URL", f"http://127.0.0.1:{port}/")   # a trailing / is fine
    target = tmp_path / "data" / "panda"
    url = f"http://127.0.0.1:{port}/100-shot-panda.zip"
    assert fetch_error(target) == f"could not fetch panda from {url} (Connection refused); {by_hand(target)}"
    assert_clean(tmp_path)


def test_silent_server_times_out(server, tmp_path, monkeypatch):
    server.delay = threading.Event()                     # the server never answers (until teardown)
    server.serve("100-shot-panda", dataset_zip())
    monkeypatch.setattr(datasets, "TIMEOUT_S", 0.2)
    target = tmp_path / "panda"
    url = f"{server.url}/100-shot-panda.zip"
    assert fetch_error(target) == f"could not fetch panda from {url} (no answer within 0.2 s); {by_hand(target)}"
    assert_clean(tmp_path)


def test_ctrl_c_mid_download_leaves_nothing(server, tmp_path, monkeypatch):
    """KeyboardInterrupt while the zip is being written: the partial .zip.part file is removed."""
    noisy = {f"n{i}.png": png_bytes(picture(i, 128, True)) for i in range(4)}
    server.serve("100-shot-panda", dataset_zip(images=noisy))
    data = tmp_path / "data"
    data.mkdir()
    seen = []

    class CtrlC:                                          # stderr, where the progress line is written
        def isatty(self):
            return False

        def write(self, text):
            seen.append(sorted(os.listdir(data)))         # what is on disk at that moment
            raise KeyboardInterrupt

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", CtrlC())
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(data / "panda", log=lambda m: None)
    assert seen and seen[0][0].startswith(".panda.") and seen[0][0].endswith(".zip.part")
    assert_clean(data)


# ------------------------------------------------------------------------------------------------
# 6: names that are not fetched, and folders that are already there
# ------------------------------------------------------------------------------------------------

def test_unknown_missing_folder_lists_the_fetchable_names(server, tmp_path):
    target = tmp_path / "data" / "flowers"
    assert fetch_error(target) == (f"{target}: no such folder (give --path a folder of images, or one of the "
                                   "names that can be fetched: panda, obama, grumpy_cat, cat, dog, "
                                   "bridge_of_sighs, medici_fountain, temple_of_heaven, wuzhen)")
    assert server.requests == []
    assert_clean(tmp_path)


def test_a_file_is_not_a_folder(server, tmp_path):
    target = tmp_path / "panda"
    target.write_bytes(b"not a folder")
    assert fetch_error(target) == f"{target}: is a file, not a folder (give --path a folder of images)"
    assert server.requests == []
    assert target.read_bytes() == b"not a folder"


def test_existing_folder_is_returned_untouched(server, tmp_path):
    server.serve("100-shot-panda", dataset_zip())
    target = tmp_path / "panda"                          # a known name, but already there
    target.mkdir()
    (target / "mine.png").write_bytes(IMAGES["img1.png"])
    os.utime(target / "mine.png", (1_000_000_000, 1_000_000_000))
    os.utime(target, (1_000_000_000, 1_000_000_000))
    logs = []
    assert ensure_dataset(target, log=logs.append) == target
    assert os.listdir(target) == ["mine.png"]
    assert (target / "mine.png").read_bytes() == IMAGES["img1.png"]
    assert target.stat().st_mtime == 1_000_000_000 and (target / "mine.png").stat().st_mtime == 1_000_000_000
    assert server.requests == [] and logs == []


def test_table_of_facts():
    assert KNOWN_DATASETS == {
        "panda": "100-shot-panda", "obama": "100-shot-obama", "grumpy_cat": "100-shot-grumpy_cat",
        "cat": "AnimalFace-cat", "dog": "AnimalFace-dog", "bridge_of_sighs": "100-shot-bridge_of_sighs",
        "medici_fountain": "100-shot-medici_fountain", "temple_of_heaven": "100-shot-temple_of_heaven",
        "wuzhen": "100-shot-wuzhen"}
    assert {d.short: d.images for d in datasets.DATASETS} == {  # FastGAN Table 2, DiffAugment's README
        "panda": 100, "obama": 100, "grumpy_cat": 100, "cat": 160, "dog": 389, "bridge_of_sighs": 100,
        "medici_fountain": 100, "temple_of_heaven": 100, "wuzhen": 100}


def test_default_url(monkeypatch):
    monkeypatch.delenv("FASTGAN_DATASETS_URL", raising=False)
    assert datasets.dataset_url("100-shot-panda") == "https://data-efficient-gans.mit.edu/datasets/100-shot-panda.zip"


# ------------------------------------------------------------------------------------------------
# 7: through the scripts (these need train.py / metrics.py to call datasets.ensure_dataset)
# ------------------------------------------------------------------------------------------------

def run_script(args, server):
    env = {**os.environ, "FASTGAN_DATASETS_URL": server.url, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_fetched_named_set_trains_at_the_papers_size(server, tmp_path, capsys):
    """train.py --path data/panda without --im_size: the set is fetched from the (loopback) server and
    the run is at 256x256, the paper's size for it, whatever its images' size (here 64x64); the line
    says so."""
    import train
    server.serve("100-shot-panda", dataset_zip())
    data = tmp_path / "data" / "panda"
    args = train.parse_args(["--path", str(data)])
    line = train.check_args(args)
    assert sorted(os.listdir(data)) == NAMES and server.requests == ["/100-shot-panda.zip"]
    assert args.im_size == 256 and line == f"image size 256: the paper's size for {data} (--im_size to choose another)"


@pytest.mark.slow
def test_script_train_fetches_panda_and_trains(server, tmp_path):
    server.serve("100-shot-panda", dataset_zip())
    data = tmp_path / "data" / "panda"
    r = run_script(["train.py", "--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "2",
                    "--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "2", "--device", "cpu",
                    "--log_every", "1", "--save_every", "2", "--sample_every", "2"], server)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(data)) == NAMES
    assert server.requests == ["/100-shot-panda.zip"]
    assert (tmp_path / "runs" / "panda" / "checkpoints" / "latest.pt").is_file()


@pytest.mark.slow
def test_script_train_404_is_one_line_and_exit_2(server, tmp_path):
    data = tmp_path / "data" / "panda"
    r = run_script(["train.py", "--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "2",
                    "--im_size", "128", "--device", "cpu"], server)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ")
    assert lines[0] == (f"train.py: error: could not fetch panda from {server.url}/100-shot-panda.zip "
                        f"(HTTP Error 404: Not Found); {by_hand(data)}")
    assert server.requests == ["/100-shot-panda.zip"]
    assert_clean(tmp_path)                               # no data/, no runs/


@pytest.mark.slow
def test_script_metrics_fetches_dog(server, tmp_path):
    server.serve("AnimalFace-dog", dataset_zip(top="AnimalFace-dog"))
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(4):
        (samples / f"s{i}.png").write_bytes(png_bytes(picture(10 + i)))
    data = tmp_path / "data" / "dog"
    r = run_script(["metrics.py", str(samples), str(data), "--size", "64", "--no_fid"], server)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(data)) == NAMES
    lines = r.stdout.splitlines()                        # stdout holds the JSON line and nothing else
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert scores["n_fake"] == 4 and scores["n_real"] == 4 and scores["size"] == 64
