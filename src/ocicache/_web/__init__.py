"""
The HTTP side: routing and validation of client requests, the twisted.web
resources of the pull API, the client streamer, the registry Site, the
operator listener, and the one place where domain errors become
distribution-spec error responses.

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._identity},
L{ocicache._policy}, L{ocicache._upstream}, L{ocicache._cache}.  Nothing below imports it.
"""
