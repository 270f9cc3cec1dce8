"""fieldtrack: real-time location telemetry for field-force management."""

__version__ = "0.1.0"
