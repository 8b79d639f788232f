"""Talking to the tracking server: REST calls, the retrying client, retry policies, the
rate-limit classifier, token buckets and request pacing, search pages, experiments, artifacts."""
