"""Configuration: the file's schema (:mod:`.model`), how it is read and checked (:mod:`.loader`), the checks
between its sections and the one notation of key paths (:mod:`.references`), and the prices of the OpenAI
models it names (:mod:`.prices`).

May import: ``routing`` (the policy language) only.
"""

from gateway.config.loader import ConfigError, load_config
from gateway.config.model import AdapterConfig, TurnoutConfig

__all__ = ["AdapterConfig", "ConfigError", "TurnoutConfig", "load_config"]
