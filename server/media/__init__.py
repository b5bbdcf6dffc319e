"""Attachments that outlive Instagram's links.

Owns the durable download queue and its workers (:class:`server.media.service.MediaService`),
what to download of a message (``targets``), the bounded HTTP download and content sniffing
(``download``), expired-link refresh through the Graph API (``links``) and the optional
transcription of audio (``transcribe``).

Entry object: :class:`server.media.service.MediaService`. May import ``server.graph``,
``server.ingest`` and below.
"""
