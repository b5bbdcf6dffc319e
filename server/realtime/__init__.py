"""Inbox events reach every WebSocket of every process, in order, with resume.

Owns the hub (:class:`server.realtime.hub.EventHub`, the default ``EventSink``), its pub/sub
link and circuit breaker (``pubsub``), the per-channel Redis Stream log with sequence numbers
(``eventlog``), the registry of local subscribers (``registry``), one socket's session
(``session``, which talks to the hub through the ``Hub`` protocol only), the handshake rules
(``access``) and the frame encoding (``wire``).

Entry object: :class:`server.realtime.hub.EventHub`. May import ``server.inbox``,
``server.api``, ``server.ops``, ``models`` and ``config``.
"""
