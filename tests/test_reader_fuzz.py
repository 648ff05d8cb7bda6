"""Fuzzing the readers (issue 7): arbitrary and mutated bytes never crash them.

Every reader of user files (IDX images, gzip-compressed or not; ``.npy`` arrays; uri lists as
text and CSV; image bytes; IDX1/npy/CSV labels) given arbitrary or mutated bytes must either
read correctly or raise one of patchhash's documented errors (a ``PatchhashError``:
``CorpusError``, ``ImageReadError``...), or, for a single image of a list, report a per-row
``ReadError``. Any other exception type, or a read that takes more than a few seconds (a hang),
fails the test. Found bugs keep a regression test at the end of the file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from corpus_helpers import encode, write_idx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from storage import ImageSpec, PatchhashError, open_corpus, read_labels
from storage.corpus import ReadError, clear_source_cache
from storage.images import convert, decode_image

FUZZ = settings(
    max_examples=int(os.environ.get("PATCHHASH_FUZZ_EXAMPLES", 100)), deadline=None, database=None,
    derandomize=not os.environ.get("PATCHHASH_FUZZ_EXAMPLES"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
GREY = ImageSpec(28, 28, 1)
RGB = ImageSpec(16, 12, 3)
ROOT = Path(tempfile.mkdtemp(prefix="patchhash-fuzz-"))
_counter = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _remove_fuzz_files():
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    """Fail (instead of blocking the suite) when the body runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fresh(name: str, data: bytes | str) -> Path:
    """Write ``data`` to a new file named ``<n>-<name>`` (a fresh URL: no cached array)."""
    clear_source_cache()
    path = ROOT / f"{next(_counter)}-{uuid.uuid4().hex[:6]}-{name}"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data)
    return path


def read_all(url: str | Path, spec: ImageSpec = GREY):
    """Open and read a corpus; returns the ShardData, or None when a documented error says why not."""
    with no_hang():
        try:
            corpus = open_corpus(str(url))
            if len(corpus) > 10_000:  # a header that claims many images: only open is exercised
                return None
            data = corpus.read(spec)
        except PatchhashError:
            return None
    assert data.pixels.dtype == np.uint8 and data.pixels.shape == (len(data.ids), *spec.shape)
    assert sorted([*data.ids.tolist(), *(e.image_id for e in data.errors)]) == list(range(len(corpus)))
    assert all(isinstance(e, ReadError) and e.reason for e in data.errors)
    return data


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """``base`` with a few bytes changed, inserted or removed, or cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
    return bytes(data)


small_images = st.builds(
    lambda n, h, w, seed: np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8),
    st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**16),
)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    buffer = io.BytesIO()
    magic = 0x0800 | array.ndim if magic is None else magic
    buffer.write(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape))
    buffer.write(array.tobytes())
    return buffer.getvalue()


@st.composite
def idx_files(draw) -> bytes:
    array = draw(small_images)
    choice = draw(st.sampled_from(["valid", "mutated", "header", "random"]))
    if choice == "valid":
        return idx_bytes(array)
    if choice == "mutated":
        return draw(mutated(idx_bytes(array)))
    if choice == "header":  # any dimensions, any amount of data
        dims = draw(st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3))
        magic = draw(st.sampled_from([0x803, 0x801, 0xD03, 0x804, draw(st.integers(0, 2**32 - 1))]))
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        return header + draw(st.binary(max_size=600))
    return draw(st.binary(max_size=300))


@FUZZ
@given(data=idx_files(), compress=st.sampled_from(["none", "gzip", "gzip-mutated"]), seed=st.integers(0, 2**16))
def test_idx_files_read_or_raise_corpus_error(data, compress, seed):
    name = "fuzz-idx3-ubyte"
    if compress != "none":
        name += ".gz"
        data = gzip.compress(data, mtime=0)
        if compress == "gzip-mutated":
            rng = np.random.default_rng(seed)
            cut = rng.integers(0, len(data))
            data = data[:cut] + bytes(rng.integers(0, 256, rng.integers(0, 4), dtype=np.uint8)) + data[cut + 1 :]
    read_all(fresh(name, data))


@FUZZ
@given(array=small_images, gz=st.booleans())
def test_valid_idx_files_read_exactly(array, gz):
    data = idx_bytes(array)
    path = fresh("ok-idx3-ubyte" + (".gz" if gz else ""), gzip.compress(data) if gz else data)
    spec = ImageSpec(array.shape[1], array.shape[2], 1)
    result = read_all(path, spec)
    assert result is not None and not result.errors
    np.testing.assert_array_equal(result.pixels[..., 0], array)


NPY_DTYPES = ["|u1", "<u2", ">u2", "<i4", "<f4", ">f8", "|b1", "<c8", "|O", "<U3", "|V4", "<M8[s]", "<f2"]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def npy_arrays(draw, valid_only: bool = False) -> np.ndarray:
    """Small arrays of image-like shapes and many dtypes; ``valid_only``: shapes patchhash reads."""
    dtype = draw(st.sampled_from(["u1", "<u2", ">u2", "<i4", "<f4", ">f8", "?"]))
    shape = draw(st.sampled_from([(2, 5, 7), (1, 9, 4, 1), (2, 3, 3, 3), (1, 4, 4, 4), (3, 2, 2, 2)]
                                 if draw(st.booleans()) and not valid_only else [(2, 5, 7), (1, 9, 4, 1), (2, 3, 3, 3), (1, 4, 4, 4)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = (rng.random(shape) * draw(st.sampled_from([1, 255, 70000, -5]))).astype(dtype)
    if draw(st.booleans()):
        array = np.asfortranarray(array)
    return array


@st.composite
def npy_files(draw) -> bytes:
    choice = draw(st.sampled_from(["valid", "mutated", "header", "random"]))
    if choice in ("valid", "mutated"):
        data = npy_bytes(draw(npy_arrays()))
        return data if choice == "valid" else draw(mutated(data))
    if choice == "header":  # a hand-made header: any descr, order and shape, any data
        descr = draw(st.sampled_from([*map(repr, NPY_DTYPES), "[('a', '<i4')]", "3", "None", "'nonsense'", "{1: 2}"]))
        shape = draw(st.lists(st.integers(-3, 2**40), max_size=5).map(tuple))
        order = draw(st.sampled_from(["False", "True", "0", "'x'"]))
        text = draw(st.sampled_from([
            "{{'descr': {d}, 'fortran_order': {o}, 'shape': {s}, }}",
            "{{'descr': {d}, 'shape': {s}}}",
            "[{d}, {o}, {s}]",
            "{{{d}: {s}}}",
        ])).format(d=descr, o=order, s=repr(shape))
        header = text.encode("latin1", "replace") + b" " * (-(len(text) + 11) % 64) + b"\n"
        version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x07\x01"]))
        size = len(header).to_bytes(2 if version == b"\x01\x00" else 4, "little")
        return b"\x93NUMPY" + version + size + header + draw(st.binary(max_size=400))
    return b"\x93NUMPY" + draw(st.binary(max_size=200)) if draw(st.booleans()) else draw(st.binary(max_size=200))


@FUZZ
@given(data=npy_files(), spec=st.sampled_from([GREY, RGB]))
def test_npy_files_read_or_raise_corpus_error(data, spec):
    read_all(fresh("fuzz.npy", data), spec)


@FUZZ
@given(array=npy_arrays(valid_only=True))
def test_valid_npy_files_read_like_numpy_load(array):
    from storage.images import convert_batch

    spec = ImageSpec(array.shape[1], array.shape[2], 3 if array.ndim == 4 and array.shape[3] >= 3 else 1)
    result = read_all(fresh("ok.npy", npy_bytes(array)), spec)
    assert result is not None
    expected, ok = convert_batch(array, spec)
    assert result.ids.tolist() == np.flatnonzero(ok).tolist()
    np.testing.assert_array_equal(result.pixels, expected)


# Uri lists are fuzzed as text; entries with a protocol are not fetched (no network in tests).
LIST_TEXT = st.lists(
    st.text(max_size=6) | st.sampled_from(list("#,\"\n\r\t /.") + ["../", "#12", "x.png", "a.npy#1", "file:", "://", "\ufeff"]),
    max_size=40,
).map("".join)


def read_list(path: Path, spec: ImageSpec = GREY) -> None:
    with no_hang():
        try:
            corpus = open_corpus(str(path))
        except PatchhashError:
            return
        uris = corpus.uris()
        assert len(uris) == len(corpus) and all(isinstance(u, str) for u in uris)
        if any("://" in u for u in uris):
            return
    read_all(path, spec)


@FUZZ
@given(text=LIST_TEXT, suffix=st.sampled_from([".txt", ".lst", ".csv"]))
def test_uri_list_text_reads_or_raises(text, suffix):
    read_list(fresh("list" + suffix, text))


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".txt", ".csv", ".parquet"]))
def test_uri_list_bytes_read_or_raise(data, suffix):
    read_list(fresh("list" + suffix, data))


@FUZZ
@given(
    header=st.sampled_from(["uri", "uri,label", "label,uri", "path", "", "\"uri\"", "URI ,x"]),
    rows=st.lists(st.lists(st.sampled_from(["", "img.png", "missing.png", "sub/../img.png", "#3", "a,b", "\"q\"",
                                             "big.npy#1", "big.npy#99", "big.npy#x", " img.png "]) | st.text(max_size=8),
                           max_size=3), max_size=6),
)
def test_csv_uri_lists_keep_one_id_per_data_row(header, rows):
    import csv

    folder = ROOT / f"csv-{next(_counter)}"
    folder.mkdir()
    Image.fromarray(np.full((5, 5), 9, np.uint8)).save(folder / "img.png")
    np.save(folder / "big.npy", np.zeros((4, 6, 6), np.uint8))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header.split(",") if header else [])
    writer.writerows(rows)
    path = folder / "q.csv"
    path.write_text(buffer.getvalue())
    clear_source_cache()
    read_list(path)


IMAGE_SEEDS = [
    (Image.new("L", (7, 5), 100), "PNG"), (Image.new("RGB", (6, 6), (1, 2, 3)), "JPEG"),
    (Image.new("RGBA", (4, 9), (9, 8, 7, 100)), "PNG"), (Image.new("P", (5, 5)), "GIF"),
    (Image.new("RGB", (5, 4), (200, 0, 0)), "BMP"), (Image.new("I;16", (3, 3)), "TIFF"),
    (Image.new("RGB", (8, 8), (0, 90, 0)), "WEBP"), (Image.new("1", (9, 2), 1), "TIFF"),
    (Image.new("LA", (3, 3), (5, 200)), "PNG"), (Image.new("CMYK", (3, 3)), "JPEG"),
]
ENCODED = [encode(image, fmt) for image, fmt in IMAGE_SEEDS]


@FUZZ
@given(data=st.sampled_from(ENCODED).flatmap(mutated) | st.binary(max_size=100), spec=st.sampled_from([GREY, RGB]))
def test_image_bytes_decode_or_raise_image_read_error(data, spec):
    with no_hang():
        try:
            pixels = convert(decode_image(data, "fuzz.png"), spec, "fuzz.png")
        except PatchhashError as exc:
            assert "fuzz.png" in str(exc) and getattr(exc, "reason", "")
            return
    assert pixels.shape == spec.shape and pixels.dtype == np.uint8


@FUZZ
@given(data=st.sampled_from(ENCODED).flatmap(mutated), name=st.sampled_from(["a.png", "b.jpg", "c.gif", "d.tiff"]))
def test_image_files_in_a_folder_become_pixels_or_read_errors(data, name):
    folder = ROOT / f"img-{next(_counter)}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    read_all(folder)


@st.composite
def label_files(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["idx", "idx.gz", "npy", "csv"]))
    labels = np.asarray(draw(st.lists(st.integers(0, 255), min_size=1, max_size=20)), np.uint8)
    if kind.startswith("idx"):
        data = draw(st.sampled_from([idx_bytes(labels), idx_bytes(labels, 0x803)]).flatmap(mutated) | st.binary(max_size=50))
        return ("labels-idx1-ubyte" + (".gz" if kind == "idx.gz" else ""),
                gzip.compress(data) if kind == "idx.gz" else data)
    if kind == "npy":
        array = labels.astype(draw(st.sampled_from(["<i8", ">i2", "u1", "<f4"])))
        data = npy_bytes(array if draw(st.booleans()) else array.reshape(-1, 1))
        return "labels.npy", draw(mutated(data) | npy_files())
    text = "uri,label\n" + "".join(f"{u},{v}\n" for u, v in draw(st.lists(
        st.tuples(st.sampled_from(["a.png", "b.png", "", "x y"]), st.sampled_from(["1", "-2", "x", "", "3.5"])), max_size=5)))
    return "labels.csv", draw(st.just(text.encode()) | mutated(text.encode()))


@FUZZ
@given(label_file=label_files(), n=st.integers(1, 20))
def test_label_files_read_or_raise_corpus_error(label_file, n):
    name, data = label_file
    path = fresh(name, data)
    uris = [str(path.parent / u) for u in ("a.png", "b.png")] if name.endswith(".csv") else None
    with no_hang():
        try:
            labels = read_labels(str(path), uris=uris)
        except PatchhashError:
            return
    assert labels.dtype == np.int64 and labels.ndim == 1
    if uris is not None:
        assert len(labels) == len(uris)


# --------------------------------------------------------------------------- regressions


def test_truncated_npy_fails_at_open_naming_the_file(tmp_path):
    """Found by the sweep: a .npy cut short passed the header check and failed in the worker
    with a bare ValueError (mmap length is greater than file size)."""
    np.save(tmp_path / "x.npy", np.zeros((10, 28, 28), np.uint8))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-1])
    with pytest.raises(PatchhashError, match=r"cut\.npy is truncated: .* write or download it again"):
        open_corpus(str(tmp_path / "cut.npy"))


def test_npy_header_that_numpy_parses_into_a_type_error_is_a_corpus_error(tmp_path):
    """numpy lets a TypeError out of header parsing for an unhashable dict key."""
    header = b"{[1]: 2}" + b" " * 52 + b"\n"
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with pytest.raises(PatchhashError, match=r"x\.npy is not a valid \.npy file"):
        open_corpus(str(tmp_path / "x.npy"))


def test_npy_labels_header_announcing_huge_arrays_is_refused_unread(tmp_path):
    """np.load allocated the announced array before reading: a 64-byte file could ask for TBs."""
    header = b"{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    (tmp_path / "labels.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 8)
    with pytest.raises(PatchhashError, match=r"labels\.npy is truncated"):
        read_labels(str(tmp_path / "labels.npy"))


@pytest.mark.parametrize("reader", ["corpus", "labels"])
def test_npy_header_with_a_nul_byte_is_a_corpus_error(tmp_path, reader):
    """Found by the fuzz test: numpy's fallback parser for Python 2 headers (versions 1 and 2)
    let a tokenize.TokenError out for a header holding a NUL byte."""
    header = b"{'descr': '<i8', 'fortran_order': False, 'shape': \x001, 1), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 8)
    with pytest.raises(PatchhashError, match=r"x\.npy is not a valid \.npy file"):
        open_corpus(str(path)) if reader == "corpus" else read_labels(str(path))


def test_negative_shape_in_an_npy_header_is_refused(tmp_path):
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 28, 28), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    (tmp_path / "neg.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with pytest.raises(PatchhashError, match=r"neg\.npy: array header gives a negative shape"):
        open_corpus(str(tmp_path / "neg.npy"))


def test_truncated_uncompressed_idx_fails_at_open(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", np.zeros((10, 4, 4), np.uint8))
    data = (tmp_path / "x-idx3-ubyte").read_bytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(data[:-1])
    with pytest.raises(PatchhashError, match=r"x-idx3-ubyte is truncated"):
        open_corpus(str(tmp_path / "x-idx3-ubyte"))


def test_zarr_metadata_that_is_not_an_object_is_a_corpus_error(tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "zarr.json").write_text("[1, 2]")
    with pytest.raises(PatchhashError, match=r"zarr\.json is not Zarr metadata"):
        open_corpus(str(tmp_path / "z"))


def test_extreme_aspect_ratio_is_a_read_error_not_a_memory_blow_up(tmp_path):
    """A 1 x 5,000,000 PNG is a few KB, but scaling it to cover 28 x 28 took 140 million x 28 pixels."""
    Image.new("L", (5_000_000, 1)).save(tmp_path / "line.png")
    data = open_corpus(str(tmp_path / "line.png")).read(GREY)
    assert [e.reason.split(" (")[0] for e in data.errors] == ["aspect ratio too extreme"]


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_devices_and_pipes_in_a_list_are_read_errors_not_hangs(tmp_path, special):
    target = special
    if special == "fifo":
        target = str(tmp_path / "pipe.png")
        os.mkfifo(target)
    (tmp_path / "list.txt").write_text(f"{target}\n")
    with no_hang(5):
        data = open_corpus(str(tmp_path / "list.txt")).read(GREY)
    assert [e.reason for e in data.errors] == ["not a regular file (a device, pipe or socket)"]


def test_csv_line_too_long_names_the_line(tmp_path):
    (tmp_path / "q.csv").write_text("uri\na.png\nb.png\n\"" + "x" * 200_000 + "\"\n")
    with pytest.raises(PatchhashError, match=r"q\.csv, line 4: not valid CSV .* fix that line"):
        open_corpus(str(tmp_path / "q.csv"))


def test_corpus_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(PatchhashError, match=r"nothing exists at that path \(check it\)"):
        open_corpus(str(tmp_path / "nowhere"))


def test_image_bytes_assume_nothing_about_the_extension():
    """A PNG named .jpg and a JPEG named .png decode by content (mislabelled files are fine)."""
    png = encode(Image.new("L", (4, 4), 7), "PNG")
    assert convert(decode_image(png, "x.jpg"), ImageSpec(4, 4, 1))[0, 0, 0] == 7
