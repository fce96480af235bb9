"""The HTTP API: auth, ingest, events, keys, health, OpenAPI."""

from relay.api.app import create_app

__all__ = ["create_app"]
