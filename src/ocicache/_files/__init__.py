"""
Package repositories and plain files through the cache: C{[[files]]}
remotes under C{/files/<name>/<path>}, their immutable files kept and their
mutable ones revalidated with one conditional GET, every file an entry of
the fetch core (L{ocicache._fetch}), and a package's bytes committed only
when they match the checksum its repository's cached index gives.  A
protocol front-end beside L{ocicache._oci}; see docs/design.md, "Adding a
protocol".

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._storage},
L{ocicache._upstream}, L{ocicache._fetch}, L{ocicache._web}.  No other
front-end imports it.
"""
