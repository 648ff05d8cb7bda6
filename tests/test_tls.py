"""Dask cluster TLS with mutual authentication: a real TLS scheduler and workers, and refusals.

The certificates are made here with ``cryptography``: a cluster CA signing one certificate
for 127.0.0.1/localhost that the scheduler, the workers and the client all present, and an
unrelated "rogue" CA with a certificate of its own for the negative cases.
"""

from __future__ import annotations

import datetime
import gc
import ipaddress
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from dask_cli import ENV, dask_cli_cluster

from storage import ConfigError
from workflows.cluster import ClusterSettings, dask_client

CLI = [sys.executable, "-m", "workflows.cli"]


@dataclass(frozen=True)
class Pki:
    ca: str
    cert: str
    key: str
    rogue_ca: str
    rogue_cert: str
    rogue_key: str


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())  # EC: much faster to make than RSA


def _write_key(key, path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def _write_cert(cert, path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _authority(directory: Path, name: str) -> tuple[str, str, str]:
    """A CA and one node certificate it signs: (ca.pem, node.pem, node.key) paths."""
    ca_key, node_key = _key(), _key()
    ca = _certificate(f"{name} CA", ca_key, f"{name} CA", ca_key, ca=True)
    node = _certificate(f"{name} node", node_key, f"{name} CA", ca_key, ca=False)
    return (_write_cert(ca, directory / f"{name}-ca.pem"), _write_cert(node, directory / f"{name}-node.pem"),
            _write_key(node_key, directory / f"{name}-node.key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    return Pki(*_authority(directory, "cluster"), *_authority(directory, "rogue"))


def _tls_args(pki: Pki) -> list[str]:
    return ["--tls-ca-file", pki.ca, "--tls-cert", pki.cert, "--tls-key", pki.key]


@pytest.fixture(scope="module")
def tls_scheduler(pki, tmp_path_factory) -> str:
    """A ``dask scheduler`` on tls://127.0.0.1 and one ``dask worker`` command with 2 worker processes."""
    work = tmp_path_factory.mktemp("tls-cluster")
    with dask_cli_cluster(work, 2, "tls", tuple(_tls_args(pki))) as address:
        with dask_client(ClusterSettings(scheduler=address, tls_ca=pki.ca, tls_cert=pki.cert, tls_key=pki.key)) as client:
            client.wait_for_workers(2, timeout=90)
            assert all(w.startswith("tls://") for w in client.scheduler_info(n_workers=-1)["workers"])
        yield address


def _server_verdict(address: str, ca: str, cert: str | None = None, key: str | None = None) -> str:
    """What the scheduler does with a raw TLS connection presenting ``cert`` (or none).

    'accepted' (it talks Dask), 'closed', or the reason of the TLS alert it sent. With
    TLS 1.3 the server checks the client's certificate after the client's side of the
    handshake is done, so its verdict arrives on the first read.
    """
    from distributed.comm import parse_host_port

    host, port = parse_host_port(address.removeprefix("tls://"))
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    if cert:
        context.load_cert_chain(cert, key)
    try:
        with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw) as conn:
            conn.settimeout(1.5)
            try:
                return "closed" if conn.recv(1) == b"" else "accepted"  # data: Dask's own handshake
            except TimeoutError:
                return "accepted"
    except ssl.SSLError as exc:
        return exc.reason or str(exc)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=ENV)


def test_index_and_query_through_tls_scheduler_match_a_local_run(tls_scheduler, pki, tiny_model, fmnist_train, client, make_index,
                                                                  tmp_path):
    from workflows.query import QuerySettings, query

    corpus, local_url = make_index(fmnist_train[:300], shard_size=100, partitions=2)  # the local run's index
    queries = tmp_path / "queries.npy"
    np.save(queries, fmnist_train[1000:1040, :, :, 0])
    tls = ["--scheduler", tls_scheduler, "--tls-ca", pki.ca, "--tls-cert", pki.cert, "--tls-key", pki.key]
    url, out = tmp_path / "tls-index", tmp_path / "tls.parquet"
    indexed = _cli("index", "--corpus", str(corpus), "--index", str(url), "--model", tiny_model,
                   "--shard-size", "100", "--partitions", "2", *tls)
    assert indexed.returncode == 0, indexed.stderr
    assert "indexed 300 new images" in indexed.stdout
    assert f"connected to Dask scheduler {tls_scheduler}" in indexed.stderr
    answered = _cli("query", "--index", str(url), "--queries", str(queries), "--out", str(out), "--k", "5", *tls)
    assert answered.returncode == 0, answered.stderr
    assert "answered 40 queries" in answered.stdout
    for text in (indexed.stderr, answered.stderr):  # the key's file name may be logged, never its contents
        assert "PRIVATE KEY" not in text

    local_out = tmp_path / "local.parquet"
    query(local_url, str(queries), str(local_out), QuerySettings(k=5), client=client)
    codes = zarr.open_array(f"{url}/codes", mode="r")[:]
    assert codes.shape == (300, 7, 7)
    np.testing.assert_array_equal(codes, zarr.open_array(f"{local_url}/codes", mode="r")[:])
    tls_rows, local_rows = pq.read_table(out), pq.read_table(local_out)
    assert tls_rows.num_rows == 40 * 5
    assert tls_rows.equals(local_rows)


def test_client_without_certificate_is_refused(tls_scheduler, pki):
    from distributed import Client

    with pytest.raises((OSError, TimeoutError, TypeError)):
        Client(tls_scheduler, timeout="3s")  # no Security: no certificate to offer
    gc.collect()  # finalise the refused Client now, not inside the next Client's start (cluster.py)
    # the scheduler itself refuses a TLS client that trusts it but shows no certificate ...
    assert _server_verdict(tls_scheduler, pki.ca) in {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"}
    # ... and accepts one that shows the cluster's certificate (the check above can tell)
    assert _server_verdict(tls_scheduler, pki.ca, pki.cert, pki.key) == "accepted"


def test_client_with_certificate_of_another_ca_is_refused(tls_scheduler, pki):
    from distributed import Client, Security

    rogue = Security(tls_ca_file=pki.ca, tls_client_cert=pki.rogue_cert, tls_client_key=pki.rogue_key, require_encryption=True)
    with pytest.raises((OSError, TimeoutError)):
        Client(tls_scheduler, security=rogue, timeout="3s")
    gc.collect()  # as above
    assert _server_verdict(tls_scheduler, pki.ca, pki.rogue_cert, pki.rogue_key) == "TLSV1_ALERT_UNKNOWN_CA"
    # a client that trusts only the rogue CA will not talk to the cluster's scheduler either
    settings = ClusterSettings(scheduler=tls_scheduler, tls_ca=pki.rogue_ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key)
    import dask.config

    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}), pytest.raises(ConfigError, match="cannot connect to Dask scheduler tls://"):
        with dask_client(settings):
            pass


def _main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """Run the ``patchhash`` console entry in this process: (exit code, stderr lines)."""
    from workflows.cli import main

    monkeypatch.setattr(sys, "argv", ["patchhash", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def test_cli_tcp_scheduler_with_tls_options_is_one_clear_error(monkeypatch, capsys, pki, tmp_path):
    code, lines = _main(monkeypatch, capsys, "query", "--index", str(tmp_path / "idx"), "--queries", "q.npy",
                        "--out", str(tmp_path / "r.parquet"), "--scheduler", "tcp://127.0.0.1:8786",
                        "--tls-ca", pki.ca, "--tls-cert", pki.cert, "--tls-key", pki.key)
    assert code == 1
    assert lines == ["patchhash: error: --scheduler tcp://127.0.0.1:8786 is not a TLS address but --tls-* options "
                     "were given; use tls://127.0.0.1:8786"]


def test_tls_local_cluster_is_encrypted(pki):
    settings = ClusterSettings(workers=1, processes=False, tls_ca=pki.ca, tls_cert=pki.cert, tls_key=pki.key)
    with dask_client(settings) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert all(w.startswith("tls://") for w in client.scheduler_info(n_workers=-1)["workers"])
        assert client.submit(sum, [1, 2, 3]).result() == 6


# ClusterSettings validation: every mistake fails up front, naming the option and the fix


def test_tls_options_come_all_or_none(pki):
    with pytest.raises(ConfigError, match="--tls-ca, --tls-cert given without --tls-key: TLS needs all three"):
        ClusterSettings(tls_ca=pki.ca, tls_cert=pki.cert)
    with pytest.raises(ConfigError, match="--tls-key given without --tls-ca, --tls-cert"):
        ClusterSettings(scheduler="tls://127.0.0.1:8786", tls_key=pki.key)


def test_tls_files_must_exist(pki, tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=f"--tls-cert {missing}: no such file"):
        ClusterSettings(tls_ca=pki.ca, tls_cert=missing, tls_key=pki.key)


def test_tls_files_must_be_pem(pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="--tls-ca .* is not a PEM CA certificate"):
        ClusterSettings(tls_ca=str(junk), tls_cert=pki.cert, tls_key=pki.key)
    with pytest.raises(ConfigError, match="--tls-cert .* / --tls-key .*: not a PEM certificate and its matching"):
        ClusterSettings(tls_ca=pki.ca, tls_cert=pki.cert, tls_key=pki.rogue_key)  # a key of another certificate


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "10.0.0.5:8786"])
def test_tls_options_need_a_tls_address(pki, address):
    with pytest.raises(ConfigError, match="is not a TLS address .* use tls://10.0.0.5:8786"):
        ClusterSettings(scheduler=address, tls_ca=pki.ca, tls_cert=pki.cert, tls_key=pki.key)


def test_tls_address_needs_credentials(pki):
    import dask.config

    with pytest.raises(ConfigError, match="needs TLS credentials: pass --tls-ca, --tls-cert and --tls-key"):
        ClusterSettings(scheduler="tls://10.0.0.5:8786")
    with dask.config.set({"distributed.comm.tls.ca-file": pki.ca, "distributed.comm.tls.client.cert": pki.cert,
                          "distributed.comm.tls.client.key": pki.key}):
        settings = ClusterSettings(scheduler="tls://10.0.0.5:8786")  # Dask's own security config is enough
        security = settings.security()
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == (pki.ca, pki.cert, pki.key)


def test_security_from_options(pki):
    assert ClusterSettings().security() is None
    security = ClusterSettings(scheduler="tls://h:1", tls_ca=Path(pki.ca), tls_cert=pki.cert, tls_key=pki.key).security()
    assert security.require_encryption and security.tls_ca_file == pki.ca
    for role in ("client", "scheduler", "worker"):
        assert (getattr(security, f"tls_{role}_cert"), getattr(security, f"tls_{role}_key")) == (pki.cert, pki.key)
    assert "PRIVATE KEY" not in repr(security)
