"""An outbound message is stored once, whatever order its echo and its mark-sent arrive in.

Owns the three layers of echo dedup — the Redis hints (``marks``), the MongoDB pairing
document that decides (``pairing``), the message id (``echo``) — and the mark-sent side
(``marksent``). docs/dedup.md has the properties P1–P5 and the proofs.

Entry objects: :class:`server.dedup.echo.EchoDedup` (webhook side) and
:class:`server.dedup.marksent.MarkSentService` (sender side). May import every package below
it (media, triggers, graph, ingest, realtime, inbox, api, ops).
"""
