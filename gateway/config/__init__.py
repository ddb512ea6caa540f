"""Configuration: the file's schema (:mod:`.model`) and how it is read and checked (:mod:`.loader`)."""

from gateway.config.loader import ConfigError, load_config
from gateway.config.model import AdapterConfig, TurnoutConfig

__all__ = ["AdapterConfig", "ConfigError", "TurnoutConfig", "load_config"]
