"""Databricks specifics: fuse paths and dbfs:/ URIs, secrets, job specs and deployment."""
