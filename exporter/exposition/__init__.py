"""What /metrics serves: rendered parts (`render`, plain and deflated), the `store` that holds
them with each target's status, and the exporter's own metrics (`selfmetrics`)."""
