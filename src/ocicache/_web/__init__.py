"""
The HTTP machinery every protocol front-end shares: the site and its
bounded channel (head size, timeouts, fair admission, graceful drain),
the root resource, sendfile and the streamer that send a fetch-core
L{ocicache._fetch._source.Source}, the operator listener, and the one
place where domain errors become distribution-spec error responses.

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._identity},
L{ocicache._policy}, L{ocicache._upstream}, L{ocicache._fetch}.  The
front-ends (L{ocicache._oci}) sit above it; nothing below imports it.
"""
