"""Sending through igsync: a message is stored (pending) before Instagram sees it, then sent
by a worker that records each part's Instagram id, so its echo is never a second message.

Owns the request side (``service``: who may send what, Meta's messaging window, idempotency,
the store-first order), the durable queue's worker (``worker``: one Send API call per part,
leases, retries, failures, echoes that came first) and Meta's per-account rates (``limiter``).
docs/sending.md has the flow and the reasons.

Entry objects: :class:`server.outbound.service.SendService` (the API) and
:class:`server.outbound.worker.SendWorker` (the queue). May import every package below it
(dedup, media, triggers, graph, ingest, realtime, inbox, api, ops).
"""
