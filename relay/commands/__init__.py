"""Command handlers behind ``relay.cli``: each takes Settings and parsed args, returns a status."""
