"""
The fetch core, the same for every protocol: an entry named by a key
(L{_key}) is looked up by walking tiers in order (L{_walk}: the local
store, the downloads in flight, another process's fill on the same store
(L{_elsewhere}), the S3 bucket), and a miss starts one fill however many
clients ask, in this process (L{_fills}) and on the host (L{_host_fills}:
under the key's lock), whose body goes into a sink
(L{_sink}: a L{_download.Download} into the store, or a
L{_passthrough.PassThrough} when the store refuses) that every waiting
client reads as it grows.  Nothing is committed unless the key's verifier
passes; the last byte is held back until it does.

A protocol front-end (L{ocicache._oci} for images) chooses its tiers, its
key kind and verifier, how access is proven, and what a miss fetches.

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._storage},
L{ocicache._upstream}.  It imports no front-end.
"""
