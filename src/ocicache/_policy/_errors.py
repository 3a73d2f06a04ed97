"""
The policy's refusal, as a domain error (C{403 DENIED} in
L{ocicache._web._errors}).
"""

from __future__ import annotations

from attrs import frozen

from ._policy import Decision

__all__ = ["AccessDenied"]


@frozen
class AccessDenied(Exception):
    """
    The policy refused a request.  C{str()} is what the client is told:
    the reason, never who the client is nor which rule it met (the log
    line names that).
    """

    decision: Decision

    def __str__(self) -> str:
        return f"denied by the mirror's policy: {self.decision.reason}"
