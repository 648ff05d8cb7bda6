"""Security (issue 7): what patchhash stores, loads and prints.

* No pickle anywhere in stored formats: every file of an index (and of results and reports) is
  JSON, Parquet, Zarr chunks of numeric arrays, or the model's Keras archive; ``.npy`` files are
  only ever read with ``allow_pickle=False``; a guard test greps the package source.
* Models load in Keras safe mode, after an inspection of the archive that refuses a ``Lambda``
  layer or any class that is not Keras's own or patchhash's ``Binarize``, with a clear
  ``ModelError``; a card whose hash does not match its weights is refused.
* Manifests and cards are validated against their schema; paths in manifests cannot leave the
  index root (``..``, absolute paths and protocols are refused).
* Credentials given as storage options never reach logs, stored files, results, reports or
  error messages (checked against a moto S3 server, through the CLI, with debug logging).
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import gzip
import json
import logging
import os
import pickletools
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from corpus_helpers import moto_s3, png_bytes, write_idx
from PIL import Image

from pipeline.modelcard import inspect_keras_archive, read_card, redact_command, sha256_bytes
from storage import CorpusError, IndexFormatError, ModelError, PatchhashError, open_corpus, read_labels
from storage.layout import check_relative
from storage.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("storage", "pipeline", "workflows")
CLI = [sys.executable, "-m", "workflows.cli"]
ENV = {k: v for k, v in os.environ.items() if k != "PATCHHASH_TRACEBACK"} | {"PATCHHASH_STORAGE_ATTEMPTS": "1"}


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, env=env or ENV)


def run_cli_at_once(*commands: tuple) -> list[subprocess.CompletedProcess]:
    """``run_cli`` of independent commands, all started together (several of them mostly wait:
    on a worker process starting, on retries against an unreachable endpoint); in order."""
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def looks_like_pickle(data: bytes) -> bool:
    """Whether ``data`` is a whole pickle (protocol 2-5): parsed, never executed."""
    if len(data) < 3 or data[0] != 0x80 or not 2 <= data[1] <= 5:
        return False
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - anything pickletools cannot walk is not a pickle
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


# --------------------------------------------------------------------------- no pickle


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_index, fmnist_train, client):
    """An index with two versions (one with unreadable images), results in every format, a report."""
    from workflows.index import index
    from workflows.query import QuerySettings, query

    root = tmp_path_factory.mktemp("secure")
    url = str(root / "index")
    shutil.copytree(make_index(fmnist_train[:250], shard_size=100, partitions=2)[1], url)  # version 1, appended to below
    folder = root / "more"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(fmnist_train[300 + i, :, :, 0]).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    index(str(folder), url, None, client=client)
    np.save(root / "queries.npy", fmnist_train[500:510, :, :, 0])
    out = root / "out"
    for fmt in ("parquet", "csv", "jsonl"):
        query(url, str(root / "queries.npy"), str(out / f"results.{fmt}"), QuerySettings(k=3), client=client,
              report=str(out / "report.html") if fmt == "parquet" else None)
    return root


def _zarr_array_dir(path: Path, root: Path) -> Path | None:
    """The Zarr array folder a chunk file belongs to (the nearest parent with a zarr.json)."""
    for parent in path.parents:
        if (parent / "zarr.json").is_file():
            return parent
        if parent == root:
            return None
    return None


ALLOWED_CODECS = {"bytes", "zstd", "blosc", "gzip", "transpose", "crc32c", "sharding_indexed"}


def test_every_stored_file_is_json_parquet_zarr_or_the_model_archive(built):
    index = built / "index"
    kinds: dict[str, int] = {}
    for path in sorted(p for p in index.rglob("*") if p.is_file()):
        rel = str(path.relative_to(index))
        data = path.read_bytes()
        assert not looks_like_pickle(data), f"{rel} is a pickle"
        if path.suffix == ".json":
            json.loads(data)
            kind = "json"
        elif path.suffix == ".parquet":
            assert data[:4] == b"PAR1" and data[-4:] == b"PAR1", rel
            pq.read_table(path)
            kind = "parquet"
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
            kind = "npy"
        elif rel == "model/model.keras":
            inspect_keras_archive(data, rel)  # only config.json, metadata.json, model.weights.h5
            assert zipfile.ZipFile(path).read("model.weights.h5")[:8] == b"\x89HDF\r\n\x1a\n"
            kind = "keras"
        else:
            array_dir = _zarr_array_dir(path, index)
            assert array_dir is not None, f"{rel} is neither JSON, Parquet, Zarr nor the model"
            meta = json.loads((array_dir / "zarr.json").read_text())
            assert meta["node_type"] == "array" and np.dtype(meta["data_type"]).kind in "iu", rel
            assert {c["name"] for c in meta["codecs"]} <= ALLOWED_CODECS, rel
            kind = "zarr chunk"
        kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == {"json", "parquet", "keras", "zarr chunk"}, kinds
    assert any(name.startswith("errors/") for name in map(str, (p.relative_to(index) for p in index.rglob("*.parquet"))))


def test_zarr_arrays_hold_numbers_only(built):
    arrays = [p.parent for p in (built / "index").rglob("zarr.json") if json.loads(p.read_text())["node_type"] == "array"]
    assert len(arrays) > 8  # the codes and 4 arrays per bucket map
    for folder in arrays:
        array = zarr.open_array(str(folder), mode="r")
        assert array.dtype.kind in "iu", (folder, array.dtype)
        array[...]  # decodes with the stored codecs only


def test_results_and_report_hold_no_pickle(built):
    files = list((built / "out").iterdir())
    assert {p.name for p in files} >= {"results.parquet", "results.csv", "results.jsonl", "report.html"}
    for path in files:
        assert not looks_like_pickle(path.read_bytes()), path
    pq.read_table(built / "out" / "results.parquet")
    for line in (built / "out" / "results.jsonl").read_text().splitlines():
        json.loads(line)


class _Trap:
    """Unpickling this object creates its marker file: proof that something was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_object_arrays_are_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    images = np.empty((2, 28, 28), dtype=object)
    images[0, 0, 0] = _Trap(str(marker))
    np.save(tmp_path / "trap.npy", images, allow_pickle=True)
    labels = np.array([_Trap(str(marker)), 1], dtype=object)
    np.save(tmp_path / "trap-labels.npy", labels, allow_pickle=True)
    with pytest.raises(CorpusError, match=r"trap\.npy: array of dtype object cannot be read as images"):
        open_corpus(str(tmp_path / "trap.npy"))
    with pytest.raises(CorpusError, match=r"trap-labels\.npy: labels of shape \(2,\) and dtype object"):
        read_labels(str(tmp_path / "trap-labels.npy"))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'trap.npy'}#0\n")
    data = open_corpus(str(tmp_path / "list.txt")).read(__import__("storage").ImageSpec(28, 28, 1))
    assert "dtype object" in data.errors[0].reason
    assert not marker.exists()


def _source_files():
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


UNSAFE_SOURCE = {
    r"\b(import|from)\s+(c?[Pp]ickle|cloudpickle|dill|joblib|shelve|marshal)\b": "a pickle-like serialiser",
    r"\bpickle\.(loads?|dumps?|Unpickler)\b": "pickle",
    r"allow_pickle\s*=\s*True": "numpy loading pickles",
    r"safe_mode\s*=\s*False": "Keras loading outside safe mode",
    r"enable_unsafe_deserialization": "Keras unsafe deserialisation",
    r"\bread_pickle\b|\bto_pickle\b|torch\.load\b": "pickle-based loaders",
    r"(?<![\w.])(eval|exec)\(": "eval/exec",
    r"yaml\.(unsafe_)?load\((?![^)]*Loader=yaml\.SafeLoader)": "unsafe YAML loading",
}


def test_package_source_has_no_pickle_or_unsafe_loading():
    offences = []
    for path in _source_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in UNSAFE_SOURCE.items():
                if re.search(pattern, code):
                    offences.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert not offences, "\n".join(offences)


def _calls(tree: ast.AST, names: set[str]):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in names:
                yield name, node


def test_every_numpy_and_keras_load_is_explicitly_safe():
    """Every ``np.load`` passes ``allow_pickle=False`` and every Keras ``load_model`` passes
    ``safe_mode=True``, literally (found by parsing the package source)."""
    required = {"load": ("allow_pickle", False), "load_model": ("safe_mode", True)}
    seen = {"load": 0, "load_model": 0}
    for path in _source_files():
        for name, call in _calls(ast.parse(path.read_text()), set(required)):
            if name == "load" and not (isinstance(call.func, ast.Attribute) and ast.unparse(call.func.value) in ("np", "numpy")):
                continue  # json.load, yaml loads... are not numpy's
            keyword, value = required[name]
            given = {k.arg: k.value for k in call.keywords}
            assert keyword in given and isinstance(given[keyword], ast.Constant) and given[keyword].value is value, \
                f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}"
            seen[name] += 1
    assert seen["load"] >= 2 and seen["load_model"] >= 1, seen


# --------------------------------------------------------------------------- models


def _doubler_class():
    import keras

    class Doubler(keras.layers.Layer):  # not registered: custom code keras would have to import
        def call(self, x):
            return x * 2

    return Doubler


def _registered_class():
    import keras

    @keras.saving.register_keras_serializable(package="evil")
    class Tripler(keras.layers.Layer):  # registered in this process, under another package
        def call(self, x):
            return x * 3

    return Tripler


def model_dir_with(tiny_model: str, tmp_path: Path, layer: str) -> Path:
    """A copy of the tiny model whose ``model.keras`` is replaced by a network with ``layer``,
    and whose card carries that file's correct hash (so only the inspection can refuse it)."""
    import keras

    make = {
        "lambda": lambda: keras.layers.Lambda(lambda x: x * 2),
        "custom": lambda: _doubler_class()(),
        "registered": lambda: _registered_class()(),
    }[layer]
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, make()(inputs))
    copy = tmp_path / f"model-{layer}"
    shutil.copytree(tiny_model, copy)
    model.save(copy / "model.keras")
    card = json.loads((copy / "card.json").read_text())
    card["model_sha256"] = sha256_bytes((copy / "model.keras").read_bytes())
    (copy / "card.json").write_text(json.dumps(card))
    return copy


REFUSALS = {
    "lambda": r"contains a Lambda layer \(Python code stored in the model\), which patchhash refuses to load",
    "custom": r"uses custom code \(class 'Doubler' from module [^)]*\), which patchhash refuses to load",
    "registered": r"uses custom code \(class 'Tripler' from module [^)]*\)",
}


@pytest.mark.parametrize("layer", list(REFUSALS))
def test_models_with_code_are_refused_before_keras_sees_them(tiny_model, tmp_path, layer):
    from pipeline.encode import load_encoder

    model = model_dir_with(tiny_model, tmp_path, layer)
    for load in (read_card, lambda url: load_encoder(url, use_cache=False)):
        with pytest.raises(ModelError, match=REFUSALS[layer]) as info:
            load(str(model))
        assert str(model / "model.keras") in str(info.value) and "patchhash train" in str(info.value)


def test_keras_safe_mode_refuses_a_lambda_even_past_the_inspection(tiny_model, tmp_path, monkeypatch):
    """Second line of defence: with the archive inspection switched off, Keras's safe mode still refuses."""
    import pipeline.encode as encode
    from pipeline.modelcard import MODEL_FILE

    model = model_dir_with(tiny_model, tmp_path, "lambda")
    monkeypatch.setattr(encode, "read_model_file", lambda url, card, options: Path(url, MODEL_FILE).read_bytes())
    with pytest.raises(ModelError, match=r"cannot load model\.keras in safe mode \(ValueError: Requested the deserialization of a `Lambda`"):
        encode.load_encoder(str(model), use_cache=False)


def test_cli_refuses_a_lambda_model_before_writing_anything(tiny_model, tmp_path, fmnist_train):
    model = model_dir_with(tiny_model, tmp_path, "lambda")
    np.save(tmp_path / "c.npy", fmnist_train[:20, :, :, 0])
    result = run_cli("index", "--corpus", tmp_path / "c.npy", "--index", tmp_path / "idx", "--model", model)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert re.search(rf"patchhash: error: {re.escape(str(model / 'model.keras'))} contains a Lambda layer", result.stderr)
    assert not (tmp_path / "idx" / "model").exists() and not (tmp_path / "idx" / "manifest.json").exists()


@pytest.mark.parametrize(
    "archive, message",
    [
        (b"not a zip at all", r"is not a Keras 3 model archive \(BadZipFile\)"),
        ("extra", r"holds unexpected files \(assets/evil\.py\)"),
        ("no-config", r"no usable config\.json"),
    ],
)
def test_foreign_archives_are_refused(tiny_model, tmp_path, archive, message):
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    if archive in ("extra", "no-config"):
        with zipfile.ZipFile(Path(tiny_model) / "model.keras") as source, zipfile.ZipFile(copy / "model.keras", "w") as target:
            for name in source.namelist():
                if not (archive == "no-config" and name == "config.json"):
                    target.writestr(name, source.read(name))
            if archive == "extra":
                target.writestr("assets/evil.py", "import os\n")
    else:
        (copy / "model.keras").write_bytes(archive)
    card = json.loads((copy / "card.json").read_text())
    card["model_sha256"] = sha256_bytes((copy / "model.keras").read_bytes())
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        read_card(str(copy))


def test_card_whose_hash_does_not_match_the_weights_is_refused(tiny_model, tmp_path):
    from pipeline.encode import load_encoder

    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    card = json.loads((copy / "card.json").read_text())
    (copy / "card.json").write_text(json.dumps({**card, "model_sha256": "f" * 64}))
    for load in (read_card, lambda url: load_encoder(url, use_cache=False)):
        with pytest.raises(ModelError, match=r"model\.keras does not match card\.json .*the model or its card was modified"):
            load(str(copy))


CARD_FIELDS = {
    "name-not-a-string": ({"name": 5}, r"name must be a non-empty string"),
    "name-empty": ({"name": " "}, r"name must be a non-empty string"),
    "bits-a-string": ({"bits": "16"}, r"bits must be an integer, got '16'"),
    "bits-a-float": ({"bits": 16.5}, r"bits must be an integer, got 16\.5"),
    "bits-a-bool": ({"bits": True}, r"bits must be an integer, got True"),
    "bits-out-of-range": ({"bits": 99, "architecture": {"bits": 99}}, r"bits must be between 8 and 64"),
    "patch-null": ({"patch": None}, r"patch must be an integer"),
    "grid-a-string": ({"grid": "7x7"}, r"grid must be a list of 2 integers"),
    "input-shape-short": ({"input_shape": [28, 28]}, r"input_shape must be a list of 3 integers"),
    "architecture-a-list": ({"architecture": []}, r"architecture must be an object"),
    "architecture-widths": ({"architecture": {"widths": "ab"}}, r"architecture\.widths must be a list of integers"),
    "architecture-disagrees": ({"architecture": {"stride": 2}}, r"disagree with the architecture section"),
    "normalization-a-list": ({"normalization": []}, r"normalization must be an object"),
    "normalization-std-text": ({"normalization": {"std": "x"}}, r"normalization must be an object .* numeric 'std'"),
    "normalization-mean-shape": ({"normalization": {"mean": [1.0]}}, r"normalization mean has shape"),
    "sha-not-hex": ({"model_sha256": "abc"}, r"model_sha256 must be a 64-character hex digest"),
    "model-file-elsewhere": ({"model_file": "../../other.keras"}, r"model_file must be 'model\.keras'"),
    "code-dtype-wrong": ({"code_dtype": "uint8"}, r"code_dtype 'uint8' does not hold 16-bit codes"),
    "training-a-list": ({"training": [1]}, r"training must be an object"),
    "software-not-strings": ({"software": {"keras": 3}}, r"software must map names to version strings"),
    "created-a-number": ({"created": 5}, r"created must be a string"),
    "newer-card-format": ({"format_version": 2}, r"format_version 2 is not supported .*upgrade patchhash"),
    "not-a-card": ({"format": "something-else"}, r"not a patchhash model card"),
}


@pytest.mark.parametrize("change, message", list(CARD_FIELDS.values()), ids=list(CARD_FIELDS))
def test_card_fields_are_validated(tiny_model, tmp_path, change, message):
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    card = json.loads((copy / "card.json").read_text())
    for key, value in change.items():
        card[key] = {**card[key], **value} if isinstance(value, dict) and isinstance(card.get(key), dict) and value else value
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message) as info:
        read_card(str(copy))
    assert str(copy / "card.json") in str(info.value) and "patchhash train" in str(info.value)


# --------------------------------------------------------------------------- manifests


ESCAPING_PATHS = ["../x", "/abs", "s3://other/x", "file:///etc/passwd", "images/../../x", "C:\\x", "./images/a",
                  "images//a", "%2e%2e/x", "~/x", "", None, 5, ["images/a"]]
FIELDS = {
    "image table": lambda m, p: m["shards"][0].__setitem__("images", p),
    "errors table": lambda m, p: m["shards"][0].__setitem__("errors", p),
    "partition": lambda m, p: m["partitions"][0]["maps"]["any"].__setitem__("path", p),
    "delta": lambda m, p: m["partitions"][0]["deltas"].append({"start": m["partitions"][0]["stop"] - 1, "stop": m["partitions"][0]["stop"],
                                                                "maps": {"any": {"path": p}, "pos": {"path": "buckets/pos/x"}}}),
    "codes": lambda m, p: m["partitions"][0].__setitem__("codes", p),
    "tombstones": lambda m, p: m["partitions"][0].__setitem__("tombstones", {"path": p, "n_images": 0, "n_errors": 0}),
    "model": lambda m, p: m["model"].__setitem__("path", p),
}


@pytest.mark.parametrize(
    "field, path",
    [(f, p) for f in FIELDS for p in ESCAPING_PATHS if not (f == "errors table" and p is None)],  # null: no unreadable image
    ids=[f"{f}={p!r}" for f in FIELDS for p in ESCAPING_PATHS if not (f == "errors table" and p is None)],
)
def test_manifest_paths_cannot_leave_the_index(built, tmp_path, field, path):
    copy = tmp_path / "index"
    shutil.copytree(built / "index", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    FIELDS[field](manifest, path)
    for name in ("manifest.json", f"versions/v{manifest['version']:06d}.json"):
        (copy / name).write_text(json.dumps(manifest))
    for version in (None, manifest["version"]):
        with pytest.raises(IndexFormatError) as info:
            read_manifest(str(copy), version=version)
        message = str(info.value)
        assert message.startswith(str(copy / ("manifest.json" if version is None else f"versions/v{version:06d}.json")))
        assert "restore it from versions/" in message or "rebuild the index" in message


@pytest.mark.parametrize("path", ["images/000000000000-000000000100.parquet", "buckets/any/x.v000001", "a-b_c.d=e"])
def test_plain_relative_paths_pass(path):
    assert check_relative(path) == path


def test_manifest_json_must_be_an_object_of_the_right_types(built, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built / "index", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for change, message in [
        ({"version": "1"}, r"version must be an integer"),
        ({"n_images": 10**9}, r"the shards cover image ids \[0, \d+\), expected \[0, 1000000000\)"),
        ({"code_dtype": "object"}, r"code_dtype must be uint32"),
        ({"shards": {"0": {}}}, r"shards must be a JSON list"),
        ({"partitions": manifest["partitions"][:1]}, r"partitions cover image ids"),
        ({"model": {"name": "x", "model_sha256": "nope"}}, r"model must name the model"),
        ({"sources": "x"}, r"sources must be a JSON list"),
    ]:
        (copy / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(IndexFormatError, match=message):
            read_manifest(str(copy))


# --------------------------------------------------------------------------- credentials


def test_card_command_lines_never_keep_storage_options():
    secret = "ph-" + uuid.uuid4().hex
    for command in (
        f"patchhash train --corpus s3://b/c.npy --storage-options '{{\"secret\": \"{secret}\"}}' --out m",
        f"patchhash train --storage-options={{\"secret\":\"{secret}\"}} --out m",
        f"patchhash train --storage-options '{{\"secret\": \"{secret}\" --out m",  # unbalanced quote
    ):
        assert secret not in redact_command(command) and "--storage-options" in redact_command(command)


def test_reprs_hide_storage_options(tmp_path):
    secret = "ph-" + uuid.uuid4().hex
    np.save(tmp_path / "c.npy", np.zeros((3, 4, 4), np.uint8))
    corpus = open_corpus(str(tmp_path / "c.npy"), {"secret": secret})
    assert secret not in repr(corpus) and secret not in str(corpus)
    assert all(secret not in repr(shard) for shard in corpus.shards(2))


@contextlib.contextmanager
def patchhash_debug_logging():
    """Debug logging as ``patchhash -v`` sets it up (``workflows.runtime.setup_logging``): every
    logger at DEBUG except the third-party ones it keeps at WARNING (botocore's debug output
    holds request headers); levels are restored afterwards."""
    from workflows.runtime import setup_logging

    names = ["", *logging.Logger.manager.loggerDict]
    levels = {name: logging.getLogger(name).level for name in names}
    setup_logging(verbose=True)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for name in {*logging.Logger.manager.loggerDict, ""}:
            logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))


class _Records(logging.Handler):
    """Keeps every log record of this process (the in-process Dask worker logs here)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, fmnist_train):
    """Train, index, query (with a report) and fail through the CLI against a moto S3 server, with
    credentials that are easy to grep for and debug logging; yields what came out.

    Tasks run on an in-process worker behind a TCP scheduler (its logs are captured here), except
    one job that fails inside a worker process of its own LocalCluster (whose log goes to the
    command's stderr)."""
    from distributed import LocalCluster

    token = uuid.uuid4().hex[:12]
    secrets = {"key": f"PHKEY{token.upper()}", "secret": f"ph-secret-{token}", "token": f"ph-token-{token}"}
    local = tmp_path_factory.mktemp("s3")
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        with patchhash_debug_logging(), moto_s3() as base, LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                             host="127.0.0.1", dashboard_address=None) as cluster:
            import s3fs

            options = {**base, **secrets}
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir("bkt")
            for name, images in (("corpus.npy", fmnist_train[:200, :, :, 0]), ("queries.npy", fmnist_train[500:506, :, :, 0])):
                np.save(local / name, images)
                fs.put(str(local / name), f"bkt/{name}")
            write_idx(local / "raw", fmnist_train[:40, :, :, 0])
            packed = gzip.compress((local / "raw").read_bytes())
            fs.pipe("bkt/cut-idx3-ubyte.gz", packed[: len(packed) // 2])
            fs.pipe("bkt/broken/a.png", png_bytes(fmnist_train[0, :, :, 0]))
            fs.pipe("bkt/broken/b.png", b"not a png")
            so = json.dumps(options)
            dask = ("--scheduler", cluster.scheduler_address)
            query = ("query", "--index", "s3://bkt/idx", "--queries", "s3://bkt/queries.npy", *dask)
            ok = [  # one after the other: each needs what the one before wrote
                run_cli("train", "--corpus", "s3://bkt/corpus.npy", "--out", "s3://bkt/model", "--bits", 8, "--epochs", 1,
                        "--sample", 64, "--batch-size", 32, "--stem", "none", "--storage-options", so, "-v"),
                run_cli("index", "--corpus", "s3://bkt/corpus.npy", "--index", "s3://bkt/idx", "--model", "s3://bkt/model",
                        "--shard-size", 100, *dask, "--storage-options", so, "-v"),
                run_cli("index", "--corpus", "s3://bkt/broken", "--index", "s3://bkt/idx", *dask, "--storage-options", so, "-v"),
                run_cli(*query, "--out", "s3://bkt/results.parquet", "--report", "s3://bkt/report.html", "--k", 3,
                        "--storage-options", so, "-v"),
            ]
            unreachable = {**options["client_kwargs"], "endpoint_url": "http://127.0.0.1:9"}
            # The rest only read the index or fail: they run at once, except the two index jobs,
            # one after the other (together, one might find the index locked by the other).
            with concurrent.futures.ThreadPoolExecutor(1) as background:
                info_and_queries = background.submit(
                    run_cli_at_once,
                    ("info", "--index", "s3://bkt/idx", "--json", "--storage-options", so),
                    ("info", "--model", "s3://bkt/model", "--json", "--storage-options", so),
                    (*query, "--out", "s3://bkt/r2.parquet", "--storage-options", json.dumps({**options, "anon": True}), "-v"),
                    (*query, "--out", "s3://bkt/r3.parquet", "--storage-options", json.dumps({**options, "no_such_option": 1}), "-v"),
                    (*query, "--out", "s3://bkt/r4.parquet", "--storage-options", json.dumps({**options, "client_kwargs": unreachable}),
                     "-v"),
                    (*query, "--out", "s3://bkt/r5.parquet", "--storage-options", so[:-1], "-v"),  # not JSON
                )
                failing = [
                    run_cli("index", "--corpus", "s3://bkt/nonexistent.npy", "--index", "s3://bkt/idx", *dask,
                            "--storage-options", so, "-v"),
                    run_cli("index", "--corpus", "s3://bkt/cut-idx3-ubyte.gz", "--index", "s3://bkt/idx", "--workers", 1,
                            "--storage-options", so, "-v"),  # fails inside a worker process
                ]
                info, failed_queries = info_and_queries.result()[:2], info_and_queries.result()[2:]
            ok += info
            failing += failed_queries
            stored = {path: fs.cat_file(path) for path in fs.find("bkt")}
            yield {"secrets": secrets, "ok": ok, "failing": failing, "stored": stored, "logs": records.lines}
    finally:
        root.removeHandler(records)


def test_s3_jobs_succeed_with_the_credentials(s3_run):
    for result in s3_run["ok"]:
        assert result.returncode == 0, result.stderr
    stored = s3_run["stored"]
    assert {"bkt/idx/manifest.json", "bkt/results.parquet", "bkt/report.html", "bkt/model/card.json"} <= set(stored)
    assert json.loads(stored["bkt/idx/manifest.json"])["version"] == 2
    assert "skipped 1 unreadable image(s)" in s3_run["ok"][2].stderr
    card = json.loads(stored["bkt/model/card.json"])
    assert "--storage-options '<redacted>'" in card["training"]["command"]


def test_s3_failures_are_one_line_each(s3_run):
    for result in s3_run["failing"]:
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert sum(line.startswith("patchhash: error: ") for line in result.stderr.splitlines()) == 1, result.stderr
    assert "s3://bkt/nonexistent.npy" in s3_run["failing"][0].stderr
    assert "s3://bkt/cut-idx3-ubyte.gz" in s3_run["failing"][1].stderr.splitlines()[-1]


def test_credentials_appear_in_no_output_file_log_or_message(s3_run):
    secrets = s3_run["secrets"].values()
    for result in s3_run["ok"] + s3_run["failing"]:
        for secret in secrets:
            assert secret not in result.stdout and secret not in result.stderr, (secret, result.args[:4])
    assert any(" DEBUG " in result.stderr for result in s3_run["ok"])  # debug logging was on
    for path, data in s3_run["stored"].items():
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} stored in {path}"
    assert any(line.startswith("storage.corpus WARNING s3://bkt/broken") for line in s3_run["logs"])  # the worker's own records
    for line in s3_run["logs"]:
        assert all(secret not in line for secret in secrets), line
    assert "bkt/idx/versions/v000002.json" in s3_run["stored"]


def test_in_process_errors_and_logs_hold_no_credentials(s3_run, caplog):
    """Errors raised, and everything logged at DEBUG, while reading with the credentials in this process."""
    from storage import ImageSpec

    with patchhash_debug_logging(), moto_s3() as base:  # moto's S3 state is per process: the same bucket
        options = {**base, **s3_run["secrets"]}
        assert read_manifest("s3://bkt/idx", options).version == 2
        assert len(open_corpus("s3://bkt/broken", options).read(ImageSpec(28, 28, 1)).errors) == 1
        messages = []
        for attempt in (
            lambda: open_corpus("s3://bkt/nonexistent.npy", options),
            lambda: open_corpus("s3://nobucket/folder", options),
            lambda: read_manifest("s3://bkt/no-index-here", options),
            lambda: read_labels("s3://bkt/labels.npy", options),
            lambda: read_card("s3://bkt/no-model-here", options),
            lambda: open_corpus("s3://bkt/cut-idx3-ubyte.gz", options).read(ImageSpec(28, 28, 1)),
        ):
            with pytest.raises(PatchhashError) as info:
                attempt()
            messages.append(str(info.value))
    assert "storage.corpus" in caplog.text  # the unreadable image was logged
    for secret in s3_run["secrets"].values():
        assert all(secret not in m for m in messages)
        assert secret not in caplog.text
