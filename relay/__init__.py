"""relay: a webhook relay for lead and contact data."""

from relay.errors import RelayError

__all__ = ["RelayError", "__version__"]

__version__ = "0.1.0"
