"""Customer messages handed to workers: the outbox, ordered delivery, dead letters.

Owns which messages go to which targets (``outbox``), what a receiver gets — payload,
signature, retry schedule (``protocol``), the dispatcher that delivers by signed HTTP or a
Redis Stream in order per conversation (``delivery``), and dead letters and requeues
(``admin``).

Entry object: :class:`server.triggers.delivery.TriggerDispatcher`. May import
``server.graph``, ``server.ingest`` and below.
"""
