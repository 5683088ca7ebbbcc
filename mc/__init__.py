"""The Meeting Controller daemon: hosts meetings the Global Controller assigns."""

__version__ = "0.1.0"
