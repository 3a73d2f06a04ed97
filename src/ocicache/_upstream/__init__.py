"""
The client for upstream registries: requests, redirects that never carry
C{Authorization} to another origin, the registry token flow and its cache,
TLS policy, bounded, idle-timed body readers, and each upstream's pull
quota (Docker Hub's rate-limit headers, 429s obeyed).

It knows nothing of the cache: it returns responses and raises
L{ocicache._upstream._errors.UpstreamError}s.

May import: L{ocicache._spec}, L{ocicache._ops}.
"""
