"""Settings, defaults and the model pricing table."""

from troupe.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
