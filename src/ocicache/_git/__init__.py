"""
Git repositories through the cache: the smart-HTTP protocol's ref
advertisements passed to the upstream with each client's credentials, and
its upload-pack responses kept as entries of the fetch core
(L{ocicache._fetch}), verified before they are committed.  A protocol
front-end beside L{ocicache._oci}; see docs/design.md, "Adding a protocol".

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._storage},
L{ocicache._upstream}, L{ocicache._fetch}, L{ocicache._web}.  No other
front-end imports it.
"""
