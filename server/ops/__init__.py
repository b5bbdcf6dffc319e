"""What an operator sees: metrics, logs, store instruments, periodic checks.

Owns every Prometheus series (:class:`server.ops.metrics.Metrics`, created once per process
and injected), the JSON log format and the one-line-per-item fields (``logs``), the HTTP
access log (``access_log``), the MongoDB/Redis command instruments (``store_metrics``) and
the periodic checks behind readiness and silent channels (``monitor``).

Entry object: :class:`server.ops.metrics.Metrics`. The bottom of ``server``: imports only
``models`` and ``config``.
"""
