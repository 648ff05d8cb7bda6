"""Bad input, end to end through the CLI (issue 7).

Whole inputs that cannot be used (a corpus or query file with a bad header, shape or dtype, a
missing path, an index folder that is not a usable index, a broken model directory, an
out-of-range option) end the command with exit 1 and exactly one line on stderr,
``patchhash: error: ...``, naming the file at fault (and the line, where there are lines) and
saying what to do. Single unreadable images (truncated, empty, mislabelled, missing) do not:
the job goes on, the row is recorded (index: errors table and a warning naming it; query: an
error row in the results), and ``--strict`` turns them into a failure before anything is
committed. Whatever fails, a committed index keeps its version byte for byte and answers
queries as before.

Tasks run on one in-process Dask worker reached over TCP (``--scheduler``: conftest's
``tcp_scheduler``), so the model is loaded once; every CLI call is a real subprocess.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from corpus_helpers import encode, png_bytes, write_idx
from PIL import Image
from storage.layout import FORMAT_VERSION

CLI = [sys.executable, "-m", "workflows.cli"]
# No storage retries (they only slow failures down here) and no traceback on request.
ENV = {k: v for k, v in os.environ.items() if k != "PATCHHASH_TRACEBACK"} | {"PATCHHASH_STORAGE_ATTEMPTS": "1"}
ERROR = "patchhash: error: "
# What else a failing job may print on stderr before its error line: log records and progress bars.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING) run=[0-9a-f]+ \S+: |^\w+: +\d+%\|")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, env=ENV)


def error_line(result: subprocess.CompletedProcess, early: bool = True) -> str:
    """The one error line of a failed command (asserting the one-line contract)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR)]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if early:  # failed before any task ran: nothing but the error line
        assert lines == errors, result.stderr
    else:
        assert all(LOG_LINE.search(line) for line in lines[:-1]), result.stderr
    return errors[0]


# --------------------------------------------------------------------------- fixtures


def snapshot(root: str | Path) -> dict[str, bytes]:
    """Every file below ``root``: relative path -> bytes, except the run records (``runs/``),
    which every run adds, failed or not (checked by :func:`new_run_records`)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "runs"
    }


def run_records(root: str | Path) -> set[str]:
    return {p.name for p in Path(root, "runs").glob("*.json")}


def read_results(path: str | Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, make_index, tiny_model, fmnist_train, tcp_scheduler):
    """A committed index of 300 real images (3 shards, 3 partitions; this module's own copy: failed
    runs add their records to it) and its answers to 20 queries."""
    root = tmp_path_factory.mktemp("shared")
    queries = root / "queries.npy"
    np.save(queries, np.concatenate([fmnist_train[1000:1015, :, :, 0], fmnist_train[10:15, :, :, 0]]))
    corpus, built = make_index(fmnist_train[:300], shard_size=100, partitions=3)
    index = root / "index"
    shutil.copytree(built, index)
    answered = run_cli("query", "--index", index, "--queries", queries, "--out", root / "baseline.parquet", "--k", 5,
                       "--scheduler", tcp_scheduler)
    assert answered.returncode == 0, answered.stderr
    return SimpleNamespace(
        root=root, index=str(index), corpus=str(corpus), queries=str(queries), model=tiny_model,
        scheduler=tcp_scheduler, baseline=read_results(root / "baseline.parquet"),
    )


def answers(shared, index: str, out: Path) -> dict[str, list]:
    """The shared queries answered by ``index`` (same options as the baseline)."""
    result = run_cli("query", "--index", index, "--queries", shared.queries, "--out", out, "--k", 5,
                     "--scheduler", shared.scheduler)
    assert result.returncode == 0, result.stderr
    return read_results(out)


def committed_state(index: str) -> tuple[dict[str, bytes], np.ndarray]:
    return snapshot(index), zarr.open_array(f"{index}/codes", mode="r")[:]


def assert_committed_version_kept(index: str, before: tuple[dict[str, bytes], np.ndarray]) -> None:
    """The committed version is intact: manifest, versions, model and every object the manifest
    names are byte-identical, and its rows of the codes array (which an append may grow) too.
    Objects a failed attempt wrote for the next version are allowed beside them."""
    files, codes = before
    after = snapshot(index)
    manifest = json.loads(files["manifest.json"])
    named = [name for name in files if name == "manifest.json" or name.startswith(("versions/", "model/"))]
    named += [s[key] for s in manifest["shards"] for key in ("images", "errors") if s[key]]
    named += [name for name in files for p in manifest["partitions"] for d in (p, *p["deltas"]) for m in d["maps"].values()
              if name.startswith(m["path"] + "/")]
    for name in named:
        assert after.get(name) == files[name], f"{name} changed"
    now = zarr.open_array(f"{index}/codes", mode="r")
    np.testing.assert_array_equal(now[: manifest["n_images"]], codes[: manifest["n_images"]])


# --------------------------------------------------------------------------- bad whole inputs


@pytest.fixture(scope="module")
def bad(tmp_path_factory, fmnist_train, tiny_model) -> Path:
    """One folder of unusable corpora, query files and model directories."""
    d = tmp_path_factory.mktemp("bad")
    images = fmnist_train[:10, :, :, 0]
    write_idx(d / "random-magic-idx3-ubyte", images, magic=0x12345678)
    write_idx(d / "labels-idx3-ubyte", images[:, 0, 0], magic=0x00000801)
    (d / "short-header-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    write_idx(d / "raw", images)
    raw = (d / "raw").read_bytes()
    (d / "truncated-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    (d / "not-gzip-idx3-ubyte.gz").write_bytes(b"this is not gzip data" * 10)
    packed = gzip.compress(raw)
    (d / "cut-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "flat.npy", images.reshape(10, -1))
    np.save(d / "five-channels.npy", np.zeros((4, 28, 28, 5), np.uint8))
    np.save(d / "complex.npy", np.zeros((4, 28, 28), np.complex64))
    np.save(d / "no-images.npy", np.zeros((0, 28, 28), np.uint8))
    good_npy = (d / "flat.npy").read_bytes()
    (d / "bad-header.npy").write_bytes(good_npy[:10] + b"{'descr': nonsense" + good_npy[28:])
    np.save(d / "whole.npy", images)
    (d / "truncated.npy").write_bytes((d / "whole.npy").read_bytes()[:-100])
    zarr.create_array(str(d / "five-channels.zarr"), shape=(4, 28, 28, 5), dtype="uint8")
    (d / "empty-folder").mkdir()
    (d / "no-images").mkdir()
    (d / "no-images" / "notes.txt").write_text("no images here\n")
    (d / "latin1.txt").write_bytes("caf\xe9.png\n".encode("latin-1"))
    (d / "comments-only.txt").write_text("# nothing listed\n\n")
    pq.write_table(pa.table({"path": ["a.png"]}), d / "no-uri-column.parquet")
    (d / "garbage.parquet").write_bytes(b"not parquet at all")
    (d / "huge-field.csv").write_text("uri\nok.png\n\"" + "x" * 200_000 + "\"\n")
    # model directories: copies of the tiny model, each broken in one way
    for name in ("no-card", "card-not-json", "card-wrong-type", "card-sha-mismatch", "no-weights", "card-geometry"):
        shutil.copytree(tiny_model, d / f"model-{name}")
    os.remove(d / "model-no-card" / "card.json")
    (d / "model-card-not-json" / "card.json").write_text("{not json")
    os.remove(d / "model-no-weights" / "model.keras")
    card = json.loads((d / "model-card-wrong-type" / "card.json").read_text())
    (d / "model-card-wrong-type" / "card.json").write_text(json.dumps({**card, "bits": "sixteen"}))
    (d / "model-card-sha-mismatch" / "card.json").write_text(json.dumps({**card, "model_sha256": "0" * 64}))
    # a card edited consistently (schema and hash pass) but not matching the network: 32 bits, not 16
    edited = {**card, "bits": 32, "architecture": {**card["architecture"], "bits": 32}}
    (d / "model-card-geometry" / "card.json").write_text(json.dumps(edited))
    return d


@dataclass(frozen=True)
class Case:
    """One unusable input. ``command(ctx)`` gives the CLI arguments; the error line must match
    ``names`` (the file or option at fault) and ``fix`` (what to do). ``early``: it fails before
    any task runs (stderr is that one line). ``shared``: it runs against the shared committed
    index, which must come out byte-identical."""

    command: Callable[[SimpleNamespace], list]
    names: Callable[[SimpleNamespace], str]
    fix: str
    early: bool = True
    shared: bool = False


def new_index(corpus: str, model: str | None = None) -> Callable[[SimpleNamespace], list]:
    def command(c):
        path = corpus if os.path.isabs(corpus) else str(c.bad / corpus)
        return ["index", "--corpus", path, "--index", c.tmp / "new", "--model", c.bad / model if model else c.shared.model,
                "--shard-size", 100, "--scheduler", c.shared.scheduler]
    return command


def append(corpus: str, *extra: str) -> Callable[[SimpleNamespace], list]:
    return lambda c: ["index", "--corpus", c.bad / corpus, "--index", c.shared.index, "--scheduler", c.shared.scheduler, *extra]


def query(queries: str | None = None, *extra, index: Callable[[SimpleNamespace], str] | None = None):
    def command(c):
        return ["query", "--index", index(c) if index else c.shared.index,
                "--queries", c.bad / queries if queries else c.shared.queries,
                "--out", c.tmp / "results.parquet", "--scheduler", c.shared.scheduler, *extra]
    return command


def in_bad(name: str) -> Callable[[SimpleNamespace], str]:
    return lambda c: re.escape(str(c.bad / name))


def literal(text: str) -> Callable[[SimpleNamespace], str]:
    return lambda c: re.escape(text)


def broken_index(mutate: Callable[[Path], None]) -> Callable[[SimpleNamespace], str]:
    """A copy of the shared index, broken by ``mutate``; returns its URL."""
    def make(c):
        copy = c.tmp / "broken-index"
        if not copy.exists():
            shutil.copytree(c.shared.index, copy)
            mutate(copy)
        return str(copy)
    return make


def edit_manifest(change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / "manifest.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return mutate


def replace_model(root: Path) -> None:
    shutil.rmtree(root / "model")
    shutil.copytree(Path(__file__).parent.parent / "pipeline" / "models" / "fashion-mnist", root / "model")


def stage_only(root: Path) -> None:
    """What an interrupted first run leaves: data and staging, no committed version."""
    os.remove(root / "manifest.json")
    shutil.rmtree(root / "versions")
    (root / "_staging" / "v000001" / "done").mkdir(parents=True)


DAMAGED = r"write or download it again"
INDEX_AT = lambda c: re.escape(str(c.tmp / "broken-index"))  # noqa: E731

CASES: dict[str, Case] = {
    # --- corpora (a new index) ---------------------------------------------------------
    "idx-random-magic": Case(new_index("random-magic-idx3-ubyte"), in_bad("random-magic-idx3-ubyte"),
                             r"magic number 0x12345678, expected magic number 0x00000803.*check that this is the right file"),
    "idx-labels-file-as-corpus": Case(new_index("labels-idx3-ubyte"), in_bad("labels-idx3-ubyte"), r"pass it as --labels"),
    "idx-truncated-header": Case(new_index("short-header-idx3-ubyte"), in_bad("short-header-idx3-ubyte"),
                                 r"truncated IDX header.*" + DAMAGED),
    "idx-truncated-data": Case(new_index("truncated-idx3-ubyte"), in_bad("truncated-idx3-ubyte"),
                               r"is truncated: 3928 bytes, but its header announces shape \(10, 28, 28\).*" + DAMAGED),
    "idx-gz-not-gzip": Case(new_index("not-gzip-idx3-ubyte.gz"), in_bad("not-gzip-idx3-ubyte.gz"),
                            r"not a complete gzip file: download it again, or drop the \.gz suffix"),
    "idx-gz-cut-short": Case(new_index("cut-idx3-ubyte.gz"), in_bad("cut-idx3-ubyte.gz"), DAMAGED, early=False),
    "npy-empty-file": Case(new_index("empty.npy"), in_bad("empty.npy"), r"not a valid \.npy file.*write it with numpy\.save"),
    "npy-bad-header": Case(new_index("bad-header.npy"), in_bad("bad-header.npy"), r"not a valid \.npy file.*numpy\.save"),
    "npy-truncated": Case(new_index("truncated.npy"), in_bad("truncated.npy"), r"is truncated: .*" + DAMAGED),
    "npy-wrong-shape": Case(new_index("flat.npy"), in_bad("flat.npy"),
                            r"shape \(10, 784\) cannot be read as images; expected \[n, h, w\]"),
    "npy-five-channels": Case(new_index("five-channels.npy"), in_bad("five-channels.npy"), r"expected \[n, h, w\].*c = 1"),
    "npy-complex-dtype": Case(new_index("complex.npy"), in_bad("complex.npy"), r"dtype complex64 .*expected a numeric dtype"),
    "npy-no-images": Case(new_index("no-images.npy"), in_bad("no-images.npy"), r"holds no pixels; pass an array of at least one image"),
    "zarr-five-channels": Case(new_index("five-channels.zarr"), in_bad("five-channels.zarr"), r"expected \[n, h, w\]"),
    "folder-empty": Case(new_index("empty-folder"), in_bad("empty-folder"), r"no images found .*expected a folder or glob of images"),
    "folder-without-images": Case(new_index("no-images"), in_bad("no-images"), r"searched recursively.*expected a folder"),
    "path-does-not-exist": Case(new_index("nowhere/at/all"), in_bad("nowhere/at/all"), r"nothing exists at that path \(check it"),
    "npy-does-not-exist": Case(new_index("missing.npy"), in_bad("missing.npy"), r"not found.*check the path"),
    "list-not-utf8": Case(new_index("latin1.txt"), in_bad("latin1.txt"), r"not a UTF-8 text file.*save it as UTF-8"),
    "list-empty": Case(new_index("comments-only.txt"), in_bad("comments-only.txt"), r"lists no uris; write one image URL"),
    "list-parquet-without-uri-column": Case(new_index("no-uri-column.parquet"), in_bad("no-uri-column.parquet"),
                                            r"no 'uri' column \(columns: path\); store the image URLs in a string column named 'uri'"),
    "list-parquet-garbage": Case(new_index("garbage.parquet"), in_bad("garbage.parquet"), r"not a Parquet file.*" + DAMAGED),
    "list-csv-malformed-line": Case(new_index("huge-field.csv"), lambda c: re.escape(f"{c.bad / 'huge-field.csv'}, line 3"),
                                    r"not valid CSV \(field larger than field limit.*fix that line"),
    # --- model directories (a new index) -----------------------------------------------
    "model-without-card": Case(new_index("whole.npy", "model-no-card"), in_bad("model-no-card"),
                               r"not a patchhash model directory\. Pass a directory made by `patchhash train`"),
    "model-card-not-json": Case(new_index("whole.npy", "model-card-not-json"), in_bad("model-card-not-json/card.json"),
                                r"not valid JSON.*Re-create the model with `patchhash train`"),
    "model-card-wrong-type": Case(new_index("whole.npy", "model-card-wrong-type"), in_bad("model-card-wrong-type/card.json"),
                                  r"bits must be an integer, got 'sixteen'\. Re-create the model"),
    "model-card-tampered-hash": Case(new_index("whole.npy", "model-card-sha-mismatch"), in_bad("model-card-sha-mismatch"),
                                     r"model\.keras does not match card\.json.*Re-create the model with `patchhash train`"),
    "model-weights-missing": Case(new_index("whole.npy", "model-no-weights"), in_bad("model-no-weights"),
                                  r"model\.keras is missing; re-create the model with `patchhash train`"),
    "model-card-edited-geometry": Case(new_index("whole.npy", "model-card-geometry"),
                                       lambda c: re.escape(f"{c.tmp / 'new' / 'model'}: model.keras"),
                                       r"gives codes \(7, 7, 16\), but its card says .*\(7, 7, 32\).*Re-create the model", early=False),
    # --- options --------------------------------------------------------------------------
    "option-bits-too-small": Case(lambda c: ["train", "--corpus", c.shared.corpus, "--out", c.tmp / "m", "--bits", 3],
                                  literal("bits"), r"must be between 8 and 64, got 3"),
    "option-bits-too-large": Case(lambda c: ["train", "--corpus", c.shared.corpus, "--out", c.tmp / "m", "--bits", 65],
                                  literal("bits"), r"must be between 8 and 64, got 65"),
    "option-shard-size-zero": Case(lambda c: [*new_index(c.shared.corpus)(c), "--shard-size", 0], literal("--shard-size"),
                                   r"must be between 1 and 10000000, got 0"),
    "option-partitions-zero": Case(lambda c: [*new_index(c.shared.corpus)(c), "--partitions", 0], literal("--partitions"), r"must be >= 1"),
    "option-workers-zero": Case(lambda c: ["index", "--corpus", c.shared.corpus, "--index", c.tmp / "new", "--workers", 0],
                                literal("--workers"), r"must be >= 1, got 0"),
    "option-k-zero": Case(query(None, "--k", 0), literal("--k"), r"must be between 1 and 10000, got 0", shared=True),
    "option-k-too-large": Case(query(None, "--k", 10001), literal("--k"), r"must be between 1 and 10000, got 10001", shared=True),
    "option-threshold-negative": Case(query(None, "--threshold", -1), literal("--threshold"), r"must be >= 0, got -1", shared=True),
    "option-threshold-above-bits": Case(query(None, "--threshold", 17), literal("--threshold"),
                                        r"between 0 and the code length 16, got 17", shared=True),
    "option-mode-unknown": Case(query(None, "--mode", "fast"), literal("--mode"), r"must be one of default, seed", shared=True),
    "option-block-size-zero": Case(query(None, "--block-size", 0), literal("--block-size"), r"must be >= 1", shared=True),
    "option-shift-radius-negative": Case(query(None, "--shift-radius", -1), literal("--shift-radius"), r"must be >= 0", shared=True),
    "option-shift-step-not-dividing": Case(query(None, "--shift-radius", 1, "--shift-step", 0.3), literal("--shift-step"),
                                           r"radius must be a multiple of step", shared=True),
    "option-max-bucket-zero": Case(query(None, "--max-bucket", 0), literal("--max-bucket"), r"must be >= 1", shared=True),
    "option-vote-budget-negative": Case(query(None, "--vote-budget", -1), literal("--vote-budget"), r"must be >= 0", shared=True),
    "option-bucket-fraction-zero": Case(query(None, "--max-bucket-fraction", 0), literal("--max-bucket-fraction"),
                                        r"must be in \(0, 1\]", shared=True),
    "option-format-unknown": Case(query(None, "--format", "xml"), literal("--format"), r"must be one of parquet, csv, jsonl",
                                   early=False, shared=True),  # checked once the results file is opened
    "option-report-limit-zero": Case(query(None, "--report", "r.html", "--report-limit", 0), literal("--report-limit"),
                                     r"must be >= 1", shared=True),
    "option-storage-options-not-json": Case(query(None, "--storage-options", "{anon: true"), literal("--storage-options"),
                                            r"is not valid JSON.*pass e\.g\.", shared=True),
    "option-storage-options-not-object": Case(query(None, "--storage-options", "[1]"), literal("--storage-options"),
                                              r"must be a JSON object", shared=True),
    # --- query files against the shared index ------------------------------------------
    "query-idx-bad-magic": Case(query("random-magic-idx3-ubyte"), in_bad("random-magic-idx3-ubyte"), r"check that this is the right file",
                                shared=True),
    "query-npy-bad-header": Case(query("bad-header.npy"), in_bad("bad-header.npy"), r"numpy\.save", shared=True),
    "query-parquet-without-uri-column": Case(query("no-uri-column.parquet"), in_bad("no-uri-column.parquet"),
                                             r"store the image URLs in a string column named 'uri'", shared=True),
    "query-list-not-utf8": Case(query("latin1.txt"), in_bad("latin1.txt"), r"save it as UTF-8", shared=True),
    "query-csv-malformed-line": Case(query("huge-field.csv"), lambda c: re.escape(f"{c.bad / 'huge-field.csv'}, line 3"),
                                     r"fix that line", shared=True),
    # --- appending to the shared index ---------------------------------------------------
    "append-corrupt-idx": Case(append("random-magic-idx3-ubyte"), in_bad("random-magic-idx3-ubyte"), r"check that this is the right file",
                               shared=True),
    "append-truncated-npy": Case(append("truncated.npy"), in_bad("truncated.npy"), DAMAGED, shared=True),
    "append-with-another-model": Case(lambda c: [*append("whole.npy")(c), "--model", "fashion-mnist"],
                                      lambda c: re.escape(c.shared.index) + r" was built with model 'tiny'",
                                      r"Index into a new --index URL, or omit --model", shared=True),
    # --- index folders that are not (usable) indexes --------------------------------------
    "index-folder-not-an-index": Case(query(index=lambda c: str(c.bad / "no-images")), in_bad("no-images"),
                                      r"no committed patchhash index here.*Build one with `patchhash index"),
    "index-does-not-exist": Case(query(index=lambda c: str(c.bad / "no-index-here")), in_bad("no-index-here"), r"Build one with"),
    "index-newer-format": Case(query(index=broken_index(edit_manifest(lambda m: {**m, "format_version": FORMAT_VERSION + 1}))),
                               lambda c: INDEX_AT(c) + "/manifest.json", rf"index format version {FORMAT_VERSION + 1} is newer.*upgrade patchhash"),
    "index-half-written": Case(query(index=broken_index(stage_only)), INDEX_AT,
                               r"interrupted before its first commit\. Rerun the same `patchhash index"),
    "index-manifest-not-json": Case(query(index=broken_index(lambda r: (r / "manifest.json").write_text("{"))),
                                    lambda c: INDEX_AT(c) + "/manifest.json", r"not valid JSON.*restore it from versions/"),
    "index-manifest-bad-field": Case(query(index=broken_index(edit_manifest(lambda m: {**m, "bits": 99}))),
                                     lambda c: INDEX_AT(c) + "/manifest.json", r"bits must be an integer in \[8, 64\].*restore it"),
    "index-manifest-path-escapes": Case(
        query(index=broken_index(edit_manifest(lambda m: {**m, "shards": [{**m["shards"][0], "images": "../../etc/passwd"}, *m["shards"][1:]]}))),
        lambda c: INDEX_AT(c) + "/manifest.json", r"'\.\./\.\./etc/passwd' is not a plain relative path.*restore it"),
    "index-partial-copy": Case(query(index=broken_index(lambda r: shutil.rmtree(r / "buckets" / "pos"))),
                               lambda c: INDEX_AT(c) + "/manifest.json names buckets/pos/", r"Copy the whole index folder again"),
    "index-model-replaced": Case(query(index=broken_index(replace_model)), lambda c: INDEX_AT(c) + "/model/card.json",
                                 r"is not the model this index was built with.*Put the original model back"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_unusable_input_fails_with_one_clear_line(case, bad, shared, tmp_path):
    ctx = SimpleNamespace(bad=bad, shared=shared, tmp=tmp_path)
    args = case.command(ctx)
    before, records = snapshot(shared.index), run_records(shared.index)
    line = error_line(run_cli(*args), early=case.early)
    assert re.search(case.names(ctx), line), line
    assert re.search(case.fix, line), line
    assert snapshot(shared.index) == before  # nothing already committed changed...
    for name in run_records(shared.index) - records:  # ...but a record of the failed run
        assert json.loads(Path(shared.index, "runs", name).read_text())["status"] == "failed"
    if case.shared:  # and the index it ran against still reads as version 1
        from storage.manifest import read_manifest

        assert read_manifest(shared.index).version == 1
    assert not (tmp_path / "new" / "manifest.json").exists()  # nor was anything committed


# --------------------------------------------------------------------------- bad single images


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, fmnist_train) -> tuple[Path, dict[str, str]]:
    """Six real images and four bad files; returns the folder and bad file -> expected reason."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(6):
        Image.fromarray(fmnist_train[i, :, :, 0]).save(folder / f"{i}.png")
    noisy = png_bytes(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (folder / "2.png").write_bytes(noisy[: len(noisy) // 2])  # replaces a good one
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"just some text, not an image\n")
    (folder / "4.png").write_bytes(encode(Image.fromarray(fmnist_train[4, :, :, 0]), "JPEG"))  # mislabelled, readable
    (folder / "5.bmp").write_bytes(encode(Image.fromarray(fmnist_train[5, :, :, 0]), "PNG"))  # mislabelled, readable
    os.remove(folder / "5.png")
    reasons = {"2.png": "truncated image", "empty.jpg": "empty file", "text.png": "cannot identify image file"}
    return folder, reasons


def _errors_table(index: Path) -> dict[str, str]:
    manifest = json.loads((index / "manifest.json").read_text())
    out = {}
    for shard in manifest["shards"]:
        if shard["errors"]:
            table = read_results(index / shard["errors"])
            out.update((os.path.basename(u), r) for u, r in zip(table["uri"], table["reason"]))
    return out


def test_unreadable_images_are_recorded_named_and_skipped(image_folder, shared, tmp_path):
    folder, reasons = image_folder
    index = tmp_path / "index"
    result = run_cli("index", "--corpus", folder, "--index", index, "--model", shared.model, "--shard-size", 100,
                     "--scheduler", shared.scheduler)
    assert result.returncode == 0, result.stderr
    for name, reason in reasons.items():
        assert re.search(rf"WARNING .*unreadable image {re.escape(str(folder / name))}: {reason}", result.stderr), result.stderr
    assert "skipped 3 unreadable image(s)" in result.stderr
    assert _errors_table(index) == reasons
    manifest = json.loads((index / "manifest.json").read_text())
    assert sum(s["n_ok"] for s in manifest["shards"]) == 5  # the mislabelled files (JPEG named .png, PNG named .bmp) were read


def test_strict_fails_before_commit_naming_the_count(image_folder, shared, tmp_path):
    folder, _ = image_folder
    index = tmp_path / "index"
    result = run_cli("index", "--corpus", folder, "--index", index, "--model", shared.model, "--shard-size", 100,
                     "--strict", "--scheduler", shared.scheduler)
    line = error_line(result, early=False)
    assert re.search(rf"3 unreadable image\(s\) in {re.escape(str(folder))} and --strict is set; nothing was committed", line)
    assert "the warnings above name them" in line and f"unreadable image {folder / 'text.png'}" in result.stderr
    assert not (index / "manifest.json").exists()


def test_missing_and_out_of_range_uris_in_a_list_are_recorded(shared, fmnist_train, tmp_path):
    Image.fromarray(fmnist_train[0, :, :, 0]).save(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.png\nnot-there.png\n{shared.corpus}#3\n{shared.corpus}#999\n{tmp_path}/nope/x.npy#0\n")
    index = tmp_path / "index"
    result = run_cli("index", "--corpus", listing, "--index", index, "--model", shared.model, "--scheduler", shared.scheduler)
    assert result.returncode == 0, result.stderr
    assert f"unreadable image {tmp_path / 'not-there.png'}: file not found" in result.stderr
    errors = _errors_table(index)
    assert errors["not-there.png"] == "file not found"
    assert errors["corpus.npy#999"] == "row 999 out of range (the array has 300 rows)"
    assert errors["x.npy#0"].startswith("cannot read array (.npy file not found")
    assert len(errors) == 3


def test_bad_query_rows_get_error_rows_naming_them(shared, fmnist_train, tmp_path):
    Image.fromarray(fmnist_train[20, :, :, 0]).save(tmp_path / "good.png")
    noisy = png_bytes(np.random.default_rng(1).integers(0, 256, (30, 30), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(noisy[: len(noisy) // 2])
    listing = tmp_path / "queries.csv"
    listing.write_text(f"uri,label\ngood.png,1\nmissing.png,2\ncut.png,3\n,4\n{shared.corpus}#7,5\n{shared.corpus}#300,6\n")
    before = snapshot(shared.index)
    out = tmp_path / "r.parquet"
    result = run_cli("query", "--index", shared.index, "--queries", listing, "--out", out, "--k", 3, "--scheduler", shared.scheduler)
    assert result.returncode == 0, result.stderr
    assert "4 query row(s) could not be read; they have an error row in" in result.stderr
    assert re.search(rf"WARNING .*query 1 \({re.escape(str(tmp_path / 'missing.png'))}\) could not be read: file not found", result.stderr)
    table = read_results(out)
    failed = {q: (u, e) for q, u, e in zip(table["query_id"], table["query_uri"], table["error"]) if e is not None}
    assert failed == {
        1: (str(tmp_path / "missing.png"), "file not found"),
        2: (str(tmp_path / "cut.png"), "truncated image"),
        3: ("", "empty uri"),
        5: (f"{shared.corpus}#300", "row 300 out of range (the array has 300 rows)"),
    }
    hits = [(q, r, i) for q, r, i, e in zip(table["query_id"], table["rank"], table["image_id"], table["error"]) if e is None]
    assert {q for q, _, _ in hits} == {0, 4} and (4, 1, 7) in hits  # an indexed image finds itself first
    strict = run_cli("query", "--index", shared.index, "--queries", listing, "--out", tmp_path / "s.parquet", "--k", 3,
                     "--strict", "--scheduler", shared.scheduler)
    line = error_line(strict, early=False)
    assert re.search(rf"{re.escape(str(listing))}: 4 query row\(s\) could not be read and --strict is set", line)
    assert read_results(tmp_path / "s.parquet") == table  # the results, error rows included, are still written
    assert snapshot(shared.index) == before


# --------------------------------------------------------------------------- nothing committed is lost


def test_failed_append_keeps_the_committed_version_queryable(shared, image_folder, tmp_path):
    """--strict append of unreadable images, then an append that fails inside a task: the
    committed version stays intact and answers as before, also while a later version is
    half-written beside it; a clean append then commits on top of it."""
    folder, _ = image_folder
    index = tmp_path / "index"
    shutil.copytree(shared.index, index)
    before = committed_state(str(index))
    strict = run_cli("index", "--corpus", folder, "--index", index, "--strict", "--scheduler", shared.scheduler)
    assert "--strict is set; nothing was committed" in error_line(strict, early=False)
    assert (index / "_staging" / "v000002").is_dir()  # version 2 is half-written
    assert_committed_version_kept(str(index), before)
    assert answers(shared, str(index), tmp_path / "a.parquet") == shared.baseline

    cut = tmp_path / "cut-idx3-ubyte.gz"
    write_idx(tmp_path / "raw", np.zeros((50, 28, 28), np.uint8))
    packed = gzip.compress((tmp_path / "raw").read_bytes())
    cut.write_bytes(packed[: len(packed) // 2])
    failed = run_cli("index", "--corpus", cut, "--index", index, "--scheduler", shared.scheduler)
    assert re.search(rf"{re.escape(str(cut))}.*{DAMAGED}", error_line(failed, early=False))
    assert_committed_version_kept(str(index), before)
    assert answers(shared, str(index), tmp_path / "b.parquet") == shared.baseline

    appended = run_cli("index", "--corpus", folder, "--index", index, "--scheduler", shared.scheduler)
    assert appended.returncode == 0, appended.stderr
    manifest = json.loads((index / "manifest.json").read_text())
    assert (manifest["version"], manifest["n_images"]) == (2, 308)
    assert _errors_table(index) == image_folder[1]
    assert (index / "versions" / "v000001.json").read_bytes() == before[0]["versions/v000001.json"]


def test_shared_index_is_unchanged_and_answers_as_before(shared, tmp_path):
    """Runs last: after every failing command above, the shared index still answers the same."""
    assert answers(shared, shared.index, tmp_path / "r.parquet") == shared.baseline
    assert json.loads(Path(shared.index, "manifest.json").read_text())["version"] == 1
