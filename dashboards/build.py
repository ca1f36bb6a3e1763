"""Generate the Grafana dashboards of pg-health-exporter.

    python dashboards/build.py           rewrite dashboards/*.json
    python dashboards/build.py --check   exit 1 if a committed JSON file is stale

The dashboards are built with grafana-foundation-sdk, Grafana's typed builders for its
dashboard schema (the Grafana 10.4 line: see docs/dashboards.md), and written by its JSON
encoder: a panel option that the schema does not have, or a value of the wrong type, fails
here (no such builder method) or in mypy instead of being ignored by Grafana.

They are written by code so that all of them share the same template variables
(`datasource`, `target`, `datname`), units, thresholds, links and styling, and so that every
query is built by the same selector helper: every query filters by `$target`, and by
`$datname` where the metric has that label. Queries use only metrics listed in METRICS.md and
the recording rules of alerts/recording.yml; tests/stack/test_dashboards.py checks both.

Importing this module has no side effects: `dashboards()` builds the dashboards and
`panel_queries()` lists every panel query with the template variables replaced by "match all"
values, for tests that run the queries against a real Prometheus.
"""

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from grafana_foundation_sdk.builders.bargauge import Panel as BarGaugePanel
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    TableFooterOptions,
    TableSortByFieldState,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    FieldColor,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.gauge import Panel as GaugePanel
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimelinePanel
from grafana_foundation_sdk.builders.table import Panel as TablePanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

HERE = Path(__file__).resolve().parent

# Grafana 10.4 and 11.0 write schema 39; newer Grafana versions migrate it on load.
SCHEMA_VERSION = 39
TAGS = ["postgresql", "pg-health-exporter"]
# Every panel and query variable uses the data source chosen in the `datasource` variable,
# so the JSON imports into any Grafana without editing data source uids.
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# How many objects the "top N" panels show.
TOP = 10
TOP_TABLE = 20
# The labels that identify a statement.
STATEMENT = "target, datname, user, queryid"

# What panel_queries() puts in place of each template variable: "everything", with windows
# that a Prometheus scraping every 15s fills.
MATCH_ALL = {
    "target": ".+",
    "datname": ".+",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

Json = dict[str, Any]


# --- queries ----------------------------------------------------------------------------------


def sel(metric: str, *, db: bool = True, extra: str = "") -> str:
    """`metric{target=~"$target",datname=~"$datname",extra}`; `db=False` for metrics without
    a datname label (server-wide metrics, the exporter's own)."""
    matchers = ['target=~"$target"']
    if db:
        matchers.append('datname=~"$datname"')
    if extra:
        matchers.append(extra)
    return f"{metric}{{{','.join(matchers)}}}"


def rate(metric: str, *, db: bool = True, extra: str = "") -> str:
    """Per-second rate of a counter (a `_total` metric) over Grafana's rate interval."""
    return f"rate({sel(metric, db=db, extra=extra)}[$__rate_interval])"


def topk(expr: str, k: int = TOP) -> str:
    return f"topk({k}, {expr})"


def hit_ratio(hit: str, read: str) -> str:
    """Share of block requests served from shared buffers, from two counters."""
    return f"{rate(hit)} / ({rate(hit)} + {rate(read)})"


@dataclass(frozen=True)
class Query:
    """One target of a panel: the expression and its legend."""

    expr: str
    legend: str = ""


# --- panels -----------------------------------------------------------------------------------

# Thresholds as (from value, colour); the first step starts at minus infinity. Where an alert
# of alerts/alerts.yml watches the same number, the colours change at its default thresholds,
# so a red panel and a firing alert agree.
Steps = Sequence[tuple[float | None, str]]
GREEN_ONLY: Steps = ((None, "green"),)
# Cache hit ratios: the alerts fire below 90%; 99% and above is what an OLTP database sees.
HIT_RATIO: Steps = ((None, "red"), (0.9, "orange"), (0.99, "green"))
# Connections: warning above 80% of the limit, critical above 95%.
CONNECTIONS: Steps = ((None, "green"), (0.8, "orange"), (0.95, "red"))
# Sequences (the alerts' thresholds) and other shares of a limit.
USED_RATIO: Steps = ((None, "green"), (0.75, "orange"), (0.9, "red"))
# Transaction ID age as a share of the wraparound limit: warning at half, critical at 75%.
WRAPAROUND: Steps = ((None, "green"), (0.5, "orange"), (0.75, "red"))
# Bloat: the alerts want at least half the relation (and 100 MiB) to be bloat.
BLOAT: Steps = ((None, "green"), (0.5, "orange"))
# Dead rows: the alert wants more than 20% of the rows (and 10,000) to be dead.
DEAD_ROWS: Steps = ((None, "green"), (0.2, "orange"))
# Counts of problems: anything above zero wants a look.
PROBLEMS: Steps = ((None, "green"), (1, "orange"))

Mappings = tuple[model.ValueMapping, ...]


def value_texts(*texts: tuple[str, str, str]) -> Mappings:
    """Show each (value, text, colour) as its text in its colour."""
    results = {
        value: model.ValueMappingResult(text=text, color=colour, index=index)
        for index, (value, text, colour) in enumerate(texts)
    }
    return (model.ValueMap(options=results),)


UP_MAPPINGS = value_texts(("0", "down", "red"), ("1", "up", "green"))

# The SDK's panel builders share no base class but Builder; these are the kinds used here.
# A function taking any of them keeps the kind it was given.
P = TypeVar(
    "P", BarGaugePanel, GaugePanel, StatPanel, StateTimelinePanel, TablePanel, TimeseriesPanel
)
PanelBuilder = (
    BarGaugePanel | GaugePanel | StatPanel | StateTimelinePanel | TablePanel | TimeseriesPanel
)


def _thresholds(steps: Steps) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=colour) for value, colour in steps])
    )


def _target(query: Query, ref_id: str, *, instant: bool, table: bool) -> Dataquery:
    """Range queries for graphs; instant ones for bar gauges (one bar per series, named by
    the legend) and tables (label columns: table format, which ignores the legend)."""
    target = (
        Dataquery()
        .datasource(DATASOURCE)
        .editor_mode(QueryEditorMode.CODE)
        .expr(query.expr)
        .format(PromQueryFormat.TABLE if table else PromQueryFormat.TIME_SERIES)
        .legend_format(query.legend or "__auto")
        .ref_id(ref_id)
    )
    return target.instant() if instant else target.range()


def _panel(
    panel: P,
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    instant: bool,
    steps: Steps = GREEN_ONLY,
) -> P:
    """What every panel has: title, description, data source, targets and thresholds."""
    panel = panel.title(title).description(description).datasource(DATASOURCE)
    table = isinstance(panel, TablePanel)
    for index, query in enumerate(queries):
        ref_id = chr(ord("A") + index)
        panel = panel.with_target(_target(query, ref_id, instant=instant, table=table))
    return panel.thresholds(_thresholds(steps))


def _bounds(panel: P, min_: float | None, max_: float | None) -> P:
    """The axis or gauge range; Grafana fits the data where a bound is not set."""
    if min_ is not None:
        panel = panel.min(min_)
    if max_ is not None:
        panel = panel.max(max_)
    return panel


def _by_value() -> FieldColor:
    """Single values (stats, gauges, bar gauges, states) take the colour of their threshold
    step."""
    return FieldColor().mode(model.FieldColorModeId.THRESHOLDS)


def _last_value() -> ReduceDataOptions:
    """Stats, gauges and bar gauges show each series' last value."""
    return ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries(
    title: str,
    description: str,
    *queries: Query,
    unit: str = "short",
    axis: str = "",
    min_: float | None = 0,
    max_: float | None = None,
    steps: Steps = GREEN_ONLY,
    stack: bool = False,
    threshold_lines: bool = False,
) -> TimeseriesPanel:
    panel = _panel(TimeseriesPanel(), title, description, queries, instant=False, steps=steps)
    stacking = common.StackingMode.NORMAL if stack else common.StackingMode.NONE
    lines = (
        common.GraphThresholdsStyleMode.DASHED
        if threshold_lines
        else common.GraphThresholdsStyleMode.OFF
    )
    return (
        _bounds(panel, min_, max_)
        .unit(unit)
        .color_scheme(FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .axis_label(axis)
        .draw_style(common.GraphDrawStyle.LINE)
        .fill_opacity(30 if stack else 10)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(StackingConfig().group("A").mode(stacking))
        .thresholds_style(GraphThresholdsStyleConfig().mode(lines))
        .legend(
            VizLegendOptions()
            .calcs(["lastNotNull", "max"])
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .sort_by("Max")
            .sort_desc(True)
        )
        .tooltip(
            VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )


def stat(
    title: str,
    description: str,
    *queries: Query,
    unit: str = "short",
    steps: Steps = GREEN_ONLY,
    mappings: Mappings = (),
    text_mode: common.BigValueTextMode = common.BigValueTextMode.VALUE_AND_NAME,
    graph: bool = False,
) -> StatPanel:
    return (
        _panel(StatPanel(), title, description, queries, instant=False, steps=steps)
        .unit(unit)
        .color_scheme(_by_value())
        .mappings(list(mappings))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA if graph else common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .reduce_options(_last_value())
        .text_mode(text_mode)
        .wide_layout(True)
    )


def gauge(
    title: str, description: str, *queries: Query, unit: str, steps: Steps, max_: float
) -> GaugePanel:
    return (
        _panel(GaugePanel(), title, description, queries, instant=False, steps=steps)
        .unit(unit)
        .color_scheme(_by_value())
        .min(0)
        .max(max_)
        .orientation(common.VizOrientation.AUTO)
        .reduce_options(_last_value())
        .show_threshold_labels(False)
        .show_threshold_markers(True)
    )


def bargauge(
    title: str,
    description: str,
    *queries: Query,
    unit: str,
    steps: Steps = GREEN_ONLY,
) -> BarGaugePanel:
    return (
        _panel(BarGaugePanel(), title, description, queries, instant=True, steps=steps)
        .unit(unit)
        .color_scheme(_by_value())
        .min(0)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .min_viz_height(16)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(_last_value())
        .show_unfilled(True)
        .value_mode(common.BarGaugeValueMode.COLOR)
    )


def state_timeline(
    title: str, description: str, *queries: Query, mappings: Mappings
) -> StateTimelinePanel:
    steps = ((None, "red"), (1, "green"))
    return (
        _panel(StateTimelinePanel(), title, description, queries, instant=False, steps=steps)
        .unit("short")
        .color_scheme(_by_value())
        .mappings(list(mappings))
        .fill_opacity(80)
        .line_width(0)
        .align_value(common.TimelineValueAlignment.LEFT)
        .legend(
            VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(False)
        )
        .merge_values(True)
        .row_height(0.9)
        .show_value(common.VisibilityMode.NEVER)
        .tooltip(
            VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE).sort(common.SortOrder.NONE)
        )
    )


@dataclass(frozen=True)
class Column:
    """A value column of a table: one instant query, shown under `name` in `unit`; `hidden`
    for a query that only lists label sets (its value says nothing)."""

    name: str
    expr: str
    unit: str = "short"
    steps: Steps = GREEN_ONLY
    mappings: Mappings = ()
    colour: bool = False
    hidden: bool = False

    def properties(self) -> list[model.DynamicConfigValue]:
        """The field overrides that format this column."""
        properties = [
            model.DynamicConfigValue(id_val="unit", value=self.unit),
            model.DynamicConfigValue(id_val="thresholds", value=_thresholds(self.steps).build()),
        ]
        if self.mappings:
            properties.append(
                model.DynamicConfigValue(id_val="mappings", value=list(self.mappings))
            )
        if self.colour:
            properties.append(
                model.DynamicConfigValue(
                    id_val="custom.cellOptions", value=common.TableColorTextCellOptions()
                )
            )
        return properties


# Fields a table never shows: the time of the instant query, the metric name and the scrape's
# own labels. They are dropped from each query's frame before the frames are merged, since
# the merge joins rows on the fields all frames have and keeps rows apart where a field
# differs (every column's query has another __name__).
_HIDDEN_FIELDS = ("Time", "__name__", "instance", "job")


def _organize(options: Json) -> model.DataTransformerConfig:
    # Transformation options are free-form in Grafana's schema, so in the SDK's too.
    return model.DataTransformerConfig(id_val="organize", options=options)


def _table_transformations(
    labels: Sequence[str], columns: Sequence[Column], hide: Sequence[str]
) -> list[model.DataTransformerConfig]:
    """Merge the columns' frames into one (joined on their labels), then order, hide and
    rename the fields."""
    # Grafana names the value field of an instant table query "Value", or "Value #<refId>"
    # when several queries return data.
    if len(columns) == 1:
        value_fields = ["Value"]
    else:
        value_fields = [f"Value #{chr(ord('A') + i)}" for i in range(len(columns))]
    hidden = {name: True for name in _HIDDEN_FIELDS}
    transformations = []
    if len(columns) > 1:
        transformations += [
            _organize({"excludeByName": hidden}),
            model.DataTransformerConfig(id_val="merge", options={}),
        ]
    named = list(zip(value_fields, columns, strict=True))
    transformations.append(
        _organize(
            {
                "excludeByName": {
                    **hidden,
                    **{name: True for name in hide},
                    **{field: True for field, column in named if column.hidden},
                },
                "indexByName": {name: index for index, name in enumerate([*labels, *value_fields])},
                "renameByName": {
                    field: column.name for field, column in named if not column.hidden
                },
            }
        )
    )
    return transformations


def table(
    title: str,
    description: str,
    labels: Sequence[str],
    *columns: Column,
    sort_by: str | None = None,
    hide: Sequence[str] = (),
) -> TablePanel:
    """A table with the label columns `labels` (in this order, `hide` left out) and one value
    column per Column. Several columns are joined on their labels (Grafana's merge
    transformation), so every column's query must return the same label names."""
    queries = [Query(column.expr) for column in columns]
    panel = _panel(TablePanel(), title, description, queries, instant=True)
    for column in columns:
        panel = panel.override_by_name(column.name, column.properties())
    for transformation in _table_transformations(labels, columns, hide):
        panel = panel.with_transformation(transformation)
    shown = [column.name for column in columns if not column.hidden]
    return (
        panel.align(common.FieldTextAlignment.AUTO)
        .cell_options(common.TableAutoCellOptions())
        .filterable(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(TableFooterOptions().show(False).reducer(["sum"]))
        .show_header(True)
        .sort_by([TableSortByFieldState().display_name(sort_by or shown[0]).desc(True)])
    )


# --- dashboards -------------------------------------------------------------------------------


class _QueryVariableModel(model.VariableModel):
    """A variable model that also writes `definition`: the text Grafana shows for a variable's
    query in its settings, and writes into the JSON it saves. The Grafana 10.4 schema this SDK
    line is generated from has no such field, so the SDK cannot set it."""

    definition: str | None = None

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        if self.definition is not None:
            payload["definition"] = self.definition
        return payload


class _QueryVariable(QueryVariable):
    """The SDK's query variable builder, building the model above."""

    _internal: _QueryVariableModel

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._internal = _QueryVariableModel(type_val=model.VariableType.QUERY, name=name)

    def definition(self, definition: str) -> Self:
        self._internal.definition = definition
        return self


def _query_variable(name: str, label: str, query: str) -> _QueryVariable:
    return (
        _QueryVariable(name)
        .label(label)
        .hide(model.VariableHide.DONT_HIDE)
        .datasource(DATASOURCE)
        # The classic string form: Grafana's query editor object form with qryType 1
        # would need the metric and label in separate fields and ignore this string.
        .query(query)
        .definition(query)
        .multi(True)
        .include_all(True)
        # `.+` instead of a list of every value: short queries, and series of values the
        # variable query did not list (a PgBouncer pool, a database created since) match.
        .all_value(".+")
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .options([])
        # On time range change: new targets and databases appear.
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .regex("")
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def _variables() -> list[Builder[model.VariableModel]]:
    """The same three variables on every dashboard."""
    return [
        # No current value, options or refresh: the SDK's builder has no setters for them, and
        # Grafana starts a datasource variable without them at {}, [] and "on dashboard load".
        DatasourceVariable("datasource")
        .label("Data source")
        .hide(model.VariableHide.DONT_HIDE)
        .type("prometheus")
        .multi(False)
        .include_all(False)
        .regex(""),
        _query_variable("target", "Target", "label_values(pg_up, target)"),
        _query_variable(
            "datname",
            "Database",
            'label_values(pg_database_size_bytes{target=~"$target"}, datname)',
        ),
    ]


def _menu_link() -> DashboardLink:
    """Every dashboard tagged pg-health-exporter, keeping the time range and the chosen
    datasource, target and database."""
    return (
        DashboardLink("PostgreSQL health")
        .type(model.DashboardLinkType.DASHBOARDS)
        .as_dropdown(True)
        .icon("external link")
        .include_vars(True)
        .keep_time(True)
        .tags(["pg-health-exporter"])
        .target_blank(False)
        .tooltip("")
        .url("")
    )


def _annotations() -> AnnotationQuery:
    """Grafana's built-in annotations and alerts, as Grafana adds them to a new dashboard."""
    return (
        AnnotationQuery()
        .built_in(1)
        .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .name("Annotations & Alerts")
        .type("dashboard")
    )


# Panel sizes on Grafana's 24-column grid.
FULL, HALF, THIRD, QUARTER, SIXTH = 24, 12, 8, 6, 4


@dataclass(frozen=True)
class Spec:
    """A dashboard: file name, uid, title, what it is for, and its rows and panels (with their
    widths and heights) in reading order. The SDK's Dashboard builder lays them out: panels
    left to right, a new line once one is full, a row on a line of its own. It starts a new
    line only after a panel reaches the right edge, so the widths on a line must add up to 24
    (test_panels_fit_the_grid_without_overlapping fails on one that sticks out)."""

    file: str
    uid: str
    title: str
    description: str
    panels: Sequence[Row | tuple[PanelBuilder, int, int]]


def render(spec: Spec) -> model.Dashboard:
    dashboard = (
        Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(TAGS)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        # "": each viewer's own time zone setting (the SDK's default is "browser").
        .timezone("")
        .week_start("")
        .fiscal_year_start_month(0)
        .refresh("1m")
        .version(1)
        .annotation(_annotations())
        .link(_menu_link())
        .variables(_variables())
    )
    for index, entry in enumerate(spec.panels, start=1):
        if isinstance(entry, Row):
            dashboard = dashboard.with_row(entry.id(index))
        else:
            panel, width, height = entry
            dashboard = dashboard.with_panel(panel.id(index).span(width).height(height))
    built = dashboard.build()
    # The Dashboard builder has no setter for the schema version, and the models of the
    # Grafana 10.4 line default to 36: Grafana would then run on this JSON the migrations
    # written for versions 37 to 39, which it does not need.
    built.schema_version = SCHEMA_VERSION
    return built


def _overview() -> Spec:
    firing = sel("ALERTS", db=False, extra='alertstate="firing"')
    connections = "sum by (target) (" + sel("pg_connections_backends") + ")"
    ordinary_limit = (
        f"{sel('pg_connections_max', db=False)}"
        f" - {sel('pg_connections_superuser_reserved', db=False)}"
        f" - {sel('pg_connections_reserved', db=False)}"
    )
    return Spec(
        file="overview.json",
        uid="pg-health-overview",
        title="PostgreSQL health / Overview",
        description=(
            "Is each PostgreSQL server up, how busy and how healthy is it, and which alerts fire."
        ),
        panels=[
            Row("Status"),
            (
                stat(
                    "Targets up",
                    (
                        "pg_up: 1 while the exporter's last connection to the target succeeded, 0 "
                        "as soon as one fails."
                    ),
                    Query(sel("pg_up", db=False), "{{target}}"),
                    steps=((None, "red"), (1, "green")),
                    mappings=UP_MAPPINGS,
                ),
                QUARTER,
                4,
            ),
            (
                stat(
                    "Server version",
                    "PostgreSQL version of each target (pg_server_info).",
                    Query(sel("pg_server_info", db=False), "{{target}}: {{version}}"),
                    text_mode=common.BigValueTextMode.NAME,
                ),
                QUARTER,
                4,
            ),
            (
                stat(
                    "Uptime",
                    "Time since the server started.",
                    Query(
                        f"time() - {sel('pg_server_start_timestamp_seconds', db=False)}",
                        "{{target}}",
                    ),
                    unit="s",
                ),
                QUARTER,
                4,
            ),
            (
                stat(
                    "Firing alerts",
                    (
                        "Alerts firing now for the selected targets (Prometheus' ALERTS series); "
                        "the table at the bottom lists them."
                    ),
                    Query(f"count({firing}) or vector(0)", "firing"),
                    steps=PROBLEMS,
                ),
                QUARTER,
                4,
            ),
            Row("Connections"),
            (
                timeseries(
                    "Connections and the limit",
                    (
                        "Client connections to the selected databases, and the most ordinary roles "
                        "may open (max_connections minus superuser_reserved_connections and "
                        "reserved_connections)."
                    ),
                    Query(connections, "{{target}} connections"),
                    Query(ordinary_limit, "{{target}} limit"),
                    axis="connections",
                ),
                HALF,
                8,
            ),
            (
                timeseries(
                    "Connection utilisation",
                    (
                        "Highest share of the connection limit in use over the last 5 minutes "
                        "(pg:connections_used_ratio:max5m). At 100% new connections of ordinary "
                        "roles are refused."
                    ),
                    Query(sel("pg:connections_used_ratio:max5m", db=False), "{{target}}"),
                    unit="percentunit",
                    max_=1,
                    steps=CONNECTIONS,
                    threshold_lines=True,
                ),
                HALF,
                8,
            ),
            Row("Cache and transactions"),
            (
                timeseries(
                    "Heap cache hit ratio",
                    (
                        "Share of table block reads served from shared buffers over 5 minutes "
                        "(pg:heap_cache_hit_ratio:rate5m), per database."
                    ),
                    Query(sel("pg:heap_cache_hit_ratio:rate5m"), "{{target}} {{datname}}"),
                    unit="percentunit",
                    min_=None,
                    max_=1,
                    steps=HIT_RATIO,
                    threshold_lines=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Index cache hit ratio",
                    (
                        "Share of index block reads served from shared buffers over 5 minutes "
                        "(pg:index_cache_hit_ratio:rate5m), per database."
                    ),
                    Query(sel("pg:index_cache_hit_ratio:rate5m"), "{{target}} {{datname}}"),
                    unit="percentunit",
                    min_=None,
                    max_=1,
                    steps=HIT_RATIO,
                    threshold_lines=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Database cache hit ratio",
                    (
                        "Share of all block reads of the database (tables, indexes, TOAST, "
                        "catalogs) served from shared buffers over 5 minutes "
                        "(pg:database_cache_hit_ratio:rate5m)."
                    ),
                    Query(sel("pg:database_cache_hit_ratio:rate5m"), "{{target}} {{datname}}"),
                    unit="percentunit",
                    min_=None,
                    max_=1,
                    steps=HIT_RATIO,
                    threshold_lines=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Transactions",
                    (
                        "Transactions committed and rolled back per second, over 5 minutes "
                        "(pg:transactions:rate5m)."
                    ),
                    Query(sel("pg:transactions:rate5m"), "{{target}} {{datname}}"),
                    axis="transactions/s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Rollback ratio",
                    (
                        "Share of transactions that rolled back, over 5 minutes "
                        "(pg:rollback_ratio:rate5m). Errors, deadlocks and serialization failures "
                        "roll back."
                    ),
                    Query(sel("pg:rollback_ratio:rate5m"), "{{target}} {{datname}}"),
                    unit="percentunit",
                    max_=1,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Deadlocks and temporary files",
                    (
                        "Deadlocks detected, and temporary files created by queries spilling to "
                        "disk, per minute."
                    ),
                    Query(
                        f"60 * {rate('pg_database_deadlocks_total')}",
                        "{{target}} {{datname}} deadlocks",
                    ),
                    Query(
                        f"60 * {rate('pg_database_temp_files_total')}",
                        "{{target}} {{datname}} temp files",
                    ),
                    axis="per minute",
                ),
                THIRD,
                8,
            ),
            Row("Databases"),
            (
                bargauge(
                    "Database sizes",
                    (
                        "Disk space used by each database (pg_database_size_bytes, measured every "
                        "5 minutes)."
                    ),
                    Query(sel("pg_database_size_bytes"), "{{target}} {{datname}}"),
                    unit="bytes",
                ),
                QUARTER,
                8,
            ),
            (
                timeseries(
                    "Database size over time",
                    "Disk space used by each database.",
                    Query(sel("pg_database_size_bytes"), "{{target}} {{datname}}"),
                    unit="bytes",
                ),
                QUARTER,
                8,
            ),
            (
                bargauge(
                    "Database size in 7 days",
                    (
                        "Each database's size 7 days ahead by a linear fit over the last day "
                        "(pg:database_size_bytes:predict_linear7d); it needs a day of data to mean "
                        "much."
                    ),
                    Query(sel("pg:database_size_bytes:predict_linear7d"), "{{target}} {{datname}}"),
                    unit="bytes",
                ),
                QUARTER,
                8,
            ),
            (
                timeseries(
                    "Transaction ID age",
                    (
                        "Age of each database's oldest unfrozen transaction ID as a share of the "
                        "2^31 wraparound limit; autovacuum's anti-wraparound vacuums should keep "
                        "it low."
                    ),
                    Query(sel("pg_wraparound_xid_ratio"), "{{target}} {{datname}}"),
                    unit="percentunit",
                    steps=WRAPAROUND,
                ),
                QUARTER,
                8,
            ),
            Row("Alerts"),
            (
                table(
                    "Alerts firing now",
                    (
                        "Alerts firing now for the selected targets, with their labels. The "
                        "runbook of each is linked from its runbook_url annotation in Alertmanager."
                    ),
                    ["alertname", "severity", "target", "datname"],
                    Column("Firing", firing, hidden=True),
                    sort_by="severity",
                    hide=["alertstate"],
                ),
                FULL,
                8,
            ),
        ],
    )


def _statement_columns() -> list[Column]:
    """The top statements by execution time, each column restricted to the same statements;
    with the text from pg_statement_text_info where the opt-in statement_text collector runs
    (otherwise the rows simply have no text)."""
    top = topk(sel("pg:statement_exec_time_seconds:rate5m"))
    text = sel("pg_statement_text_info")

    def with_text(expr: str) -> str:
        # Same label set for every column (merge joins on labels): the query label where a
        # text exists; `or` keeps the statements that have none.
        restricted = f"({expr} and on({STATEMENT}) {top})"
        joined = f"({restricted} * on({STATEMENT}) group_left(query) {text})"
        return f"{joined} or on({STATEMENT}) {restricted}"

    return [
        Column("Exec time/s", with_text(sel("pg:statement_exec_time_seconds:rate5m")), "s"),
        Column("Mean time", with_text(sel("pg:statement_mean_exec_time_seconds:rate5m")), "s"),
        Column("Calls/s", with_text(sel("pg:statement_calls:rate5m"))),
        Column("Rows/s", with_text(rate("pg_statements_rows_total"))),
        Column(
            "Cache hit",
            with_text(
                hit_ratio(
                    "pg_statements_shared_blks_hit_total", "pg_statements_shared_blks_read_total"
                )
            ),
            "percentunit",
            HIT_RATIO,
            colour=True,
        ),
        Column("Temp blocks written/s", with_text(rate("pg_statements_temp_blks_written_total"))),
    ]


def _queries() -> Spec:
    legend = "{{datname}} {{user}} {{queryid}}"
    tracked_share = (
        f"{sel('pg_statements_tracked', db=False)} / {sel('pg_statements_max', db=False)}"
    )
    return Spec(
        file="queries.json",
        uid="pg-health-queries",
        title="PostgreSQL health / Query performance",
        description=(
            "The costliest statements (pg_stat_statements): time, calls, rows, block I/O and "
            "temporary files."
        ),
        panels=[
            Row("Top statements"),
            (
                table(
                    "Top statements by execution time",
                    f"The {TOP} statements that spent the most time executing over the last 5 "
                    "minutes. Exec time/s is seconds of execution per second (1 = one backend busy "
                    "all the time). The text appears when the opt-in statement_text collector is "
                    "enabled; otherwise look the queryid up: "
                    "SELECT query FROM pg_stat_statements WHERE queryid = ...",
                    ["target", "datname", "user", "queryid", "query"],
                    *_statement_columns(),
                ),
                FULL,
                10,
            ),
            (
                timeseries(
                    "Execution time per second",
                    (
                        f"Top {TOP} statements by time spent executing "
                        f"(pg:statement_exec_time_seconds:rate5m): seconds of execution per second."
                    ),
                    Query(topk(sel("pg:statement_exec_time_seconds:rate5m")), legend),
                    unit="s",
                    axis="execution s/s",
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Mean execution time",
                    (
                        f"Top {TOP} statements by mean execution time over 5 minutes "
                        f"(pg:statement_mean_exec_time_seconds:rate5m): statements not called in "
                        f"the window have none."
                    ),
                    Query(topk(sel("pg:statement_mean_exec_time_seconds:rate5m") + " > 0"), legend),
                    unit="s",
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Calls",
                    f"Top {TOP} statements by executions per second (pg:statement_calls:rate5m).",
                    Query(topk(sel("pg:statement_calls:rate5m")), legend),
                    axis="calls/s",
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Rows",
                    f"Top {TOP} statements by rows returned or affected per second.",
                    Query(topk(rate("pg_statements_rows_total")), legend),
                    axis="rows/s",
                ),
                HALF,
                9,
            ),
            Row("Block I/O and temporary files"),
            (
                timeseries(
                    "Shared blocks read",
                    (
                        f"Top {TOP} statements by blocks read into shared buffers per second "
                        f"(cache misses: from the OS cache or disk)."
                    ),
                    Query(topk(rate("pg_statements_shared_blks_read_total")), legend),
                    axis="blocks/s",
                ),
                THIRD,
                9,
            ),
            (
                timeseries(
                    "Shared blocks hit",
                    f"Top {TOP} statements by blocks found in shared buffers per second.",
                    Query(topk(rate("pg_statements_shared_blks_hit_total")), legend),
                    axis="blocks/s",
                ),
                THIRD,
                9,
            ),
            (
                timeseries(
                    "Temporary blocks written",
                    (
                        f"Top {TOP} statements by temporary file blocks written per second: sorts "
                        f"and hashes that did not fit in work_mem."
                    ),
                    Query(topk(rate("pg_statements_temp_blks_written_total")), legend),
                    axis="blocks/s",
                ),
                THIRD,
                9,
            ),
            (
                timeseries(
                    "Statement cache hit ratio per database",
                    (
                        "Share of the shared blocks all tracked statements of the database needed "
                        "that were already in shared buffers."
                    ),
                    Query(
                        hit_ratio(
                            "pg_statements_all_shared_blks_hit_total",
                            "pg_statements_all_shared_blks_read_total",
                        ),
                        "{{target}} {{datname}}",
                    ),
                    unit="percentunit",
                    min_=None,
                    max_=1,
                    steps=HIT_RATIO,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Temporary file bytes per database",
                    "Bytes written to temporary files per second, per database (pg_stat_database).",
                    Query(rate("pg_database_temp_bytes_total"), "{{target}} {{datname}}"),
                    unit="Bps",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Temporary blocks per database",
                    (
                        "Temporary file blocks written and read per second by all tracked "
                        "statements of the database."
                    ),
                    Query(
                        rate("pg_statements_all_temp_blks_written_total"),
                        "{{target}} {{datname}} written",
                    ),
                    Query(
                        rate("pg_statements_all_temp_blks_read_total"),
                        "{{target}} {{datname}} read",
                    ),
                    axis="blocks/s",
                ),
                THIRD,
                8,
            ),
            Row("Per database"),
            (
                timeseries(
                    "Execution time per database",
                    (
                        "Seconds of statement execution per second, all tracked statements of the "
                        "database."
                    ),
                    Query(
                        rate("pg_statements_all_exec_time_seconds_total"), "{{target}} {{datname}}"
                    ),
                    unit="s",
                    axis="execution s/s",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Calls per database",
                    "Statement executions per second, all tracked statements of the database.",
                    Query(rate("pg_statements_all_calls_total"), "{{target}} {{datname}}"),
                    axis="calls/s",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "pg_stat_statements capacity",
                    (
                        "Statements tracked as a share of pg_stat_statements.max, and evictions of "
                        "the least used statements per minute (PostgreSQL 14+); frequent evictions "
                        "make the statistics unreliable: raise pg_stat_statements.max."
                    ),
                    Query(
                        tracked_share,
                        "{{target}} tracked / max",
                    ),
                    Query(
                        f"60 * {rate('pg_statements_dealloc_total', db=False)}",
                        "{{target}} evictions/min",
                    ),
                    unit="percentunit",
                ),
                THIRD,
                8,
            ),
        ],
    )


OBJECT = ["target", "datname", "schemaname", "relname"]
INDEX = [*OBJECT, "indexrelname"]


def _tables() -> Spec:
    table_legend = "{{datname}} {{schemaname}}.{{relname}}"
    index_legend = "{{datname}} {{schemaname}}.{{indexrelname}}"
    by_table = "target, datname, schemaname, relname"

    def top_table(metric: str, label: str, unit: str = "bytes") -> list[Column]:
        return [Column(label, topk(sel(metric), TOP_TABLE), unit)]

    def bloat_columns(kind: str, labels: str) -> list[Column]:
        top = topk(sel(f"pg_bloat_{kind}_bytes"), TOP_TABLE)
        return [
            Column("Bloat", top, "bytes"),
            Column(
                "Bloat ratio",
                f"{sel(f'pg_bloat_{kind}_ratio')} and on({labels}) {top}",
                "percentunit",
                BLOAT,
                colour=True,
            ),
        ]

    def since(metric: str) -> str:
        return f"time() - {sel(metric)}"

    # Tables and indexes in one query, told apart by a relkind label: a count is published
    # only for a reason that applies, so either may be absent when everything was measured.
    unmeasured = " or ".join(
        f'label_replace({sel(f"pg_bloat_{kind}_unmeasured")}, "relkind", "{kind}", "", "")'
        for kind in ("tables", "indexes")
    )

    return Spec(
        file="tables.json",
        uid="pg-health-tables",
        title="PostgreSQL health / Tables and indexes",
        description=(
            "Index health findings, index usage, bloat, dead rows, vacuum and analyze, sizes and "
            "sequences."
        ),
        panels=[
            Row("Index health"),
            (
                bargauge(
                    "Findings by check",
                    (
                        "Objects each index health check flags, per database (all of them, also "
                        "those not listed one by one below). Checks run every 15 minutes."
                    ),
                    Query(sel("pg_index_health_problems"), "{{datname}}: {{check}}"),
                    unit="short",
                    steps=PROBLEMS,
                ),
                THIRD,
                9,
            ),
            (
                table(
                    "Unused indexes",
                    (
                        "Indexes never scanned since statistics were last reset, at least "
                        "unused_min_bytes, not backing a constraint or a foreign key. Check "
                        "standbys before dropping: their scans are not counted here."
                    ),
                    INDEX,
                    *top_table("pg_index_health_unused_index_size_bytes", "Size"),
                ),
                THIRD * 2,
                9,
            ),
            (
                table(
                    "Duplicate indexes",
                    (
                        "Indexes with the same definition as the index in duplicate_of, which is "
                        "the one to keep."
                    ),
                    [*INDEX, "duplicate_of"],
                    *top_table("pg_index_health_duplicate_index_size_bytes", "Size"),
                ),
                HALF,
                8,
            ),
            (
                table(
                    "Redundant indexes",
                    (
                        "B-tree indexes whose columns lead the index in covered_by, which serves "
                        "the same lookups."
                    ),
                    [*INDEX, "covered_by"],
                    *top_table("pg_index_health_redundant_index_size_bytes", "Size"),
                ),
                HALF,
                8,
            ),
            (
                table(
                    "Invalid indexes",
                    (
                        "Indexes left invalid by a failed CREATE INDEX CONCURRENTLY or REINDEX "
                        "CONCURRENTLY: never used by queries, still updated by writes. Drop and "
                        "build them again."
                    ),
                    INDEX,
                    *top_table("pg_index_health_invalid_index_size_bytes", "Size"),
                ),
                THIRD,
                8,
            ),
            (
                table(
                    "Tables probably missing an index",
                    (
                        "Large tables whose sequential scans read far more rows than their index "
                        "scans fetch. The value is the rows read by sequential scans since "
                        "statistics were reset."
                    ),
                    OBJECT,
                    *top_table(
                        "pg_index_health_missing_index_seq_tup_read_total",
                        "Rows read sequentially",
                        "short",
                    ),
                ),
                THIRD,
                8,
            ),
            (
                table(
                    "Foreign keys without an index",
                    (
                        "Foreign keys (conname) whose columns lead no index of the table: deleting "
                        "or updating a referenced row scans the whole table."
                    ),
                    [*OBJECT, "conname", "columns"],
                    Column("Flagged", sel("pg_index_health_unindexed_foreign_key"), hidden=True),
                    sort_by="relname",
                ),
                THIRD,
                8,
            ),
            Row("Index usage"),
            (
                timeseries(
                    "Index scans",
                    f"Top {TOP} indexes by scans per second.",
                    Query(topk(rate("pg_indexes_idx_scan_total")), index_legend),
                    axis="scans/s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Sequential and index scans per database",
                    "Scans started per second on all user tables of the database.",
                    Query(
                        rate("pg_tables_all_seq_scan_total"), "{{target}} {{datname}} sequential"
                    ),
                    Query(rate("pg_tables_all_idx_scan_total"), "{{target}} {{datname}} index"),
                    axis="scans/s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Rows read by sequential scans",
                    (
                        f"Top {TOP} tables by rows read per second by sequential scans: large "
                        f"values on big tables suggest a missing index."
                    ),
                    Query(topk(rate("pg_tables_seq_tup_read_total")), table_legend),
                    axis="rows/s",
                ),
                THIRD,
                8,
            ),
            Row("Bloat"),
            (
                table(
                    "Table bloat",
                    (
                        f"The {TOP_TABLE} tables with the most bloat: space beyond what their live "
                        f"rows need. method says how it was found: estimate (from planner "
                        f"statistics) or pgstattuple (measured)."
                    ),
                    [*OBJECT, "method"],
                    *bloat_columns("table", f"{by_table}, method"),
                ),
                HALF,
                9,
            ),
            (
                table(
                    "Index bloat",
                    f"The {TOP_TABLE} btree indexes with the most bloat, by method.",
                    [*INDEX, "method"],
                    *bloat_columns("index", f"{by_table}, indexrelname, method"),
                ),
                HALF,
                9,
            ),
            (
                bargauge(
                    "Relations whose bloat was not measured",
                    (
                        "Tables and indexes of at least min_bytes a method could not measure, by "
                        "reason (no_privilege, not_installed, stale_statistics, too_large, ...). A "
                        "missing bloat number always has a reason here."
                    ),
                    Query(unmeasured, "{{datname}} {{relkind}}: {{method}} {{reason}}"),
                    unit="short",
                ),
                FULL,
                6,
            ),
            Row("Dead rows, vacuum and analyze"),
            (
                timeseries(
                    "Dead rows",
                    f"Top {TOP} tables by estimated dead rows waiting for vacuum.",
                    Query(topk(sel("pg_tables_n_dead_tup")), table_legend),
                    axis="rows",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Dead row share per database",
                    "Dead rows as a share of all rows of the user tables of the database.",
                    Query(
                        (
                            f"{sel('pg_tables_all_n_dead_tup')} / "
                            f"({sel('pg_tables_all_n_live_tup')} + "
                            f"{sel('pg_tables_all_n_dead_tup')})"
                        ),
                        "{{target}} {{datname}}",
                    ),
                    unit="percentunit",
                    steps=DEAD_ROWS,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Vacuum and analyze runs",
                    (
                        "Autovacuum, autoanalyze and manual vacuum and analyze runs per hour, all "
                        "user tables of the database."
                    ),
                    Query(
                        f"3600 * {rate('pg_tables_all_autovacuums_total')}",
                        "{{datname}} autovacuum",
                    ),
                    Query(
                        f"3600 * {rate('pg_tables_all_autoanalyzes_total')}",
                        "{{datname}} autoanalyze",
                    ),
                    Query(f"3600 * {rate('pg_tables_all_vacuums_total')}", "{{datname}} vacuum"),
                    Query(f"3600 * {rate('pg_tables_all_analyzes_total')}", "{{datname}} analyze"),
                    axis="per hour",
                ),
                THIRD,
                8,
            ),
            (
                table(
                    "Tables: rows and time since maintenance",
                    (
                        "The tables the exporter publishes (largest, most scanned, most dead rows, "
                        "most active, and every flagged one): rows, and how long ago each was last "
                        "vacuumed and analyzed, by autovacuum and manually. Empty: never."
                    ),
                    OBJECT,
                    Column("Size", sel("pg_tables_size_bytes"), "bytes"),
                    Column("Live rows", sel("pg_tables_n_live_tup")),
                    Column("Dead rows", sel("pg_tables_n_dead_tup")),
                    Column("Modified since analyze", sel("pg_tables_n_mod_since_analyze")),
                    Column(
                        "Since autovacuum",
                        since("pg_tables_last_autovacuum_timestamp_seconds"),
                        "s",
                    ),
                    Column("Since vacuum", since("pg_tables_last_vacuum_timestamp_seconds"), "s"),
                    Column(
                        "Since autoanalyze",
                        since("pg_tables_last_autoanalyze_timestamp_seconds"),
                        "s",
                    ),
                    Column("Since analyze", since("pg_tables_last_analyze_timestamp_seconds"), "s"),
                    sort_by="Dead rows",
                ),
                FULL,
                10,
            ),
            Row("Sizes"),
            (
                timeseries(
                    "Largest tables",
                    f"Top {TOP} tables by disk space, with their indexes and TOAST data.",
                    Query(topk(sel("pg_tables_size_bytes")), table_legend),
                    unit="bytes",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Largest indexes",
                    f"Top {TOP} indexes by disk space.",
                    Query(topk(sel("pg_indexes_size_bytes")), index_legend),
                    unit="bytes",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Tables and indexes per database",
                    (
                        "Disk space of all user tables (with their indexes and TOAST) and of all "
                        "user indexes, per database."
                    ),
                    Query(sel("pg_tables_all_size_bytes"), "{{target}} {{datname}} tables"),
                    Query(sel("pg_indexes_all_size_bytes"), "{{target}} {{datname}} indexes"),
                    unit="bytes",
                ),
                THIRD,
                8,
            ),
            Row("Sequences"),
            (
                timeseries(
                    "Highest sequence use per database",
                    (
                        "The highest used share of any sequence's range in the database, against "
                        "the column type it feeds (e.g. 2^31-1 for integer)."
                    ),
                    Query(sel("pg_sequences_max_used_ratio"), "{{target}} {{datname}}"),
                    unit="percentunit",
                    max_=1,
                    steps=USED_RATIO,
                    threshold_lines=True,
                ),
                HALF,
                8,
            ),
            (
                table(
                    "Most used sequences",
                    f"The {TOP_TABLE} sequences with the highest used share of their range.",
                    OBJECT,
                    Column(
                        "Used",
                        topk(sel("pg_sequences_used_ratio"), TOP_TABLE),
                        "percentunit",
                        USED_RATIO,
                        colour=True,
                    ),
                ),
                HALF,
                8,
            ),
        ],
    )


def _connections() -> Spec:
    def by(labels: str, metric: str, *, db: bool = True) -> str:
        return f"sum by ({labels}) ({sel(metric, db=db)})"

    pool_legend = "{{target}} {{datname}}"
    return Spec(
        file="connections.json",
        uid="pg-health-connections",
        title="PostgreSQL health / Connections and pools",
        description=(
            "Client connections and their limits, long transactions, locks, PgBouncer pools and "
            "the exporter's own connection pool."
        ),
        panels=[
            Row("Client connections"),
            (
                timeseries(
                    "Connections by state",
                    "Client connections by state: active, idle, idle in transaction, ...",
                    Query(by("target, state", "pg_connections_backends"), "{{target}} {{state}}"),
                    axis="connections",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Connections by database",
                    "Client connections per database.",
                    Query(
                        by("target, datname", "pg_connections_backends"), "{{target}} {{datname}}"
                    ),
                    axis="connections",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Connections by user",
                    "Client connections per role.",
                    Query(by("target, user", "pg_connections_backends"), "{{target}} {{user}}"),
                    axis="connections",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Connections by application",
                    "Client connections per application_name (beyond the most used names: "
                    '"(other)").',
                    Query(
                        by("target, application_name", "pg_connections_backends"),
                        "{{target}} {{application_name}}",
                    ),
                    axis="connections",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Connections by wait event type",
                    "Client connections by what they wait for (Lock, IO, Client, LWLock, ...).",
                    Query(
                        "label_replace(sum by (target, wait_event_type) ("
                        + sel("pg_connections_backends")
                        + '), "wait_event_type", "(not waiting)", "wait_event_type", "")',
                        "{{target}} {{wait_event_type}}",
                    ),
                    axis="connections",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                gauge(
                    "Connection utilisation",
                    (
                        "Client connections as a share of those ordinary roles may open "
                        "(max_connections minus both reserves), highest over 5 minutes."
                    ),
                    Query(sel("pg:connections_used_ratio:max5m", db=False), "{{target}}"),
                    unit="percentunit",
                    steps=CONNECTIONS,
                    max_=1,
                ),
                THIRD,
                8,
            ),
            Row("Limits"),
            (
                timeseries(
                    "Server connection limit used",
                    (
                        "Client connections as a share of the server's limit for ordinary roles, "
                        "now and highest over 5 minutes."
                    ),
                    Query(sel("pg_connections_used_ratio", db=False), "{{target}} now"),
                    Query(sel("pg:connections_used_ratio:max5m", db=False), "{{target}} max 5m"),
                    unit="percentunit",
                    max_=1,
                    steps=CONNECTIONS,
                    threshold_lines=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Database connection limit used",
                    (
                        "Client connections to a database as a share of its CONNECTION LIMIT (only "
                        "databases that have one)."
                    ),
                    Query(
                        sel("pg_connections_database_limit_used_ratio"), "{{target}} {{datname}}"
                    ),
                    unit="percentunit",
                    max_=1,
                    steps=USED_RATIO,
                    threshold_lines=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Role connection limit used",
                    (
                        "A role's client connections as a share of its CONNECTION LIMIT (only "
                        "login roles that have one)."
                    ),
                    Query(
                        sel("pg_connections_role_limit_used_ratio", db=False), "{{target}} {{user}}"
                    ),
                    unit="percentunit",
                    max_=1,
                    steps=USED_RATIO,
                    threshold_lines=True,
                ),
                THIRD,
                8,
            ),
            Row("Transactions and locks"),
            (
                timeseries(
                    "Longest open transaction",
                    (
                        "Age of the oldest open transaction of a client connection, per database. "
                        "Long transactions hold back vacuum."
                    ),
                    Query(
                        sel("pg_connections_max_transaction_age_seconds"), "{{target}} {{datname}}"
                    ),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Longest idle in transaction",
                    (
                        "How long the longest idle-in-transaction connection has been idle inside "
                        "its transaction, per database: an application that forgot to commit."
                    ),
                    Query(
                        sel("pg_connections_max_idle_in_transaction_age_seconds"),
                        "{{target}} {{datname}}",
                    ),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Longest running statement",
                    "How long the longest running statement has been running, per database.",
                    Query(sel("pg_connections_max_query_age_seconds"), "{{target}} {{datname}}"),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Blocked and blocking sessions",
                    (
                        "Sessions waiting for a lock another session holds, and the sessions "
                        "holding them, per database."
                    ),
                    Query(sel("pg_connections_blocked"), "{{target}} {{datname}} blocked"),
                    Query(sel("pg_connections_blocking"), "{{target}} {{datname}} blocking"),
                    axis="sessions",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Longest lock wait",
                    (
                        "How long the longest waiting session has been waiting for a lock, per "
                        "database (PostgreSQL 14+)."
                    ),
                    Query(
                        sel("pg_connections_max_lock_wait_age_seconds"), "{{target}} {{datname}}"
                    ),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Oldest xmin holder",
                    (
                        "How long the transaction holding back vacuum's xmin horizon has been "
                        "open, by kind of holder (sessions, prepared transactions)."
                    ),
                    Query(sel("pg_xmin_horizon_age_seconds", db=False), "{{target}} {{holder}}"),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            Row("PgBouncer"),
            (
                timeseries(
                    "Clients waiting for a server",
                    (
                        "PgBouncer client connections that sent a query and wait for a server "
                        "connection: the pool is full."
                    ),
                    Query(by("target, datname", "pgbouncer_pools_client_waiting"), pool_legend),
                    axis="clients",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Longest client wait",
                    (
                        "How long the oldest waiting client of each database's pools has waited "
                        "for a server connection."
                    ),
                    Query(
                        f"max by (target, datname) ({sel('pgbouncer_pools_max_wait_seconds')})",
                        pool_legend,
                    ),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Client connections",
                    "PgBouncer client connections linked to a server or idle, and waiting.",
                    Query(
                        by("target, datname", "pgbouncer_pools_client_active"),
                        "{{target}} {{datname}} active",
                    ),
                    Query(
                        by("target, datname", "pgbouncer_pools_client_waiting"),
                        "{{target}} {{datname}} waiting",
                    ),
                    axis="clients",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Server connections",
                    (
                        "PgBouncer server connections linked to a client (active) and unused "
                        "(idle), per database."
                    ),
                    Query(
                        by("target, datname", "pgbouncer_pools_server_active"),
                        "{{target}} {{datname}} active",
                    ),
                    Query(
                        by("target, datname", "pgbouncer_pools_server_idle"),
                        "{{target}} {{datname}} idle",
                    ),
                    axis="connections",
                    stack=True,
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Transactions through PgBouncer",
                    "SQL transactions and queries pooled per second.",
                    Query(
                        rate("pgbouncer_stats_transactions_total"),
                        "{{target}} {{datname}} transactions",
                    ),
                    Query(rate("pgbouncer_stats_queries_total"), "{{target}} {{datname}} queries"),
                    axis="per second",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Average query time in PgBouncer",
                    "Average query duration over PgBouncer's last stats_period, per database.",
                    Query(sel("pgbouncer_stats_average_query_time_seconds"), pool_legend),
                    unit="s",
                ),
                THIRD,
                8,
            ),
            Row("The exporter's own connection pool"),
            (
                timeseries(
                    "Exporter pool connections",
                    (
                        "Connections the exporter's pool holds to each target, how many are idle, "
                        "and the most it may open."
                    ),
                    Query(sel("pg_exporter_pool_connections", db=False), "{{target}} open"),
                    Query(sel("pg_exporter_pool_idle_connections", db=False), "{{target}} idle"),
                    Query(sel("pg_exporter_pool_max_connections", db=False), "{{target}} max"),
                    axis="connections",
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Exporter jobs waiting for a connection",
                    (
                        "Collector jobs waiting now for a pool connection (the target's own "
                        "database) or for the connection that visits the other databases, and "
                        "seconds spent waiting per second."
                    ),
                    Query(
                        sel("pg_exporter_pool_waiting_requests", db=False), "{{target}} waiting now"
                    ),
                    Query(
                        rate("pg_exporter_pool_request_wait_seconds_total", db=False),
                        "{{target}} wait s/s",
                    ),
                    Query(
                        sel("pg_exporter_visits_waiting", db=False),
                        "{{target}} waiting to visit now",
                    ),
                    Query(
                        rate("pg_exporter_visit_wait_seconds_total", db=False),
                        "{{target}} visit wait s/s",
                    ),
                ),
                THIRD,
                8,
            ),
            (
                timeseries(
                    "Exporter pool errors",
                    (
                        "Per minute: pool requests that timed out, failed connection attempts and "
                        "connections found broken (server restart, terminated backend)."
                    ),
                    Query(
                        f"60 * {rate('pg_exporter_pool_request_errors_total', db=False)}",
                        "{{target}} request errors",
                    ),
                    Query(
                        f"60 * {rate('pg_exporter_pool_connection_errors_total', db=False)}",
                        "{{target}} connect errors",
                    ),
                    Query(
                        f"60 * {rate('pg_exporter_pool_connections_lost_total', db=False)}",
                        "{{target}} lost",
                    ),
                    axis="per minute",
                ),
                THIRD,
                8,
            ),
        ],
    )


def _exporter() -> Spec:
    per_collector = "{{target}} {{collector}}"
    last_success = sel("pg_exporter_collector_last_success_timestamp_seconds", db=False)
    age = f"time() - {last_success}"
    errors_in_range = f"increase({sel('pg_exporter_collector_errors_total', db=False)}[$__range])"
    failing = (
        f"sum by (target) ((1 - {sel('pg_exporter_collector_up', db=False)})"
        f" unless on(target, collector) ({sel('pg_exporter_collector_available', db=False)} == 0))"
    )
    available_mappings = value_texts(("0", "unavailable", "orange"), ("1", "available", "green"))
    return Spec(
        file="exporter.json",
        uid="pg-health-exporter",
        title="PostgreSQL health / Exporter health",
        description=(
            "Is the exporter collecting: target reachability, each collector's state, freshness, "
            "duration, errors and series."
        ),
        panels=[
            Row("Status"),
            (
                state_timeline(
                    "Target reachability",
                    "pg_up over time: green while the exporter reaches the target.",
                    Query(sel("pg_up", db=False), "{{target}}"),
                    mappings=UP_MAPPINGS,
                ),
                HALF,
                5,
            ),
            (
                stat(
                    "Collectors failing",
                    (
                        "Collectors whose last run failed (SQL error, timeout), not counting those "
                        "that cannot run on the target."
                    ),
                    Query(failing, "{{target}}"),
                    steps=((None, "green"), (1, "red")),
                ),
                SIXTH,
                5,
            ),
            (
                stat(
                    "Collectors unavailable",
                    (
                        "Collectors that cannot run on the target (server version, missing "
                        "extension or privilege); the table below says why."
                    ),
                    Query(
                        f"sum by (target) (1 - {sel('pg_exporter_collector_available', db=False)})",
                        "{{target}}",
                    ),
                    steps=PROBLEMS,
                ),
                SIXTH,
                5,
            ),
            (
                stat(
                    "Series published",
                    "Series all collectors published on their last successful runs.",
                    Query(
                        f"sum by (target) ({sel('pg_exporter_collector_series', db=False)})",
                        "{{target}}",
                    ),
                    graph=True,
                ),
                SIXTH,
                5,
            ),
            Row("Collectors"),
            (
                table(
                    "Collector states",
                    (
                        "Each collector's last run: succeeded or not, how long ago it last "
                        "succeeded, how long it took, the series it published and its errors in "
                        "the time range."
                    ),
                    ["target", "collector"],
                    Column(
                        "State",
                        sel("pg_exporter_collector_up", db=False),
                        mappings=UP_MAPPINGS,
                        steps=((None, "red"), (1, "green")),
                        colour=True,
                    ),
                    Column(
                        "Since last success",
                        age,
                        "s",
                    ),
                    Column(
                        "Duration", sel("pg_exporter_collector_duration_seconds", db=False), "s"
                    ),
                    Column("Series", sel("pg_exporter_collector_series", db=False)),
                    Column(
                        "Errors in range",
                        errors_in_range,
                        steps=PROBLEMS,
                        colour=True,
                    ),
                    sort_by="Since last success",
                ),
                FULL,
                10,
            ),
            (
                table(
                    "Availability",
                    "Whether each collector can run on the target, and if not why (reason).",
                    ["target", "collector", "reason"],
                    Column(
                        "Available",
                        sel("pg_exporter_collector_available", db=False),
                        mappings=available_mappings,
                        steps=((None, "orange"), (1, "green")),
                        colour=True,
                    ),
                    sort_by="reason",
                ),
                FULL,
                8,
            ),
            (
                timeseries(
                    "Data age",
                    (
                        "Time since each collector last succeeded. A collector's series leave "
                        "/metrics when this exceeds max_age_intervals of its interval."
                    ),
                    Query(
                        age,
                        per_collector,
                    ),
                    unit="s",
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Collector durations",
                    "How long each collector's last run took, including every database it visited.",
                    Query(sel("pg_exporter_collector_duration_seconds", db=False), per_collector),
                    unit="s",
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Collector errors",
                    (
                        "Failed runs per minute (SQL errors, timeouts); runs while the target is "
                        "down are not counted (pg_up says so)."
                    ),
                    Query(
                        f"60 * {rate('pg_exporter_collector_errors_total', db=False)}",
                        per_collector,
                    ),
                    axis="errors/min",
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Series per collector",
                    "Series each collector published on its last successful run.",
                    Query(sel("pg_exporter_collector_series", db=False), per_collector),
                    axis="series",
                    stack=True,
                ),
                HALF,
                9,
            ),
            (
                timeseries(
                    "Worker pools",
                    (
                        "The exporter process's worker pools (collectors, shared by every target; "
                        "probes): the share of their workers busy, and seconds due jobs waited "
                        "for a worker per second (above 0: more jobs than workers). "
                        "Process-wide, so not filtered by target."
                    ),
                    Query(
                        "rate(pg_exporter_worker_busy_seconds_total[$__rate_interval])"
                        " / pg_exporter_workers",
                        "{{instance}} {{pool}} busy",
                    ),
                    Query(
                        "rate(pg_exporter_worker_wait_seconds_total[$__rate_interval])",
                        "{{instance}} {{pool}} wait s/s",
                    ),
                ),
                HALF,
                9,
            ),
        ],
    )


SPECS: tuple[Callable[[], Spec], ...] = (_overview, _queries, _tables, _connections, _exporter)


def _texts() -> dict[str, str]:
    """File name -> the JSON text of every dashboard, as the SDK's encoder writes it (sorted
    keys: the order does not then depend on the order of the SDK's fields)."""
    encoder = JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False)
    return {spec.file: encoder.encode(render(spec)) + "\n" for spec in (b() for b in SPECS)}


def dashboards() -> list[tuple[str, Json]]:
    """(file name, dashboard JSON) of every dashboard."""
    return [(file, json.loads(text)) for file, text in _texts().items()]


def _all_panels(panels: Iterable[Json]) -> Iterable[Json]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def substitute(expr: str, values: dict[str, str] = MATCH_ALL) -> str:
    """Replace Grafana's template variables; an unknown variable is an error, so a typo in a
    query cannot slip through as a literal `$name`."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"unknown template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) of every target of every panel, with the template
    variables replaced by "match all" values (MATCH_ALL)."""
    found = []
    for _, dashboard in dashboards():
        for panel in _all_panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                found.append((dashboard["uid"], panel["title"], substitute(target["expr"])))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a JSON file differs from what this writes"
    )
    args = parser.parse_args(argv)
    built = _texts()
    if args.check:
        stale = sorted(
            file
            for file, text in built.items()
            if not (HERE / file).is_file() or (HERE / file).read_text() != text
        )
        # A JSON file no spec writes any more would still be provisioned into Grafana.
        leftover = sorted(p.name for p in HERE.glob("*.json") if p.name not in built)
        for file in stale:
            print(f"dashboards/{file} is stale: run python dashboards/build.py", file=sys.stderr)
        for file in leftover:
            print(f"dashboards/{file} is not generated by build.py: remove it", file=sys.stderr)
        return 1 if stale or leftover else 0
    for file, text in built.items():
        (HERE / file).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
