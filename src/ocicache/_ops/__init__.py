"""
What the operator configures and observes: the TOML configuration and its
validation, the Prometheus metrics, and the structured log events.

Every layer may import these; they stay leaves.

May import: L{ocicache._spec}, and L{ocicache._identity._auth_files}: the
formats of the files C{[auth]} names, a module that imports nothing of
ours, read when the configuration loads so that a bad file stops the
daemon with one line naming its key.
"""
