"""The inbox model every feature shares.

Owns the channel and thread look-ups (:class:`server.inbox.threads.ThreadResolver`: a
customer's conversation found or created atomically), the inbox-event vocabulary and the
:class:`~server.inbox.events.EventSink` every publisher talks to, the bounded caches, and the
owner-scoped reads and admin writes behind the REST API (:class:`server.inbox.service.InboxService`).

Entry object: :class:`server.inbox.service.InboxService`. May import ``server.api``,
``server.ops``, ``models`` and ``config``.
"""
