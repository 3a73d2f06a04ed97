"""
Many ocicache nodes behind one load balancer, sharing one Redis, still
one upstream fetch per digest: the fill lock (L{_lock}), the registry of
nodes and of what each holds (L{_nodes}), the internal endpoint one node
streams a blob from another through (L{_internal}, L{_peer}), and the
fleet step of the blob lookup that ties them together (L{_fleet}); the
same step for git responses and files (L{_fleet.FleetArea}), and the
records of mutable files the nodes share (L{_records}).

Redis is reached through the one typed wrapper around txredisapi
(L{_redis}); when Redis is gone, every node falls back to its own local
singleflight.

It sits above the image mirror and the HTTP side: the mirror only knows
the L{ocicache._oci._blobs.FleetStep} and
L{ocicache._oci._manifest_fleet.SharedManifests} protocols, which this
implements.

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._upstream},
L{ocicache._storage}, L{ocicache._fetch}, L{ocicache._oci},
L{ocicache._web}.  Only L{ocicache._daemon} imports it.
"""
