#!/usr/bin/env python3
"""Run check_open_relay from a checkout, without installing it."""

from plugin.cli import main

if __name__ == "__main__":
    main()
