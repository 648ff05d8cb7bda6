"""Settings read from environment variables (storage/environment.py): sizes and numbers parse,
and a bad value is refused with the variable's name and a value that works, whichever setting
reads it."""

from __future__ import annotations

import pytest

from storage import ConfigError
from storage.environment import env_bytes, env_number
from storage.retry import RetryPolicy
from storage.uri_cache import uri_cache_budget
from workflows.partition_files import local_budget
from workflows.worker_cache import cache_budget


@pytest.mark.parametrize("value, size", [("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("2000000000", 2_000_000_000), ("0", 0)])
def test_sizes_parse(monkeypatch, value, size):
    monkeypatch.setenv("PATCHHASH_TEST_BYTES", value)
    assert env_bytes("PATCHHASH_TEST_BYTES", "1GiB", default=7) == size


def test_an_unset_or_empty_size_is_the_default(monkeypatch):
    monkeypatch.delenv("PATCHHASH_TEST_BYTES", raising=False)
    assert env_bytes("PATCHHASH_TEST_BYTES", "1GiB", default=7) == 7
    assert env_bytes("PATCHHASH_TEST_BYTES", "1GiB") is None
    monkeypatch.setenv("PATCHHASH_TEST_BYTES", "")
    assert env_bytes("PATCHHASH_TEST_BYTES", "1GiB", default=7) == 7


@pytest.mark.parametrize("value", ["lots", "-1", "-2GiB", "1.5.2GB", "2 GiB please"])
def test_what_is_not_a_size_is_refused_with_the_variable_and_an_example(monkeypatch, value):
    monkeypatch.setenv("PATCHHASH_TEST_BYTES", value)
    with pytest.raises(ConfigError, match=rf"PATCHHASH_TEST_BYTES={value!r} is not a size; set it to e\.g\. 3GiB"):
        env_bytes("PATCHHASH_TEST_BYTES", "3GiB", default=7)


@pytest.mark.parametrize("variable, budget, example", [
    ("PATCHHASH_CACHE_BYTES", cache_budget, "2GiB"),
    ("PATCHHASH_LOCAL_BYTES", local_budget, "20GiB"),
    ("PATCHHASH_URI_CACHE_BYTES", uri_cache_budget, "1GiB"),
])
def test_every_byte_budget_reads_its_variable_the_same_way(monkeypatch, variable, budget, example):
    monkeypatch.setenv(variable, "3MiB")
    assert budget() == 3 * 2**20
    monkeypatch.setenv(variable, "-5")  # used to be taken as a budget of -5 bytes by two of them
    with pytest.raises(ConfigError, match=rf"{variable}='-5' is not a size; set it to e\.g\. {example}"):
        budget()


def test_numbers_parse_and_default(monkeypatch):
    monkeypatch.delenv("PATCHHASH_TEST_N", raising=False)
    assert env_number("PATCHHASH_TEST_N", int, 6, minimum=1) == 6
    monkeypatch.setenv("PATCHHASH_TEST_N", "3")
    assert env_number("PATCHHASH_TEST_N", int, 6, minimum=1) == 3
    monkeypatch.setenv("PATCHHASH_TEST_N", "0.25")
    assert env_number("PATCHHASH_TEST_N", float, 0.5, minimum=0.0) == 0.25


@pytest.mark.parametrize("kind, value, message", [
    (int, "two", r"PATCHHASH_TEST_N='two' must be an integer >= 1; set it to e\.g\. 6"),
    (int, "1.5", r"PATCHHASH_TEST_N='1.5' must be an integer >= 1"),
    (int, "0", r"PATCHHASH_TEST_N='0' must be an integer >= 1"),
    (float, "-0.1", r"PATCHHASH_TEST_N='-0.1' must be a number >= 0"),
    (float, "nan", r"PATCHHASH_TEST_N='nan' must be a number >= 0"),
    (float, "inf", r"PATCHHASH_TEST_N='inf' must be a number >= 0"),
])
def test_what_is_not_a_number_in_range_is_refused(monkeypatch, kind, value, message):
    monkeypatch.setenv("PATCHHASH_TEST_N", value)
    with pytest.raises(ConfigError, match=message):
        env_number("PATCHHASH_TEST_N", kind, 6 if kind is int else 0.5, minimum=1 if kind is int else 0.0)


def test_the_storage_retry_policy_reads_its_variables_so(monkeypatch):
    monkeypatch.setenv("PATCHHASH_STORAGE_ATTEMPTS", "2")
    monkeypatch.setenv("PATCHHASH_STORAGE_BACKOFF", "0.01")
    assert (RetryPolicy.from_env().attempts, RetryPolicy.from_env().backoff) == (2, 0.01)
    monkeypatch.setenv("PATCHHASH_STORAGE_ATTEMPTS", "many")  # a bare ValueError from int() before
    with pytest.raises(ConfigError, match="PATCHHASH_STORAGE_ATTEMPTS='many' must be an integer >= 1"):
        RetryPolicy.from_env()
    monkeypatch.setenv("PATCHHASH_STORAGE_ATTEMPTS", "0")  # silently one attempt before
    with pytest.raises(ConfigError, match="PATCHHASH_STORAGE_ATTEMPTS='0'"):
        RetryPolicy.from_env()
