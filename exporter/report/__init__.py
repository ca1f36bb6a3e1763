"""The health report: the exposition read back (`samples`), judged by one registry of checks
(`checks`) into findings (`findings`), built for a config (`build`) and written as text,
Markdown or JSON (`format`). No SQL: it judges what /metrics serves."""
