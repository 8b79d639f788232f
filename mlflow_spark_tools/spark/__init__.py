"""Spark: the engine (a cluster session, Spark Connect or the embedded server), Delta writes
through the catalog, and Arrow in and out of DataFrames."""
