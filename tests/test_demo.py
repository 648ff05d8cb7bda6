"""The README's first command, end to end on the real Fashion-MNIST files (about a minute)."""

import pyarrow.parquet as pq

from workflows.cluster import ClusterSettings
from workflows.demo import demo


def test_demo_end_to_end(tmp_path, fmnist_train):  # fmnist_train: fails clearly if the package is absent
    result = demo(str(tmp_path / "demo"), ClusterSettings(workers=2))
    assert (result.n_index, result.n_queries) == (60000, 10000)
    # issue 5's target for the default mode with the shipped model (measured 0.855); chance is 0.1
    assert result.precision_at_10 > 0.85
    table = pq.read_table(result.results, columns=["query_id", "rank"])
    assert table.num_rows == 10000 * 10
    assert "data:image/png;base64," in open(result.report).read()
