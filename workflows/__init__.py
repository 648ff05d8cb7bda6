"""What users run: the CLI and the jobs behind it.

The jobs are functions of their modules (``workflows.index.index``,
``workflows.query.query``, ``workflows.train.train``, ``workflows.demo.demo``); this package
re-exports their settings and reports.
"""

from workflows.cluster import ClusterSettings
from workflows.index import IndexReport, IndexSettings
from workflows.query import QueryReport, QuerySettings

__all__ = ["ClusterSettings", "IndexReport", "IndexSettings", "QueryReport", "QuerySettings"]
