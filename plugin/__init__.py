"""check_open_relay: find open mail relays before spammers do."""

__version__ = "0.1.0"
