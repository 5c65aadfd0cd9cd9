"""Errors shown to users as one line, without a traceback."""


class DQError(Exception):
    """Any failure caused by the user's input or environment."""
