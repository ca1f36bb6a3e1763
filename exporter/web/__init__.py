"""The HTTP side: the server (/metrics from the store, /healthz, the landing page in `html`),
and what `--web.config.file` asks for (`config`): TLS (`tls`) and basic auth (`basicauth`)."""
