"""ioconnect host library: talk to boards (real or virtual) and check what they sign."""

__version__ = "0.1.0"
