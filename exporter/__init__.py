"""pg-health-exporter: PostgreSQL health metrics collected in the background, served from memory."""

__version__ = "0.1.0"
