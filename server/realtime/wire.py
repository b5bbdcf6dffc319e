"""RFC 6455 framing of server → client text frames, for writing a socket's batch in one go.

The sender task of a session hands everything queued for its socket to the transport at
once; encoding the frames here and writing them with one stream write costs one syscall
and one future per batch instead of one of each (plus a task) per frame — the difference
between keeping up with thousands of sockets on two cores or not. Server frames are never
masked; igsync negotiates no extension (no permessage-deflate), so no RSV bit is set.
"""

from __future__ import annotations

import struct

FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A WebSocket text frame of ``payload`` (unmasked, server to client)."""
    size = len(payload)
    if size < 126:
        return bytes((FIN_TEXT, size)) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", FIN_TEXT, 126, size) + payload
    return struct.pack("!BBQ", FIN_TEXT, 127, size) + payload


def text_frames(payloads: list[bytes]) -> bytes:
    """Text frames of ``payloads``, concatenated."""
    return b"".join(text_frame(p) for p in payloads)
