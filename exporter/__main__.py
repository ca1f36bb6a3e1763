"""`python -m exporter` runs the same command line as `pg-health-exporter`."""

from exporter.cli import main

raise SystemExit(main())
