"""Flattened experiment tables: param types, fetching runs, building and refreshing the
tables, and the questions asked of them (best run, last run)."""
