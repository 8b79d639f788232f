"""Column names of the flattened experiment tables and their mapping to MLflow keys.

Run info columns keep their names (``run_id``, ``start_time``, ...). Params, latest metric
values and tags become ``_p_<key>``, ``_m_<key>`` and ``_t_<key>``, lowercase, so every column
can be used in SQL without backticks and is found whatever case a query writes:

- letters with accents lose them (``é`` -> ``e``); any other character outside
  ``[a-z0-9_]`` that is not ASCII becomes ``u<code point in hex>`` (``λ`` -> ``u3bb``,
  ``学习率`` -> ``u5b66u4e60u7387``), so keys in other scripts stay apart and readable as
  codes; ASCII punctuation becomes ``_`` (``val.loss`` -> ``val_loss``).
- The history summaries of a metric take its column's name with another prefix:
  ``_m_val_loss`` has ``_mmin_val_loss`` / ``_mmax_val_loss`` (lowest and highest value ever
  logged) and ``_mminstep_val_loss`` / ``_mmaxstep_val_loss`` (the step where each was first
  reached). No prefix is the start of another, so these never meet a param, metric or tag name.
- Keys that map to the same name (Spark SQL resolves names case-insensitively) are told apart
  by a numeric suffix (``_2``, ``_3``, ...). A key that is already a safe name (lowercase
  ``[a-z0-9_]``) keeps it: ``test_rmse`` is ``_m_test_rmse`` beside ``Test-RMSE``'s
  ``_m_test_rmse_2``; the other keys of one name take the suffixes in sorted key order. The rule
  depends on the keys only, not on how many runs log them, so the same keys get the same names
  in every experiment and every warehouse. Each suffixed name is a collision, listed in the
  build's summary.

A name once given is kept: the mapping of a table is stored in its companion
``<table>_columns`` table and passed back in on every refresh, so names are stable across
refreshes (tables built before these rules keep their names; a safe key that arrives after
another key took its name gets a suffix) and deterministic for a new table.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

PARAM, METRIC, TAG, INFO = "param", "metric", "tag", "info"
# Per-metric summaries of the metric history, beside the latest value ``_m_<key>``.
METRIC_MIN, METRIC_MIN_STEP = "metric_min", "metric_min_step"
METRIC_MAX, METRIC_MAX_STEP = "metric_max", "metric_max_step"
SUMMARY_KINDS = (METRIC_MIN, METRIC_MIN_STEP, METRIC_MAX, METRIC_MAX_STEP)
KIND_ORDER = {INFO: 0, PARAM: 1, METRIC: 2, METRIC_MIN: 2, METRIC_MIN_STEP: 2, METRIC_MAX: 2,
              METRIC_MAX_STEP: 2, TAG: 3}
PREFIXES = {PARAM: "_p_", METRIC: "_m_", TAG: "_t_", METRIC_MIN: "_mmin_", METRIC_MIN_STEP: "_mminstep_",
            METRIC_MAX: "_mmax_", METRIC_MAX_STEP: "_mmaxstep_"}
# The SQL type of each kind's columns (params are typed by their values instead).
KIND_TYPES = {METRIC: "double", TAG: "string", METRIC_MIN: "double", METRIC_MAX: "double",
              METRIC_MIN_STEP: "bigint", METRIC_MAX_STEP: "bigint"}
MAX_COLUMN_NAME = 255

# (column name, Spark SQL type) of the run info columns, in table order.
INFO_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "string"),
    ("experiment_id", "string"),
    ("run_name", "string"),
    ("status", "string"),
    ("lifecycle_stage", "string"),
    ("user_id", "string"),
    ("start_time", "timestamp"),
    ("end_time", "timestamp"),
    ("duration_seconds", "double"),
    ("artifact_uri", "string"),
    ("parent_run_id", "string"),
)

_UNSAFE = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of an experiment table: its name, what it holds and its SQL type."""

    column_name: str
    kind: str
    key: str
    data_type: str


def _ascii_part(key: str) -> str:
    out = []
    for char in unicodedata.normalize("NFKD", key):
        if char.isascii():
            out.append(char)
        elif not unicodedata.combining(char):
            out.append(f"u{ord(char):x}")
    return "".join(out)


def safe_base_name(kind: str, key: str) -> str:
    """The column name a key gets when nothing collides with it."""
    return PREFIXES[kind] + _UNSAFE.sub("_", _ascii_part(key).lower())


def _with_suffix(base: str, n: int) -> str:
    suffix = "" if n == 1 else f"_{n}"
    return base[: MAX_COLUMN_NAME - len(suffix)] + suffix


def is_safe_key(key: str) -> bool:
    """Whether a key is its own column name after the prefix (lowercase ``[a-z0-9_]``)."""
    return bool(key) and _UNSAFE.search(key) is None


class ColumnNamer:
    """Gives every (kind, key) a unique, SQL-safe column name, keeping names already given.

    Args:
        existing: the specs of a table as stored in its ``_columns`` table.
    """

    def __init__(self, existing: Iterable[ColumnSpec] = ()) -> None:
        self._by_key: dict[tuple[str, str], str] = {}
        self._holder: dict[str, tuple[str, str]] = {name.lower(): (INFO, name) for name, _ in INFO_COLUMNS}
        self.collisions: list[str] = []
        """One line per key named here with a suffix: which key holds the name it wanted."""
        for spec in existing:
            if spec.kind == INFO:
                continue
            self._by_key[(spec.kind, spec.key)] = spec.column_name
            self._holder[spec.column_name.lower()] = (spec.kind, spec.key)

    def known(self, kind: str, key: str) -> bool:
        return (kind, key) in self._by_key

    def name(self, kind: str, key: str) -> str:
        """The column name of a key already named (see :meth:`assign`)."""
        return self._by_key[(kind, key)]

    def assign(self, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """Name the keys that have no name yet; return the new (kind, key, name).

        Keys that are safe names come first (they get their own name unless a table built
        before gave it away), then the others in sorted order: the names depend on the keys
        alone.
        """
        new = sorted(
            {k for k in keys if k not in self._by_key},
            key=lambda k: (KIND_ORDER[k[0]], not is_safe_key(k[1]), k[1]),
        )
        added = []
        summaries = [k for k in new if k[0] in SUMMARY_KINDS]
        new = [k for k in new if k[0] not in SUMMARY_KINDS]
        missing_metrics = {(METRIC, key) for _, key in summaries} - set(self._by_key) - set(new)
        if missing_metrics:  # a summary's metric is named first, as the latest value's column
            added += self.assign(missing_metrics)
        for kind, key in new:
            added.append((kind, key, self._name_from(kind, key, safe_base_name(kind, key))))
        for kind, key in summaries:
            base = PREFIXES[kind] + self._by_key[(METRIC, key)][len(PREFIXES[METRIC]):]
            added.append((kind, key, self._name_from(kind, key, base)))
        return added

    def _name_from(self, kind: str, key: str, base: str) -> str:
        """Give (kind, key) ``base``, or ``base`` with the first suffix no column has yet."""
        n = 1
        while _with_suffix(base, n).lower() in self._holder:
            n += 1
        name = _with_suffix(base, n)
        if n > 1 and kind not in SUMMARY_KINDS:
            holder_kind, holder_key = self._holder[_with_suffix(base, 1).lower()]
            self.collisions.append(f"{kind} {key!r} is {name}: {_with_suffix(base, 1)} is "
                                   f"{'the run info column' if holder_kind == INFO else holder_kind} {holder_key!r}")
        self._by_key[(kind, key)] = name
        self._holder[name.lower()] = (kind, key)
        return name


def info_specs() -> list[ColumnSpec]:
    """The specs of the run info columns."""
    return [ColumnSpec(name, INFO, name, data_type) for name, data_type in INFO_COLUMNS]


def sort_specs(specs: Iterable[ColumnSpec]) -> list[ColumnSpec]:
    """Table order: run info first (fixed order), then params, metrics and tags by name."""
    info_order = {name: i for i, (name, _) in enumerate(INFO_COLUMNS)}
    return sorted(
        specs,
        key=lambda s: (KIND_ORDER[s.kind], info_order.get(s.column_name, 0), s.column_name.lower()),
    )
