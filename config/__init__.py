"""Configuration: the frozen :class:`Settings` object and its environment loader."""

from config.settings import ConfigError, Settings, describe, env_name

__all__ = ["ConfigError", "Settings", "describe", "env_name"]
