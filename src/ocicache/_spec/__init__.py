"""
The distribution-spec and the HTTP RFCs, as pure functions and values.

Reference grammar (names, tags, digests), byte ranges (RFC 9110 §14),
registry error codes, C{WWW-Authenticate} challenges and token responses,
and manifest media types.  No I/O, no Twisted.

May import: nothing of ocicache's.
"""
