"""Pick the adapter class for a destination by its ``type``."""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp

from relay.adapters.base import Attempt
from relay.adapters.convertr import ConvertrAdapter
from relay.adapters.conveyour import ConveyourAdapter
from relay.adapters.webhook import WebhookAdapter
from relay.settings import ConvertrDestination, ConveyourDestination, WebhookDestination

__all__ = ["Adapter", "make_adapter"]


class Adapter(Protocol):
    """What the worker needs of an adapter: its destination's name and one attempt."""

    name: str

    async def deliver(self, event: dict[str, Any]) -> Attempt: ...


def make_adapter(
    name: str,
    config: ConveyourDestination | ConvertrDestination | WebhookDestination,
    session: aiohttp.ClientSession,
) -> ConveyourAdapter | ConvertrAdapter | WebhookAdapter:
    """The adapter for destination ``name``, sending through ``session``."""
    if config.type == "conveyour":
        return ConveyourAdapter(name, config, session)
    if config.type == "convertr":
        return ConvertrAdapter(name, config, session)
    if config.type == "webhook":
        return WebhookAdapter(name, config, session)
    raise ValueError(f"unknown destination type {config.type!r}")  # unreachable: pydantic checks
