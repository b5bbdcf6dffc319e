"""The transcription hook for audio copies: no-op by default, pluggable.

``IGSYNC_TRANSCRIBER=package.module:factory`` names a factory returning a :class:`Transcriber`;
:func:`load_transcriber` loads it once at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AudioClip:
    data: bytes
    content_type: str
    message_id: str
    channel_id: str


class Transcriber(Protocol):
    """Turns a stored voice note into text. Return None when there is nothing to say;
    exceptions are logged and leave ``transcription`` empty (the media still completes)."""

    async def transcribe(self, clip: AudioClip) -> str | None:
        """The text of an audio clip, or None."""
        ...


class NoopTranscriber:
    """The default: no transcription service is configured."""

    async def transcribe(self, clip: AudioClip) -> str | None:
        """No transcription."""
        return None


def load_transcriber(spec: str) -> Transcriber:
    """``package.module:factory`` → ``factory()``; empty → :class:`NoopTranscriber`."""
    if not spec:
        return NoopTranscriber()
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory()
