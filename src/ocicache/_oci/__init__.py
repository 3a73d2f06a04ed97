"""
The image mirror: the first protocol front-end of the fetch core.  The
distribution-spec pull API (C{/v2/}) and the registry token flow
(C{/token}), its routing and grammar checks, and the services behind them:
blobs (the fetch core's tier walk over digests), manifests and tags
(TTL, one C{HEAD} revalidation per tag, stale-if-error, the fleet's shared
view), tag lists, referrers, warming and pins, and which repository has
shown it may read which digest.

Its services raise domain errors (L{_errors}), each naming the
distribution-spec error it is; the web layer answers them.

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._identity},
L{ocicache._policy}, L{ocicache._storage}, L{ocicache._upstream},
L{ocicache._fetch}, L{ocicache._web}.  Other front-ends do not import it.
"""
