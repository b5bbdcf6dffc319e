"""Settings and plug-in loading of the events/media capability (pure, no stores)."""

from __future__ import annotations

import pytest

from config import ConfigError, Settings
from server.media.targets import media_targets
from server.media.transcribe import NoopTranscriber, load_transcriber


def test_media_and_profile_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "IGSYNC_MEDIA_CONCURRENCY": "0",
            "IGSYNC_MEDIA_TIMEOUT_SECS": "30",
            "IGSYNC_MEDIA_LEASE_SECS": "45",
            "IGSYNC_PROFILE_CONCURRENCY": "2",
            "IGSYNC_GRAPH_API_VERSION": "v23.0",
            "IGSYNC_TRANSCRIBER": "tests.config.test_media_settings:FakeTranscriber",
        }
    )
    assert settings.media_concurrency == 0 and settings.media_lease_secs == 45.0
    assert settings.graph_api_version == "v23.0" and settings.profile_concurrency == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IGSYNC_MEDIA_TIMEOUT_SECS": "60", "IGSYNC_MEDIA_LEASE_SECS": "60"}, "IGSYNC_MEDIA_LEASE_SECS"),
        ({"IGSYNC_MEDIA_CONCURRENCY": "-1"}, "IGSYNC_MEDIA_CONCURRENCY"),
        ({"IGSYNC_PROFILE_CONCURRENCY": "0"}, "IGSYNC_PROFILE_CONCURRENCY"),
        ({"IGSYNC_MEDIA_MAX_ATTEMPTS": "0"}, "IGSYNC_MEDIA_MAX_ATTEMPTS"),
        ({"IGSYNC_TRANSCRIBER": "no_colon_here"}, "IGSYNC_TRANSCRIBER"),
        ({"IGSYNC_ORPHAN_EVENTS_TTL_DAYS": "abc"}, "IGSYNC_ORPHAN_EVENTS_TTL_DAYS"),
    ],
)
def test_wrong_values_are_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


class FakeTranscriber:
    async def transcribe(self, clip: object) -> str | None:
        return "ok"


def test_transcriber_is_loaded_from_its_spec() -> None:
    assert isinstance(load_transcriber(""), NoopTranscriber)
    assert isinstance(load_transcriber("tests.config.test_media_settings:FakeTranscriber"), FakeTranscriber)
    with pytest.raises(ModuleNotFoundError):
        load_transcriber("no.such.module:factory")


def test_media_targets_of_a_message() -> None:
    message = {
        "attachments": [
            {"type": "share", "url": "u1"},
            {"type": "ig_post", "url": "u1"},
            {"type": "fallback", "url": "u2"},
            {"type": "image", "url": None},
            {"type": "video", "url": "u3"},
        ],
        "reply_to": {"story": {"id": "s", "url": "u4"}},
    }
    targets = media_targets(message)
    assert [(t.keys, t.type, t.url) for t in targets] == [
        (("attachments.0", "attachments.1"), "share", "u1"),
        (("attachments.4",), "video", "u3"),
        (("reply_to.story",), "story", "u4"),
    ]
    assert media_targets({"attachments": [], "reply_to": {"mid": "x"}}) == []
