"""Every shipped job spec (``workflows/jobs/*.yaml``) runs after the documented install.

Each spec is run by ``patchhash <command> --config`` from a temporary copy in which only its
data locations are changed: ``s3://example-bucket/...`` URLs point at a bucket of a local S3
server (moto) holding a few Fashion-MNIST images, the TLS scheduler at a local one; every other
key is kept as shipped (workers, memory limits, gc, wait-for-lock, relative output paths, TLS
file names...). Credentials and the endpoint come from the environment, as in a deployment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...). Without s3fs, each spec on ``s3://`` fails
with one ``patchhash: error:`` line naming the ``s3`` extra.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from corpus_helpers import moto_s3, png_bytes
from dask_cli import dask_cli_cluster
from test_tls import pki  # noqa: F401 - the fixture: a CA and a node certificate for TLS

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "workflows" / "jobs"
CLI = [sys.executable, "-m", "workflows.cli"]
N_NIGHTLY, N_CLUSTER, N_QUERIES = 110, 10, 6

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


def _rewrites(bucket: str, scheduler: str) -> dict[str, dict[str, str]]:
    """The keys changed in each shipped spec: where its data is; nothing else."""
    return {
        "nightly-index.yaml": {"corpus": f"{bucket}/incoming/", "index": f"{bucket}/patchhash-index"},
        "cluster-index.yaml": {"corpus": f"{bucket}/more/", "index": f"{bucket}/patchhash-index", "scheduler": scheduler},
        "batch-query.yaml": {"index": f"{bucket}/patchhash-index", "queries": f"{bucket}/queries/"},
        "evaluate.yaml": {"index": f"{bucket}/patchhash-index", "queries": f"{bucket}/queries.npy",
                          "labels": f"{bucket}/labels.csv", "query-labels": f"{bucket}/query-labels.npy"},
    }


ORDER = ["nightly-index.yaml", "cluster-index.yaml", "batch-query.yaml", "evaluate.yaml"]  # build, sync, query, evaluate


def test_every_shipped_job_spec_is_run_here():
    assert sorted(p.name for p in JOBS.glob("*.yaml")) == sorted(ORDER) == sorted(_rewrites("s3://b", "tls://x:1"))


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server, and the environment that reaches it (credentials and endpoint)."""
    with moto_s3() as options:
        yield options, {
            "AWS_ACCESS_KEY_ID": options["key"], "AWS_SECRET_ACCESS_KEY": options["secret"],
            "AWS_ENDPOINT_URL": options["client_kwargs"]["endpoint_url"],
            "AWS_DEFAULT_REGION": options["client_kwargs"]["region_name"],
        }


def _spec(name: str, folder: Path, changes: dict[str, str]) -> Path:
    shipped = yaml.safe_load((JOBS / name).read_text())
    assert set(changes) <= set(shipped), f"{name}: rewrites keys it does not have"
    copy = {key: changes.get(key, value) for key, value in shipped.items()}
    path = folder / name
    path.write_text(yaml.safe_dump(copy, sort_keys=False))
    return path


def _run(spec: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    command = yaml.safe_load(spec.read_text())["command"]
    return subprocess.run([*CLI, command, "--config", str(spec), *extra], capture_output=True, text=True, timeout=600,
                          cwd=str(spec.parent), env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _fill(fs, bucket: str, images: np.ndarray) -> list[str]:
    """The bucket's data: two folders of PNGs (the nightly corpus, the cluster job's), queries, labels."""
    uris = []
    for i in range(N_NIGHTLY + N_CLUSTER):
        folder = "incoming" if i < N_NIGHTLY else "more"
        uri = f"{bucket}/{folder}/img-{i:04d}.png"
        fs.pipe_file(uri[5:], png_bytes(images[i]))
        uris.append(uri)
    queries = images[N_NIGHTLY + N_CLUSTER:N_NIGHTLY + N_CLUSTER + N_QUERIES]
    for i, query in enumerate(queries):
        fs.pipe_file(f"{bucket[5:]}/queries/q-{i}.png", png_bytes(query))
    out = io.BytesIO()
    np.save(out, queries)
    fs.pipe_file(f"{bucket[5:]}/queries.npy", out.getvalue())
    labels = np.arange(len(images)) % 10  # any labels do: the job must run, not score well
    out = io.BytesIO()
    np.save(out, labels[N_NIGHTLY + N_CLUSTER:N_NIGHTLY + N_CLUSTER + N_QUERIES])
    fs.pipe_file(f"{bucket[5:]}/query-labels.npy", out.getvalue())
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["uri", "label"])
    writer.writerows(zip(uris, labels.tolist()))
    fs.pipe_file(f"{bucket[5:]}/labels.csv", text.getvalue().encode())
    return uris


def test_shipped_job_specs_run_against_s3(s3_env, pki, fmnist_train, tmp_path):  # noqa: F811
    options, env = s3_env
    fs = fsspec.filesystem("s3", **options)
    name = f"jobs-{uuid.uuid4().hex[:12]}"  # moto's state is per process, shared by every server
    fs.mkdir(name)
    bucket = f"s3://{name}"
    _fill(fs, bucket, fmnist_train[: N_NIGHTLY + N_CLUSTER + N_QUERIES, :, :, 0])
    jobs = tmp_path / "jobs"
    (jobs / "certs").mkdir(parents=True)
    for src, dst in ((pki.ca, "ca.pem"), (pki.cert, "client.pem"), (pki.key, "client.key")):  # the spec's file names
        shutil.copy(src, jobs / "certs" / dst)
    tls = ("--tls-ca-file", pki.ca, "--tls-cert", pki.cert, "--tls-key", pki.key)
    work = tmp_path / "tls-cluster"
    work.mkdir()
    with dask_cli_cluster(work, 1, "tls", tls, worker_env=env) as scheduler:
        rewrites = _rewrites(bucket, scheduler)
        results = {}
        for spec_name in ORDER:
            started = time.monotonic()
            result = _run(_spec(spec_name, jobs, rewrites[spec_name]), env)
            log.info("%s: %.1f s", spec_name, time.monotonic() - started)
            assert result.returncode == 0, (spec_name, result.stderr[-3000:])
            results[spec_name] = result

    assert f"indexed {N_NIGHTLY} new images" in results["nightly-index.yaml"].stdout
    assert f"indexed {N_CLUSTER} new images" in results["cluster-index.yaml"].stdout
    table = pq.read_table(jobs / "results" / "batch.parquet")  # relative to the spec's folder, as shipped
    assert set(table.column("query_id").to_pylist()) == set(range(N_QUERIES)) and table.num_rows <= N_QUERIES * 10
    assert set(table.column("error").to_pylist()) == {None}
    assert (jobs / "results" / "batch.html").stat().st_size > 0
    quality = json.loads((jobs / "evaluation.json").read_text())
    assert quality, quality


@pytest.mark.parametrize("spec_name", [n for n in ORDER if "s3://" in (JOBS / n).read_text()])
def test_shipped_s3_job_spec_without_s3fs_names_the_extra(spec_name, tmp_path, pki):  # noqa: F811
    """s3fs missing (as after `pip install patchhash` without the extra): one line naming it."""
    shutil.copy(JOBS / spec_name, tmp_path / spec_name)
    (tmp_path / "certs").mkdir()
    for src, dst in ((pki.ca, "ca.pem"), (pki.cert, "client.pem"), (pki.key, "client.key")):  # cluster-index's TLS files
        shutil.copy(src, tmp_path / "certs" / dst)
    blocked = ("import sys; sys.modules['s3fs'] = None; sys.argv = ['patchhash', *sys.argv[1:]]; "
               "from workflows.cli import main; main()")
    command = yaml.safe_load((JOBS / spec_name).read_text())["command"]
    result = subprocess.run([sys.executable, "-c", blocked, command, "--config", str(tmp_path / spec_name)],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("patchhash: error:")]
    assert len(errors) == 1, result.stderr
    assert "s3:// URLs need s3fs, which is not installed: pip install 'patchhash[s3]'" in errors[0]
    assert "Traceback" not in result.stderr and "ImportError" not in result.stderr


def test_missing_protocol_package_in_process(monkeypatch):
    """``storage.fs.url_to_fs`` turns fsspec's ImportError into a MissingExtraError naming the extra."""
    from storage.errors import MissingExtraError, PatchhashError
    from storage.fs import url_to_fs


    def no_package(protocol):
        raise ImportError(f"Install the package for {protocol}")

    monkeypatch.setattr("storage.fs._url_to_fs", lambda url, **kw: no_package(url.split("://")[0]))
    with pytest.raises(MissingExtraError, match=r"pip install 'patchhash\[s3\]'") as error:
        url_to_fs("s3://bucket/index")
    assert isinstance(error.value, PatchhashError) and isinstance(error.value, ImportError)
    with pytest.raises(MissingExtraError, match=r"gcs:// URLs need a package that is not installed \(Install the package"):
        url_to_fs("gcs://bucket/index")
