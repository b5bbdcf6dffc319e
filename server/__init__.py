"""igsync's core, one package per concern.

Layers, top to bottom; a package imports only packages below it (``.importlinter``, checked
by ``make lint``; the table is in docs/architecture.md):

    app                  how a process is built, started and stopped; the only importer of handlers
    dedup                an outbound message stored once, whatever order its echo and mark-sent come in
    media | triggers     attachments that outlive Instagram's links | customer messages handed to workers
    graph | ingest       Meta's Graph API and profiles | a signed webhook body in, stored messages out
    realtime             inbox events to every WebSocket of every process, in order, with resume
    inbox                the inbox model: channels, threads, the event vocabulary, owner-scoped reads
    api                  the contract with callers: principals, the error shape, input schemas, paging
    ops                  what an operator sees: metrics, logs, store instruments, periodic checks

Below them all: :mod:`models` (storage) and :mod:`config` (settings). ``handlers`` sit beside
``app``: thin Tornado request handlers that parse, authorize and call the core.
"""
