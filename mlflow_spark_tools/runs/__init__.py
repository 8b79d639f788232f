"""Runs as data, in both directions: what a run logs (the plan of requests that writes it) and
run search results as Arrow columns (what the tables and the client read); model flavors."""
