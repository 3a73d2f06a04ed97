"""
ocicache: a streaming, singleflight pull-through cache for OCI registries.

The implementation lives in private modules; this is the public surface.
"""

from ._daemon._service import OcicacheService
from ._ops._config import Config, ConfigError, load_config
from ._ops._logging import json_observer
from ._version import __version__

__all__ = ["Config", "ConfigError", "OcicacheService", "__version__", "json_observer", "load_config"]
