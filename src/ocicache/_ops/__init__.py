"""
What the operator configures and observes: the TOML configuration and its
validation, the Prometheus metrics, and the structured log events.

Every layer may import these; they stay leaves.

May import: L{ocicache._spec}.
"""
