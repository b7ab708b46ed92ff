"""Configuration: typed settings, the host directory and logging setup."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
