"""The core of igsync: wiring, lifecycle/CLI, ingest pipeline, dedup, realtime hub, metrics,
Graph API client, workers and the embedded stores launcher."""
