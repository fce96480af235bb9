"""The web console: server-rendered pages under ``/console`` on the API's port."""

from relay.console.guard import console_middleware
from relay.console.mount import setup_console

__all__ = ["console_middleware", "setup_console"]
