"""
Git repositories through the cache: the smart-HTTP protocol's ref
advertisements passed to the upstream with each client's credentials, and
its upload-pack responses kept as entries of the fetch core
(L{ocicache._fetch}), verified before they are committed.
"""
