"""
The pull-through cache itself: blob and manifest lookups, singleflight,
repository access proofs, and the download that takes one upstream body
to disk while clients read it.

Its services raise domain errors (L{ocicache._cache._errors}); they never
speak HTTP to clients.

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._upstream},
L{ocicache._storage}.
"""
