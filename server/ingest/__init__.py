"""A signed Instagram webhook body in; stored messages and changes out.

Owns the signature check and parsing of Meta's payloads (``parse``), the pipeline that tells
owner from customer messages and stores each once (``pipeline``), the reactions, reads,
edits and unsends applied to stored messages (``changes``), and the recorder through which
every stored message reaches its hooks and the event sink (``recorder``).

Entry object: :class:`server.ingest.pipeline.IngestPipeline`. May import ``server.realtime``
and below (it publishes through ``EventSink``, never through the hub itself).
"""
