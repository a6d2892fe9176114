"""What the agent reports about itself while it works, for metrics: how long the model takes to
start answering, and how long each tool call takes and whether it worked. The composition root
passes an implementation (frontdesk/metrics.py); the agent never imports a metrics library."""

from __future__ import annotations

from typing import Protocol


class AgentObserver(Protocol):
    def model_first_token(self, seconds: float) -> None:
        """From sending a model request to its first streamed chunk."""
        ...

    def tool_call(self, name: str, seconds: float, ok: bool) -> None:
        """One tool call: its name, how long it ran, and whether it answered without an error."""
        ...
