"""The night report: one self-contained HTML page per night, plus its figures as PNG files.

Everything shown is read back from the database (the run registry through
recpipe.runs, the other tables with the SQL below), so a report can be written for
any stored night, again and again, and says what the tables say. Dry runs are left
out. The page embeds its figures as base64 `data:` URIs: it works alone when mailed
or downloaded. It is rendered from recpipe/templates/ by Jinja2 with autoescaping
(titles, reasons, raw rejected lines are data, never markup); figures are drawn with
matplotlib's Agg canvas on `Figure` objects (no pyplot: no global state, thread-safe).

Sections: the night (cutoff, what went live); metrics of every run tonight, and one
metric over the last nights; the gate's decisions and tonight's alerts; training
curves; the published lists (coverage, popularity concentration, fallback share,
churn against the model's previous stored lists); the ingest volumes of the night.

Which ingest batches belong to a night T: those whose interval ends in (T - 1 day, T]
(the daily ingest that fed the night). A batch without an interval end (a full or an
open-ended load) has no rating time to place it by: it belongs to the night when it
finished in the 24 hours before the night's runs were created (the load done for that
run). `alerts` rows are the night's when they name one of its runs; a task failure
before any run exists names none and is not shown here (see the alerts table).
"""
from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jinja2
import numpy as np
import sqlalchemy as sa
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy.engine import Engine

from recpipe import artifacts, runs
from recpipe.config import Settings
from recpipe.plan import LIST_LENGTH

KIND = "report"  # artifacts.kind of a registered report
TEMPLATES = Path(__file__).with_name("templates")
TEMPLATE = "night_report.html.j2"
HISTORY_NIGHTS = 14
K = LIST_LENGTH
# Ranking metrics of the production protocol, in the order they are shown.
RANKING_METRICS = tuple(f"{name}_at_{K}" for name in ("ndcg", "recall", "hit_rate", "coverage"))
TABLE_METRICS = (*RANKING_METRICS, "users", "auc")
HISTORY_METRIC = f"ndcg_at_{K}"  # what recommendations_default ranks the models by
TOP_SHARE = 0.01  # "the most-rated movies": this share of the catalogue
INGEST_DAY = timedelta(days=1)
EXAMPLE_CHARS = 160  # of a rejected line shown as an example

# Most-rated movies by ratings before the night (not the catalogue view's all-time
# counts: a backfilled night's report must not see later ratings).
CATALOGUE_SQL = """
SELECT m.movie_id, count(r.user_id) AS ratings
FROM movies m LEFT JOIN ratings r ON r.movie_id = m.movie_id AND r.rated_at < :night
GROUP BY m.movie_id
"""

PUBLISHED_SQL = "SELECT model, run_id, published_at FROM published_runs"

LIST_USERS_SQL = """
SELECT count(DISTINCT user_id) AS users,
       count(DISTINCT user_id) FILTER (WHERE fallback) AS fallback_users
FROM recommendations WHERE run_id = :run AND rank <= :k
"""

EXPOSURE_SQL = """
SELECT movie_id, count(*) AS slots FROM recommendations WHERE run_id = :run AND rank <= :k GROUP BY movie_id
"""

# The model's newest earlier real run whose lists are still stored (retention removes old ones).
PREVIOUS_LISTS_SQL = """
SELECT r.run_id, r.as_of FROM model_runs r
WHERE r.model = :model AND NOT r.dry_run AND r.as_of < :night
  AND EXISTS (SELECT 1 FROM recommendations rec WHERE rec.run_id = r.run_id)
ORDER BY r.as_of DESC LIMIT 1
"""

# Per user present in both runs: |A ∩ B| / |A ∪ B| of the two top-k sets.
JACCARD_SQL = """
WITH a AS (SELECT user_id, movie_id FROM recommendations WHERE run_id = :new AND rank <= :k),
     b AS (SELECT user_id, movie_id FROM recommendations WHERE run_id = :old AND rank <= :k),
     size_a AS (SELECT user_id, count(*) AS n FROM a GROUP BY user_id),
     size_b AS (SELECT user_id, count(*) AS n FROM b GROUP BY user_id),
     common AS (SELECT user_id, count(*) AS n FROM a JOIN b USING (user_id, movie_id) GROUP BY user_id),
     per_user AS (
        SELECT coalesce(c.n, 0)::float8 / (sa.n + sb.n - coalesce(c.n, 0)) AS jaccard
        FROM size_a sa JOIN size_b sb USING (user_id) LEFT JOIN common c USING (user_id))
SELECT count(*) AS users, avg(jaccard) AS mean_jaccard, avg((jaccard = 1)::int) AS unchanged_share
FROM per_user
"""

ALERTS_SQL = """
SELECT alert_id, created_at, severity, kind, model, metric, value, threshold, run_id, message, notified
FROM alerts WHERE run_id = ANY(:runs) ORDER BY alert_id
"""

# See the module doc for which batches belong to a night.
BATCHES_SQL = """
WITH ran AS (SELECT min(created_at) AS at FROM model_runs WHERE as_of = :night AND NOT dry_run)
SELECT b.batch_id, b.source, b.interval_start, b.interval_end, b.lines_read, b.inserted, b.duplicate,
       b.rejected, b.finished_at
FROM ingest_batches b, ran
WHERE b.finished_at IS NOT NULL
  AND CASE WHEN b.interval_end IS NOT NULL
           THEN b.interval_end > :night - :day AND b.interval_end <= :night
           ELSE b.finished_at > ran.at - :day AND b.finished_at <= ran.at END
ORDER BY b.batch_id
"""

BATCH_FILES_SQL = """
SELECT source_file, sum(lines_read) AS lines_read, sum(stored) AS stored, sum(duplicate) AS duplicate,
       sum(rejected) AS rejected
FROM ingest_batch_files WHERE batch_id = ANY(:batches) GROUP BY source_file ORDER BY source_file
"""

# A sighting is one rejection by one batch; its bytes live in the rejected_rows row it points at.
REJECTED_SQL = """
SELECT s.source_file, s.reason, count(*) AS lines,
       (array_agg(r.raw_line ORDER BY s.batch_id, s.line_no))[1] AS example
FROM rejected_sightings s
JOIN rejected_rows r ON r.batch_id = s.recorded_batch AND r.source_file = s.source_file AND r.line_no = s.line_no
WHERE s.batch_id = ANY(:batches)
GROUP BY s.source_file, s.reason ORDER BY lines DESC, s.source_file, s.reason
"""

LATEST_SQL = """
SELECT path, details FROM artifacts WHERE kind = :kind AND as_of = :night ORDER BY created_at DESC, artifact_id DESC
"""


@dataclass(frozen=True)
class ReportResult:
    html_path: Path
    png_paths: dict[str, Path]  # figure name -> its PNG file
    figures: dict  # every number the page shows, JSON-able (also saved as figures.json)
    artifact_id: int | None = None  # None when written to an out_dir


@dataclass
class _Png:
    name: str
    title: str
    data: bytes = field(repr=False)

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


def _utc(night: datetime) -> datetime:
    night = night if night.tzinfo else night.replace(tzinfo=timezone.utc)
    return night.astimezone(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _float(value) -> float | int | None:
    """A JSON-able number: integers stay integers (counts), NaN and non-numbers become None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --- reading -----------------------------------------------------------------------------


def _night_runs(engine: Engine, night: datetime) -> list[runs.Run]:
    night_runs = runs.of_night(engine, night)
    if not night_runs:
        raise LookupError(f"no model runs for the night {night:%Y-%m-%d %H:%M} UTC (dry runs excluded):"
                          " nothing to report; see `recpipe runs`")
    # Baselines first, as evaluation and publication order them.
    return sorted(night_runs, key=lambda r: (not r.is_baseline, r.model))


def _training_cutoff(night_runs: list[runs.Run]) -> str | None:
    for run in night_runs:
        cutoff = (run.plan or {}).get("training_cutoff") or run.production_metrics.get("cutoff")
        if cutoff:
            return str(cutoff)
    return None


def _metric_history(engine: Engine, night: datetime, nights: int, metric: str) -> dict[str, list]:
    """{model: [[night ISO, value, status], ...]} over the last `nights` nights up to `night`.

    runs.listing is newest first over every night: read more until the oldest wanted
    night is complete (a report of an old night reads past the newer ones)."""
    limit = max(64, 8 * nights)
    while True:
        recent = runs.listing(engine, None, limit)
        # The gated runs carry the night's production metrics (a refit is not evaluated).
        real = [r for r in recent if not r.dry_run and r.phase == "gated" and r.as_of <= night]
        wanted = sorted({r.as_of for r in real}, reverse=True)[:nights]
        if len(recent) < limit or (len(wanted) == nights and recent[-1].as_of < wanted[-1]):
            break
        limit *= 2
    history: dict[str, list] = {}
    for run in sorted((r for r in real if r.as_of in set(wanted)), key=lambda r: (r.model, r.as_of)):
        history.setdefault(run.model, []).append(
            [run.as_of.isoformat(), _float(run.production_metrics.get(metric)), run.status])
    return history


def _training(run: runs.Run) -> dict:
    return (run.metrics or {}).get("training") or {}


def _gini(values: np.ndarray) -> float | None:
    """Gini coefficient of non-negative values (0: equal exposure, ->1: all on one item)."""
    total = values.sum()
    if len(values) == 0 or total <= 0:
        return None
    ordered = np.sort(values)
    n = len(ordered)
    return float(2 * np.sum(np.arange(1, n + 1) * ordered) / (n * total) - (n + 1) / n)


def _lorenz(values: np.ndarray) -> list[float]:
    ordered = np.sort(values)
    return [0.0, *(np.cumsum(ordered) / ordered.sum()).tolist()] if ordered.sum() > 0 else []


def _list_figures(conn, run: runs.Run, night: datetime, popularity: dict[int, int]) -> dict | None:
    """Coverage, concentration, fallback share and churn of a run's stored lists (None: none stored)."""
    users = conn.execute(sa.text(LIST_USERS_SQL), {"run": run.run_id, "k": K}).mappings().one()
    if not users["users"]:
        return None
    exposure = dict(conn.execute(sa.text(EXPOSURE_SQL), {"run": run.run_id, "k": K}).all())
    catalogue = sorted(popularity)
    # Exposure over the whole catalogue: never-recommended movies count as zeros.
    counts = np.array([exposure.get(m, 0) for m in catalogue], dtype=float)
    slots = int(counts.sum())
    top_n = max(1, math.ceil(TOP_SHARE * len(catalogue)))
    top = sorted(catalogue, key=lambda m: (-popularity[m], m))[:top_n]
    previous = conn.execute(sa.text(PREVIOUS_LISTS_SQL), {"model": run.model, "night": night}).mappings().first()
    churn = None
    if previous is not None:
        overlap = conn.execute(sa.text(JACCARD_SQL), {"new": run.run_id, "old": previous["run_id"], "k": K}
                               ).mappings().one()
        churn = {"previous_run_id": int(previous["run_id"]), "previous_night": previous["as_of"].isoformat(),
                 "users_compared": int(overlap["users"]), "mean_jaccard": _float(overlap["mean_jaccard"]),
                 "unchanged_share": _float(overlap["unchanged_share"])}
    return {
        "run_id": run.run_id,
        "users": int(users["users"]),
        "slots": slots,
        "distinct_movies": len(exposure),
        "catalogue": len(catalogue),
        "coverage": len(exposure) / len(catalogue) if catalogue else None,
        "top_movies": top_n,
        "top_share": sum(exposure.get(m, 0) for m in top) / slots if slots else None,
        "gini": _gini(counts),
        "fallback_share": int(users["fallback_users"]) / int(users["users"]),
        "churn": churn,
        "lorenz": _lorenz(counts),
    }


def _ingest_figures(conn, night: datetime) -> dict:
    batches = [dict(b) for b in conn.execute(sa.text(BATCHES_SQL), {"night": night, "day": INGEST_DAY}).mappings()]
    ids = [int(b["batch_id"]) for b in batches]
    files = [dict(f) for f in conn.execute(sa.text(BATCH_FILES_SQL), {"batches": ids}).mappings()]
    rejected = [dict(r) for r in conn.execute(sa.text(REJECTED_SQL), {"batches": ids}).mappings()]
    counts = ("lines_read", "inserted", "duplicate", "rejected")
    for batch in batches:
        for key in ("interval_start", "interval_end", "finished_at"):
            batch[key] = _iso(batch[key])
        for key in counts:
            batch[key] = int(batch[key])
    for row in files:
        for key in ("lines_read", "stored", "duplicate", "rejected"):
            row[key] = int(row[key])
    for row in rejected:
        row["lines"] = int(row["lines"])
        example = row["example"] or ""
        row["example"] = example if len(example) <= EXAMPLE_CHARS else example[:EXAMPLE_CHARS] + "…"
    return {"batches": batches, "totals": {key: sum(b[key] for b in batches) for key in counts},
            "files": files, "rejected_by_reason": rejected}


def collect(engine: Engine, night: datetime, *, history_nights: int = HISTORY_NIGHTS,
            history_metric: str = HISTORY_METRIC) -> dict:
    """Every number of the night's report, read from the database (JSON-able)."""
    night = _utc(night)
    night_runs = _night_runs(engine, night)
    # A model's shipped lists are its refit's when it was refitted (two-phase nights).
    refits = {r.model: r for r in runs.of_night(engine, night, phase="refit")}
    run_ids = [r.run_id for r in night_runs] + [r.run_id for r in refits.values()]
    # One snapshot: a publish running meanwhile cannot mix its lists into half the figures.
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        live = {row.model: row for row in conn.execute(sa.text(PUBLISHED_SQL))}
        popularity = dict(conn.execute(sa.text(CATALOGUE_SQL), {"night": night}).all())
        lists = {r.model: (r.model in refits and _list_figures(conn, refits[r.model], night, popularity))
                 or _list_figures(conn, r, night, popularity) for r in night_runs}
        alerts = [dict(a) for a in conn.execute(sa.text(ALERTS_SQL), {"runs": run_ids}).mappings()]
        ingest = _ingest_figures(conn, night)
    for alert in alerts:
        alert["created_at"] = _iso(alert["created_at"])
        alert["value"], alert["threshold"] = _float(alert["value"]), _float(alert["threshold"])
    went_live = [r.model for r in night_runs if r.model in live
                 and live[r.model].run_id in (r.run_id, getattr(refits.get(r.model), "run_id", None))]
    return {
        "night": night.isoformat(),
        "training_cutoff": _training_cutoff(night_runs),
        "list_length": K,
        "went_live": went_live,
        # Promoted with lists stored but no longer (or never: a backfill) the live run.
        "published_not_live": [r.model for r in night_runs if r.model not in went_live and lists[r.model]],
        "runs": {r.model: {"run_id": r.run_id, "status": r.status, "is_baseline": r.is_baseline,
                           "published_at": _iso(live[r.model].published_at) if r.model in went_live else None}
                 for r in night_runs},
        "metrics": {r.model: {m: _float(r.production_metrics.get(m)) for m in TABLE_METRICS} for r in night_runs},
        "history": {"metric": history_metric, "nights": history_nights,
                    "models": _metric_history(engine, night, history_nights, history_metric)},
        "gate": {r.model: {"run_id": r.run_id, "status": r.status, "reasons": list(r.gate_reasons or [])}
                 for r in night_runs},
        "alerts": alerts,
        "curves": {r.model: {name: list(values) for name, values in _training(r).get("curves", {}).items() if values}
                   for r in night_runs},
        "best_epoch": {r.model: _float(_training(r).get("best_epoch")) for r in night_runs},
        "lists": {model: figures for model, figures in lists.items() if figures},
        "ingest": ingest,
    }


# --- drawing -----------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _short(metric: str) -> str:
    return metric.replace(f"_at_{K}", f"@{K}").replace("_", " ")


def _model_colors(figures: dict) -> dict[str, str]:
    """One colour per model in every figure, by name: the same model looks the same every night."""
    models = sorted(set(figures["runs"]) | set(figures["history"]["models"]))
    return {model: f"C{i % 10}" for i, model in enumerate(models)}


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], colors: dict[str, str]) -> None:
    """Bars of each series (a model) side by side within each group (a metric)."""
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label, color=colors[label])
        ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncols=max(1, len(series)), loc="upper left")


def _draw_metrics(figures: dict) -> Figure:
    figure = Figure(figsize=(8, 3.6))
    ax = figure.add_subplot()
    _grouped_bars(ax, [_short(m) for m in RANKING_METRICS],
                  {model: [values[m] for m in RANKING_METRICS] for model, values in figures["metrics"].items()},
                  _model_colors(figures))
    ax.set_title(f"Production metrics of {figures['night'][:10]} (test users: "
                 + ", ".join(f"{m} {v['users']:.0f}" for m, v in figures["metrics"].items() if v["users"] is not None)
                 + ")", fontsize=10)
    return figure


def _draw_history(figures: dict) -> Figure:
    history = figures["history"]
    figure = Figure(figsize=(8, 3.4))
    ax = figure.add_subplot()
    colors = _model_colors(figures)
    for model, points in history["models"].items():
        nights = [datetime.fromisoformat(p[0]) for p in points]
        values = [np.nan if p[1] is None else p[1] for p in points]
        ax.plot(nights, values, marker="o", label=model, color=colors[model])
        # Hollow markers: nights whose run the gate did not promote.
        rejected = [(n, v) for n, v, p in zip(nights, values, points) if p[2] != runs.PROMOTED]
        if rejected:
            ax.plot(*zip(*rejected), linestyle="none", marker="o", markersize=9, markerfacecolor="white",
                    markeredgecolor=colors[model])
    ax.set_title(f"{_short(history['metric'])} over the last {history['nights']} nights"
                 " (hollow: not promoted)", fontsize=10)
    ax.set_ylabel(_short(history["metric"]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    nights = sorted({p[0] for points in history["models"].values() for p in points})
    locator = mdates.AutoDateLocator(maxticks=8)
    if len(nights) == 1:  # one night: a span of days to place the ticks on
        only = datetime.fromisoformat(nights[0])
        ax.set_xlim(only - timedelta(days=1), only + timedelta(days=1))
        locator = mdates.DayLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d") if len(nights) == 1
                                 else mdates.ConciseDateFormatter(locator))
    return figure


def _curve_panels(curves: dict[str, list]) -> list[tuple[str, list[str]]]:
    """Curves grouped by what they measure: `x` with its `val_x`, one panel each."""
    panels = []
    for name in curves:
        if name.startswith("val_") and name[4:] in curves:
            continue
        panels.append((name, [n for n in (name, f"val_{name}") if n in curves]))
    return panels


def _draw_curves(figures: dict) -> Figure | None:
    rows = [(model, _curve_panels(curves)) for model, curves in figures["curves"].items() if curves]
    if not rows:
        return None
    columns = max(len(panels) for _, panels in rows)
    figure = Figure(figsize=(3.2 * columns, 2.4 * len(rows)), layout="constrained")
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for r, (model, panels) in enumerate(rows):
        for c in range(columns):
            ax = grid[r][c]
            if c >= len(panels):
                ax.set_visible(False)
                continue
            title, names = panels[c]
            for name in names:
                values = [np.nan if v is None else v for v in figures["curves"][model][name]]
                ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
            best = figures["best_epoch"].get(model)
            if best is not None:  # the weights kept (early stopping restores them)
                ax.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch {best:.0f}")
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, frameon=False)
    return figure


LIST_BARS = (("coverage", "catalogue coverage"), ("top_share", f"top {TOP_SHARE:.0%} share"),
             ("gini", "Gini of exposure"), ("fallback_share", "fallback share"),
             ("mean_jaccard", "Jaccard vs previous"))


def _list_value(figures: dict, key: str) -> float | None:
    if key == "mean_jaccard":
        return (figures["churn"] or {}).get("mean_jaccard")
    return figures[key]


def _draw_lists(figures: dict) -> Figure | None:
    lists = figures["lists"]
    if not lists:
        return None
    figure = Figure(figsize=(11, 3.6), layout="constrained")
    bars, lorenz = figure.subplots(1, 2, width_ratios=(2, 1))
    colors = _model_colors(figures)
    _grouped_bars(bars, [label for _, label in LIST_BARS],
                  {model: [_list_value(f, key) for key, _ in LIST_BARS] for model, f in lists.items()}, colors)
    bars.set_title(f"Published top-{K} lists of {figures['night'][:10]}", fontsize=10)
    bars.tick_params(axis="x", labelsize=8)
    for model, f in lists.items():
        shares = f["lorenz"]
        lorenz.plot(np.linspace(0, 1, len(shares)), shares, label=f"{model} (Gini {f['gini']:.2f})",
                    color=colors[model])
    lorenz.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal exposure")
    lorenz.set_title("Lorenz curve of item exposure", fontsize=10)
    lorenz.set_xlabel("share of catalogue (least shown first)", fontsize=8)
    lorenz.set_ylabel("share of list slots", fontsize=8)
    lorenz.grid(alpha=0.3)
    lorenz.legend(fontsize=7, frameon=False)
    return figure


FIGURE_NAMES = ("metrics", "metric_history", "training_curves", "lists")


def draw(figures: dict) -> list[_Png]:
    """The report's figures as PNG bytes, in page order (absent ones: nothing to draw)."""
    drawn = [("metrics", "Tonight's metrics", _draw_metrics(figures)),
             ("metric_history", "Metric history", _draw_history(figures)),
             ("training_curves", "Training curves", _draw_curves(figures)),
             ("lists", "Published lists", _draw_lists(figures))]
    return [_Png(name, title, _png(figure)) for name, title, figure in drawn if figure is not None]


# --- rendering ---------------------------------------------------------------------------


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _when(value: str | None) -> str:
    return "–" if not value else datetime.fromisoformat(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=_number, when=_when, percent=lambda v: "–" if v is None else f"{v:.1%}",
                       short=_short)
    return env


def render(figures: dict, pngs: list[_Png]) -> str:
    return _environment().get_template(TEMPLATE).render(
        # A figure with nothing to draw is absent (a baselines-only night has no curves):
        # None, so that the template's StrictUndefined does not fail the night.
        f=figures, pngs={**dict.fromkeys(FIGURE_NAMES), **{p.name: p for p in pngs}}, ranking_metrics=RANKING_METRICS, table_metrics=TABLE_METRICS,
        generated_at=datetime.now(timezone.utc).isoformat(), top_share=TOP_SHARE,
        no_curves=[model for model, curves in figures["curves"].items() if not curves])


def html_name(night: datetime) -> str:
    """Named after its night: the file says which night it is once mailed or downloaded."""
    return f"recpipe_night_{_utc(night):%Y%m%dT%H%MZ}.html"


def write_night_report(engine: Engine, settings: Settings, night: datetime, out_dir: Path | None = None, *,
                       history_nights: int = HISTORY_NIGHTS, history_metric: str = HISTORY_METRIC
                       ) -> ReportResult:
    """Write the night's report (HTML + PNGs + figures.json); registered as a `report`
    artifact unless out_dir is given. Raises LookupError when the night has no runs."""
    night = _utc(night)
    figures = collect(engine, night, history_nights=history_nights, history_metric=history_metric)
    pngs = draw(figures)
    html = render(figures, pngs)
    folder = Path(out_dir) if out_dir is not None else artifacts.new_dir(settings, KIND, night)
    folder.mkdir(parents=True, exist_ok=True)
    png_paths = {}
    for png in pngs:
        png_paths[png.name] = folder / f"{png.name}.png"
        png_paths[png.name].write_bytes(png.data)
    html_path = folder / html_name(night)
    html_path.write_text(html, encoding="utf-8")
    (folder / "figures.json").write_text(json.dumps(figures, indent=1, sort_keys=True), encoding="utf-8")
    artifact_id = None
    if out_dir is None:
        row_counts = {"runs": len(figures["runs"]), "published_lists": len(figures["lists"]),
                      "alerts": len(figures["alerts"]), "ingest_batches": len(figures["ingest"]["batches"])}
        details = {"html": html_path.name, "pngs": sorted(p.name for p in png_paths.values()),
                   "went_live": figures["went_live"], "training_cutoff": figures["training_cutoff"]}
        artifact_id = artifacts.register(engine, settings, KIND, night, folder, row_counts, details).artifact_id
    return ReportResult(html_path, png_paths, figures, artifact_id)


def latest_report(engine: Engine, settings: Settings, night: datetime) -> Path | None:
    """The newest registered report page of `night` that is still on disk, or None."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(LATEST_SQL), {"kind": KIND, "night": _utc(night)}).mappings().all()
    for row in rows:
        page = settings.home / row["path"] / (row["details"] or {}).get("html", html_name(night))
        if page.is_file():
            return page
    return None
