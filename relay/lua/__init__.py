"""relay's Redis scripts, one operation a file; loaded by :mod:`relay.scripts`."""
