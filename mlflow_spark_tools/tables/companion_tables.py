"""The tables a refresh writes beside ``exp_<id>`` from what it read, such as the dataset inputs
and the logged models: the interface the refresh core calls them through.

Each refresh begins one :class:`CompanionRefresh` per companion table, tells it every table of
runs it fetched (:meth:`~CompanionRefresh.add`), and after the run table's commit lets it write
(:meth:`~CompanionRefresh.finish`); :meth:`~CompanionRefresh.close` drops what it staged, also
when the refresh failed.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa

from mlflow_spark_tools.tables.run_table import Refresh


class CompanionRefresh(Protocol):
    def add(self, runs: pa.Table) -> None:
        """Runs this refresh fetched (a chunk of a full build, or an incremental refresh's kept runs)."""
        ...

    def finish(self, job: Refresh) -> None:
        """Write the table and report it in ``job.summary``."""
        ...

    def indexed(self) -> str | None:
        """The table's name for the index row, None when there is none (after finish)."""
        ...

    def close(self) -> None: ...


class CompanionTable(Protocol):
    index_column: str  # the index table's column that names it

    def missing_reason(self, table: str) -> str | None:
        """Why ``table`` must be built in full because of this table (it is missing), or None."""
        ...

    def begin(self, job: Refresh, *, full: bool) -> CompanionRefresh: ...
