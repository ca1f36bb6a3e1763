"""`pg-health-exporter demo`: an embedded PostgreSQL (`embedded`), the planted problems and
traffic (`workload`), and the exporter serving them (`demo`). Never imported by the daemon."""
