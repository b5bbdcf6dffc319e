"""Instagram accounts that keep working: connecting a channel (kind, subscription), its token
(refreshed before it expires), its history (imported from the Conversations API) and the gaps
an outage left (repaired from the same API).

Owns what keeps a channel healthy after it is connected: ``service`` (connect and reconnect,
subscriptions, what a reconnect queues again, history runs for the admin API), ``tokens`` (the
refresh schedule, once across processes), ``history`` (a resumable, rate-limited walk of the
Conversations API storing each message once, as the webhook would have), ``gaps`` (heartbeats,
outages longer than Meta's redelivery, and the repairs they queue) and ``runs`` (the worker
that runs history imports and repairs in the background). docs/accounts.md has the reasons.

Entry objects: :class:`server.accounts.service.AccountsService`,
:class:`server.accounts.tokens.TokenRefresher`, :class:`server.accounts.runs.HistoryWorker`
and :class:`server.accounts.gaps.GapWatch`. May import every package below it (outbound,
dedup, media, triggers, graph, ingest, realtime, inbox, api, ops).
"""
