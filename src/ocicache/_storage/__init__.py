"""
The cache on disk: the store of files, the SQLite metadata that describes
them, the disk thread pool, capacity and S3-FIFO eviction, and the janitor
that recovers, expires and cleans; and an S3 client for an object-store
backend.

May import: L{ocicache._spec}, L{ocicache._ops}.
"""
