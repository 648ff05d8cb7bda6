"""Helpers for the corpus, image and label tests: real image files written with Pillow, and
:class:`Store`, a folder on the local or the ``memory://`` filesystem to write them to."""

from __future__ import annotations

import io
import posixpath
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from workflows.demo import FASHION_MNIST_DIR

FASHION_DIR = Path(FASHION_MNIST_DIR)
FASHION_TRAIN = FASHION_DIR / "train-images-idx3-ubyte.gz"
FASHION_TEST = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
FASHION_TRAIN_LABELS = FASHION_DIR / "train-labels-idx1-ubyte.gz"
FASHION_TEST_LABELS = FASHION_DIR / "t10k-labels-idx1-ubyte.gz"

requires_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} is absent: install Debian's dataset-fashion-mnist package",
)


def luma(r: int, g: int, b: int) -> int:
    """ITU-R 601-2 luma as Pillow's ``convert("L")`` computes it."""
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@dataclass(frozen=True)
class Sample:
    """An image file of uniform colour and its expected converted pixel values."""

    relpath: str
    grey: int
    rgb: tuple[int, int, int]
    exact: bool = True  # False for lossy formats (JPEG)


def _sample_images() -> list[tuple[Sample, Image.Image, str, dict]]:
    """(sample, image, Pillow format, save parameters); sizes are (width, height)."""
    sixteen = Image.fromarray(np.full((64, 48), 51400, dtype=np.uint16))
    palette = Image.new("RGB", (33, 17), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    return [
        (Sample("a_grey.png", 100, (100, 100, 100)), Image.new("L", (40, 30), 100), "PNG", {}),
        (Sample("b_rgb.png", luma(200, 100, 50), (200, 100, 50)),
         Image.new("RGB", (28, 28), (200, 100, 50)), "PNG", {}),
        (Sample("c/rgba.png", luma(128, 0, 0), (128, 0, 0)),
         Image.new("RGBA", (50, 70), (255, 0, 0, 128)), "PNG", {}),
        (Sample("c/d/palette.gif", luma(10, 200, 30), (10, 200, 30)), palette, "GIF", {}),
        (Sample("c/d/sixteen.png", 200, (200, 200, 200)), sixteen, "PNG", {}),
        (Sample("e/photo.JPG", luma(90, 160, 220), (90, 160, 220), exact=False),
         Image.new("RGB", (100, 80), (90, 160, 220)), "JPEG", {"quality": 95}),
        (Sample("e/grey.jpeg", 77, (77, 77, 77), exact=False),
         Image.new("L", (31, 47), 77), "JPEG", {"quality": 95}),
        (Sample("f/image.bmp", luma(1, 2, 3), (1, 2, 3)),
         Image.new("RGB", (29, 29), (1, 2, 3)), "BMP", {}),
        (Sample("f/image.TIFF", 250, (250, 250, 250)), Image.new("L", (10, 100), 250), "TIFF", {}),
        (Sample("f/la.png", 40, (40, 40, 40)), Image.new("LA", (20, 20), (200, 51)), "PNG", {}),
        (Sample("f/bw.tif", 255, (255, 255, 255)), Image.new("1", (9, 13), 1), "TIFF", {}),
        (Sample("g/image.webp", luma(5, 6, 7), (5, 6, 7)),
         Image.new("RGB", (16, 24), (5, 6, 7)), "WEBP", {"lossless": True}),
    ]


def write_samples(store: Store, folder: str) -> list[Sample]:
    """Write a nested folder of images of many formats, modes and sizes, plus non-images.

    Returns the samples sorted as the corpus lists them (by full path).
    """
    samples = []
    for sample, image, fmt, params in _sample_images():
        store.write(f"{folder}/{sample.relpath}", encode(image, fmt, **params))
        samples.append(sample)
    store.write(f"{folder}/notes.txt", "not an image\n")
    store.write(f"{folder}/c/array.npy", b"ignored: not an image extension")
    return sorted(samples, key=lambda s: store.url(f"{folder}/{s.relpath}"))


def png_bytes(array: np.ndarray) -> bytes:
    return encode(Image.fromarray(array), "PNG")


def write_broken_folder(store: Store, folder: str) -> dict[str, str]:
    """Five files, three unreadable; returns file name -> expected ReadError reason."""
    good = png_bytes(np.full((28, 28), 9, dtype=np.uint8))
    rng = np.random.default_rng(0)
    noisy = png_bytes(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    files = {
        "0_good.png": (good, ""),
        "1_truncated.png": (noisy[: len(noisy) // 2], "truncated image"),
        "2_text.png": (b"this is not a png\n", "cannot identify image file"),
        "3_empty.jpg": (b"", "empty file"),
        "4_good.png": (good, ""),
    }
    for name, (data, _) in files.items():
        store.write(f"{folder}/{name}", data)
    return {name: reason for name, (_, reason) in files.items()}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An uncompressed IDX file of a uint8 array (magic derived from its ndim)."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Write an uncompressed IDX file of a uint8 array (magic derived from its ndim)."""
    path.write_bytes(idx_bytes(array, magic))


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    """A ``.npy`` file of ``array``, as ``numpy.save`` writes it."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@contextmanager
def memory_root() -> Iterator[str]:
    """A fresh ``memory://`` folder, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/patchhash-test-{uuid.uuid4().hex}"
    fs.mkdir(root)
    try:
        yield f"memory://{root}"
    finally:
        fs.rm(root, recursive=True)


class Store:
    """A folder that a reader test writes its files to, on the local or another filesystem.

    Parameters
    ----------
    root : str
        URL of the folder as corpora show it: an absolute local path, or e.g.
        ``memory:///patchhash-test-<id>``.
    """

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._path = fsspec.core.url_to_fs(self.root)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def url(self, relpath: str) -> str:
        """URL of ``relpath`` in the folder, as corpora show it."""
        return f"{self.root}/{relpath}"

    def write(self, relpath: str, data: bytes | str) -> str:
        """Write ``data`` (text as UTF-8) at ``relpath``, creating its folders; returns its URL."""
        path = f"{self._path}/{relpath}"
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data.encode() if isinstance(data, str) else data)
        return self.url(relpath)

    def read(self, relpath: str) -> bytes:
        return self.fs.cat_file(f"{self._path}/{relpath}")

    def delete(self, url: str) -> None:
        """Delete the file at ``url``, a URL of this folder."""
        self.fs.rm_file(f"{self._path}/{url.removeprefix(self.root + '/')}")


@contextmanager
def moto_s3() -> Iterator[dict]:
    """A local moto S3 server; yields the fsspec storage options that reach it."""
    server_module = pytest.importorskip("moto.server", reason="moto is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {
                "endpoint_url": f"http://127.0.0.1:{port}",
                "region_name": "eu-west-1",  # us-east-1 is refused as a bucket location
            },
        }
    finally:
        server.stop()
