"""Adapters: one stored event in, one upstream request out, one :class:`Attempt` back."""

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import classify_status
from relay.adapters.convertr import ConvertrAdapter, check_mapping
from relay.adapters.conveyour import ConveyourAdapter
from relay.adapters.registry import Adapter, make_adapter
from relay.adapters.webhook import WebhookAdapter, sign

__all__ = [
    "Adapter",
    "Attempt",
    "ConvertrAdapter",
    "ConveyourAdapter",
    "Outcome",
    "WebhookAdapter",
    "check_mapping",
    "classify_status",
    "make_adapter",
    "sign",
]
