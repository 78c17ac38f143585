"""The night report, written after real nights on the generated data.

Two nights a week apart: the first publishes every model; the second rejects
gru4rec (an impossible floor), so the report shows a rejection, its alert and churn
of the lists that changed. The source carries a few bad ratings lines in the first
night's last day, so the data volumes show rejections by reason.
"""
from __future__ import annotations

import base64
import re
import shutil
from datetime import datetime, timedelta, timezone
from io import BytesIO

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recpipe import artifacts, pipeline, report
from recpipe.config import Settings
from recpipe.ingest import ingest
from test_publish import EASY_GATE, FAST

# A figure that draws badly (e.g. a date axis matplotlib cannot tick) fails the tests.
pytestmark = pytest.mark.filterwarnings("error::UserWarning:recpipe.report")
UTC = timezone.utc
NIGHT1 = datetime(2000, 12, 1, tzinfo=UTC)
NIGHT2 = NIGHT1 + timedelta(days=7)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Lines of ratings.dat that the ingest rejects, rated within NIGHT1's last day.
BAD_TS = int((NIGHT1 - timedelta(hours=6)).timestamp())
BAD_LINES = [f"1::42::9::{BAD_TS}", f"2::999::4::{BAD_TS}", f"3::7::0::{BAD_TS}"]
# Those 3 of NIGHT1's 8 lines would stop the night at the data gate's default 5 %.
REPORT_GATE = {**EASY_GATE, "data": {"max_rejected_share": 0.5}}


def frame(engine, sql, params=None) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.exec_driver_sql(sql, params or {}).mappings().all())


def scalar(engine, sql, params=None):
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql, params or {}).scalar()


@pytest.fixture(scope="module")
def nights(migrated_engine, database_url, synthetic_dir, tmp_path_factory):
    """Two real nights, each reported right after it ran (as the DAG will)."""
    engine = migrated_engine
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE alerts, published_runs, recommendations, model_runs, sessions, session_builds,"
            " artifacts, rejected_rows, ratings, ingest_batches, movies, users RESTART IDENTITY CASCADE")
    source = tmp_path_factory.mktemp("source")
    for path in synthetic_dir.iterdir():
        shutil.copy(path, source / path.name)
    with open(source / "ratings.dat", "a", encoding="ascii", newline="\n") as fh:
        fh.writelines(line + "\n" for line in BAD_LINES)
    settings = Settings(database_url=database_url, home=tmp_path_factory.mktemp("home"), source_dir=source)
    # A backlog ending the day before NIGHT1 (not the night's), then the night's last day.
    backlog = ingest(engine, source, None, NIGHT1 - timedelta(days=1))
    last_day = ingest(engine, source, NIGHT1 - timedelta(days=1), NIGHT1)
    pipeline.run_nightly(settings, pipeline.make_plan(settings, NIGHT1, model_overrides=FAST,
                                                      gate_overrides=REPORT_GATE))
    first = report.write_night_report(engine, settings, NIGHT1)
    week = ingest(engine, source, NIGHT1, NIGHT2)
    gate = {**REPORT_GATE, "tolerance": 1.0, "floors": {**EASY_GATE["floors"], "gru4rec": {"ndcg_at_10": 2.0}}}
    pipeline.run_nightly(settings, pipeline.make_plan(settings, NIGHT2, model_overrides=FAST, gate_overrides=gate))
    second = report.write_night_report(engine, settings, NIGHT2)
    batches = {"backlog": backlog.batch_id, "last_day": last_day.batch_id, "week": week.batch_id}
    return settings, engine, first, second, batches


def night_runs(engine, night) -> pd.DataFrame:
    return frame(engine, "SELECT run_id, model, status, metrics, plan, gate_reasons FROM model_runs"
                         " WHERE as_of = %(t)s AND NOT dry_run AND phase = 'gated' ORDER BY model", {"t": night})


def test_page_is_self_contained(nights):
    _, _, first, second, _ = nights
    for result in (first, second):
        page = result.html_path.read_text(encoding="utf-8")
        assert result.html_path.is_file() and page.startswith("<!DOCTYPE html>")
        assert "http://" not in page and "https://" not in page
        assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
        sources = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page, re.I)
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
        assert "url(" not in page  # no CSS reference to another file
        # The embedded figures are byte for byte the PNG files written next to the page.
        embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
        assert embedded == {p.read_bytes() for p in result.png_paths.values()}


def test_png_files_are_valid_images(nights):
    _, _, first, second, _ = nights
    assert set(first.png_paths) == {"metrics", "metric_history", "training_curves", "lists"}
    for result in (first, second):
        for path in result.png_paths.values():
            data = path.read_bytes()
            assert path.parent == result.html_path.parent and data.startswith(PNG_SIGNATURE)
            Image.open(BytesIO(data)).verify()
            width, height = Image.open(BytesIO(data)).size
            assert width > 300 and height > 200


def test_header_and_metrics_match_the_registry(nights):
    settings, engine, first, _, _ = nights
    runs = night_runs(engine, NIGHT1)
    figures = first.figures
    assert figures["night"] == NIGHT1.isoformat()
    assert figures["training_cutoff"] == runs["plan"].iloc[0]["training_cutoff"]
    # When the first report was written every model of the night was live.
    assert sorted(figures["went_live"]) == sorted(runs["model"]) and not figures["published_not_live"]
    assert set(figures["metrics"]) == set(runs["model"])
    for run in runs.itertuples():
        production = run.metrics["production"]
        shown = figures["metrics"][run.model]
        for metric in report.TABLE_METRICS:
            assert shown[metric] == production.get(metric), (run.model, metric)
        assert figures["gate"][run.model] == {"run_id": run.run_id, "status": run.status,
                                              "reasons": run.gate_reasons}
        assert figures["curves"][run.model] == run.metrics.get("training", {}).get("curves", {})
        assert figures["history"]["models"][run.model] == [[NIGHT1.isoformat(), production["ndcg_at_10"],
                                                            run.status]]
    assert figures["metrics"]["autoint"]["auc"] is not None and figures["metrics"]["popularity"]["auc"] is None


def _gini(values: np.ndarray) -> float:
    """Mean absolute difference over twice the mean (another route than the module's)."""
    return float(np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2 * values.mean()))


def test_published_list_figures_match_the_lists(nights):
    _, engine, first, _, _ = nights
    catalogue = frame(engine, "SELECT m.movie_id, count(r.user_id) AS ratings FROM movies m"
                              " LEFT JOIN ratings r ON r.movie_id = m.movie_id AND r.rated_at < %(t)s"
                              " GROUP BY m.movie_id", {"t": NIGHT1})
    top_n = max(1, int(np.ceil(report.TOP_SHARE * len(catalogue))))
    top = set(catalogue.sort_values(["ratings", "movie_id"], ascending=[False, True])["movie_id"][:top_n])
    assert set(first.figures["lists"]) == set(night_runs(engine, NIGHT1)["model"])
    for model, shown in first.figures["lists"].items():
        lists = frame(engine, "SELECT user_id, movie_id, fallback FROM recommendations WHERE run_id = %(r)s",
                      {"r": shown["run_id"]})
        assert shown["users"] == lists["user_id"].nunique() == scalar(
            engine, "SELECT count(DISTINCT user_id) FROM recommendations WHERE run_id = %(r)s", {"r": shown["run_id"]})
        assert shown["coverage"] == pytest.approx(lists["movie_id"].nunique() / len(catalogue))
        assert shown["top_share"] == pytest.approx(lists["movie_id"].isin(top).mean())
        assert shown["fallback_share"] == pytest.approx(lists.groupby("user_id")["fallback"].any().mean())
        exposure = lists["movie_id"].value_counts().reindex(catalogue["movie_id"], fill_value=0).to_numpy(float)
        assert shown["gini"] == pytest.approx(_gini(exposure))
        assert 0 <= shown["gini"] <= 1 and shown["churn"] is None  # the first stored night
    assert first.html_path.read_text().count("no previous night") == len(first.figures["lists"])


def test_data_volumes_are_the_nights_batches(nights):
    _, engine, first, second, batches = nights
    volumes = first.figures["ingest"]
    # The backlog's interval ends exactly a day before the night: not this night's.
    assert [b["batch_id"] for b in volumes["batches"]] == [batches["last_day"]]
    assert [b["batch_id"] for b in second.figures["ingest"]["batches"]] == [batches["week"]]
    stored = frame(engine, "SELECT lines_read, inserted, duplicate, rejected FROM ingest_batches"
                           " WHERE batch_id = %(b)s", {"b": batches["last_day"]}).iloc[0]
    assert volumes["totals"] == {k: int(stored[k]) for k in ("lines_read", "inserted", "duplicate", "rejected")}
    by_reason = frame(engine, "SELECT source_file, reason, count(*) AS lines FROM rejected_sightings"
                              " WHERE batch_id = %(b)s GROUP BY 1, 2", {"b": batches["last_day"]})
    shown = {(r["source_file"], r["reason"]): r["lines"] for r in volumes["rejected_by_reason"]}
    assert shown == {(r.source_file, r.reason): r.lines for r in by_reason.itertuples()}
    assert sum(shown.values()) == volumes["totals"]["rejected"] >= len(BAD_LINES)
    assert all(r["example"] for r in volumes["rejected_by_reason"])
    files = {f["source_file"]: f for f in volumes["files"]}
    assert files["ratings.dat"]["lines_read"] == volumes["totals"]["lines_read"]


def test_batch_without_interval_counts_when_it_finished_the_day_before_the_runs(nights):
    _, engine, _, _, _ = nights
    ran = scalar(engine, "SELECT min(created_at) FROM model_runs WHERE as_of = %(t)s", {"t": NIGHT2})
    insert = ("INSERT INTO ingest_batches (source, input_sha256, started_at, finished_at)"
              " VALUES ('full load', 'x', %(t)s, %(t)s) RETURNING batch_id")
    with engine.begin() as conn:
        recent = conn.exec_driver_sql(insert, {"t": ran - timedelta(hours=1)}).scalar()
        stale = conn.exec_driver_sql(insert, {"t": ran - timedelta(days=2)}).scalar()
    try:
        shown = [b["batch_id"] for b in report.collect(engine, NIGHT2)["ingest"]["batches"]]
        assert recent in shown and stale not in shown
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM ingest_batches WHERE batch_id IN (%(a)s, %(b)s)",
                                 {"a": recent, "b": stale})


def test_second_night_shows_the_rejection_and_churn(nights):
    _, engine, first, second, _ = nights
    figures = second.figures
    runs = night_runs(engine, NIGHT2).set_index("model")
    assert runs.loc["gru4rec", "status"] == "rejected"
    assert "gru4rec" not in figures["went_live"] and "gru4rec" not in figures["lists"]
    assert any(r["rule"] == "floor" for r in figures["gate"]["gru4rec"]["reasons"])
    alerts = frame(engine, "SELECT alert_id, kind, model, metric, value, threshold FROM alerts"
                           " WHERE run_id = ANY(%(r)s) ORDER BY alert_id", {"r": [int(r) for r in runs["run_id"]]})
    assert [a["alert_id"] for a in figures["alerts"]] == list(alerts["alert_id"]) and len(alerts)
    assert {(a["model"], a["metric"], a["threshold"]) for a in figures["alerts"]} == {
        (a.model, a.metric, a.threshold) for a in alerts.itertuples()}
    page = second.html_path.read_text()
    assert "rejected" in page and "ndcg_at_10" in page
    for model, shown in figures["lists"].items():
        churn = shown["churn"]
        assert churn["previous_run_id"] == first.figures["lists"][model]["run_id"]
        assert 0 <= churn["mean_jaccard"] <= 1 and 0 <= churn["unchanged_share"] <= 1
        new, old = (frame(engine, "SELECT user_id, movie_id FROM recommendations WHERE run_id = %(r)s", {"r": r})
                    .groupby("user_id")["movie_id"].apply(set) for r in (shown["run_id"], churn["previous_run_id"]))
        both = new.index.intersection(old.index)
        jaccard = [len(new[u] & old[u]) / len(new[u] | old[u]) for u in both]
        assert churn["users_compared"] == len(both) and churn["mean_jaccard"] == pytest.approx(np.mean(jaccard))
    # The history now spans both nights; the rejected run's point is marked by its status.
    assert [p[0] for p in figures["history"]["models"]["gru4rec"]] == [NIGHT1.isoformat(), NIGHT2.isoformat()]
    assert figures["history"]["models"]["gru4rec"][1][2] == "rejected"
    # Read again now, the first night's lists are stored but no longer live.
    again = report.collect(engine, NIGHT1)
    assert set(again["published_not_live"]) == set(figures["went_live"]) and set(again["went_live"]) == {"gru4rec"}


def test_report_is_registered_and_latest_report_finds_the_newest(nights):
    settings, engine, first, _, _ = nights
    registered = frame(engine, "SELECT artifact_id, path, sha256, details FROM artifacts"
                               " WHERE kind = 'report' AND as_of = %(t)s ORDER BY artifact_id", {"t": NIGHT1})
    assert first.artifact_id in set(registered["artifact_id"])
    with artifacts.open_artifact(settings, artifacts.get(engine, settings, first.artifact_id)) as bundle:
        assert set(bundle.files) == {first.html_path.name, "figures.json", *(p.name for p in first.png_paths.values())}
    newer = report.write_night_report(engine, settings, NIGHT1)
    assert report.latest_report(engine, settings, NIGHT1) == newer.html_path != first.html_path
    assert report.latest_report(engine, settings, NIGHT1 - timedelta(days=3)) is None


def test_out_dir_writes_the_files_without_registering(nights, tmp_path):
    settings, engine, _, _, _ = nights
    before = scalar(engine, "SELECT count(*) FROM artifacts")
    result = report.write_night_report(engine, settings, NIGHT2, out_dir=tmp_path / "mail")
    assert result.artifact_id is None and result.html_path.parent == tmp_path / "mail"
    assert all(p.is_file() and p.stat().st_size for p in result.png_paths.values())
    assert scalar(engine, "SELECT count(*) FROM artifacts") == before


def test_text_from_the_database_is_escaped(nights, tmp_path):
    settings, engine, _, _, _ = nights
    run_id = int(night_runs(engine, NIGHT1)["run_id"].iloc[0])
    with engine.begin() as conn:
        alert = conn.exec_driver_sql(
            "INSERT INTO alerts (kind, message, run_id) VALUES ('task_failed', '<script>alert(1)</script> & co',"
            " %(r)s) RETURNING alert_id", {"r": run_id}).scalar()
    try:
        page = report.write_night_report(engine, settings, NIGHT1, out_dir=tmp_path).html_path.read_text()
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM alerts WHERE alert_id = %(a)s", {"a": alert})
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_a_night_without_runs_raises_lookup_error(nights, tmp_path):
    settings, engine, _, _, _ = nights
    empty = NIGHT1 - timedelta(days=3)
    with pytest.raises(LookupError, match="no model runs for the night 2000-11-28"):
        report.write_night_report(engine, settings, empty, out_dir=tmp_path)
    # Dry runs do not count as a night's runs.
    with engine.begin() as conn:
        dry = conn.exec_driver_sql("INSERT INTO model_runs (model, as_of, dry_run, is_baseline)"
                                   " VALUES ('popularity', %(t)s, true, true) RETURNING run_id", {"t": empty}).scalar()
    try:
        with pytest.raises(LookupError, match="dry runs excluded"):
            report.write_night_report(engine, settings, empty, out_dir=tmp_path)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM model_runs WHERE run_id = %(r)s", {"r": dry})
    assert not list(tmp_path.iterdir())  # nothing written before the check


def test_prune_keeps_reports(nights):
    settings, engine, first, _, _ = nights
    doomed = artifacts.prune(engine, settings, dry_run=True)
    assert first.html_path.parent.resolve() not in {p.resolve() for p in doomed}
