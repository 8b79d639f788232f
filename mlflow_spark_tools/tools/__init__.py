"""Tools around the tables and the replay: run and experiment dumps, importing a model, the
system-tag catalog, the rate-limit proxy, output formats."""
