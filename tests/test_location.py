"""``IndexLocation``, the one value an index travels as, and the names of ``storage/layout.py``."""

from __future__ import annotations

import pickle
import uuid
from datetime import datetime, timezone

import pytest

from storage import IndexFormatError
from storage import layout
from storage.location import IndexLocation


def test_a_location_joins_resolves_and_makes_children_with_its_options():
    index = IndexLocation("s3://bucket/photos.index/", {"anon": True})
    assert index.join("versions", "v000002.json") == "s3://bucket/photos.index/versions/v000002.json"
    assert index.resolve("images/000000000000-000000000100.v000001.parquet").endswith("/photos.index/images/000000000000-000000000100.v000001.parquet")
    model = index.child(layout.MODEL_DIR)
    assert model == IndexLocation("s3://bucket/photos.index/model", {"anon": True})
    with pytest.raises(IndexFormatError, match="not a plain relative path"):
        index.resolve("../other/manifest.json")


def test_of_takes_a_url_with_options_or_a_location_as_it_is(tmp_path):
    index = IndexLocation.of(tmp_path / "idx")
    assert index.url == str(tmp_path / "idx") and index.storage_options == {}
    assert IndexLocation.of(index) is index and IndexLocation.of(index, {}) is index
    with pytest.raises(ValueError, match="not both"):
        IndexLocation.of(index, {"key": "k"})
    (tmp_path / "idx" / "runs").mkdir(parents=True)
    assert index.exists("runs") and not index.exists("manifest.json")
    assert index.fs_path("runs") == f"{index.path}/runs" and index.path == str(tmp_path / "idx")


def test_a_location_pickles_without_its_file_system_and_never_shows_its_options():
    secret = "ph-" + uuid.uuid4().hex
    index = IndexLocation("memory://idx", {"secret": secret})
    index.fs  # resolved in this process
    copy = pickle.loads(pickle.dumps(index))
    assert copy == index and hash(copy) == hash(index) and set(copy.__dict__) == {"url", "storage_options"}
    assert copy.storage_options == {"secret": secret}
    for text in (repr(index), str(index), f"{index}", repr([index]), repr(index.child("model"))):
        assert secret not in text
    assert repr(index) == "IndexLocation('memory://idx', storage_options=<hidden>)"
    assert repr(IndexLocation("memory://idx")) == "IndexLocation('memory://idx')"


def test_layout_names_are_those_of_the_on_disk_format():
    """docs/FORMAT.md: the names every index already holds (format 2 must not change)."""
    assert layout.staging_plan_path(3) == "_staging/v000003/plan.json"
    assert layout.done_marker_path(3, layout.shard_done_marker(10)) == "_staging/v000003/done/000000000010.done.json"
    assert layout.map_done_marker("pos", 20) == "pos-000000000020.done.json"
    assert layout.compact_done_marker(30) == "compact-000000000030.done.json"
    started = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    assert layout.run_record_path(started, "ab" * 16) == f"runs/20260102T030405.000006Z-{'ab' * 8}.json"
    assert layout.LOCK_FILE == "_lock.json" and layout.lock_takeover_path("t0") == "_lock.json.takeover-t0"
    assert layout.MODEL_CARD == "model/card.json" and layout.MODEL_FILES == ("model.keras", "card.json")
    assert layout.array_metadata_path(layout.CODES) == "codes/zarr.json" and layout.version_path(7) == "versions/v000007.json"
    assert layout.parse_codes_chunk(layout.codes_chunk_path("codes", 12)) == 12 and layout.parse_codes_chunk("codes/zarr.json") is None
    assert layout.PROTECTED == ("manifest.json", "model", "runs", "_lock.json", "_staging")
