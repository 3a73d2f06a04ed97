"""
The twistd plugin: C{twistd ocicache}.  Everything is loaded lazily, so
scanning plugins imports neither ocicache nor the reactor.
"""

from twisted.application.service import ServiceMaker

ocicache = ServiceMaker(
    "ocicache",
    "ocicache._daemon._tap",
    "A streaming, singleflight pull-through cache for OCI registries",
    "ocicache",
)
