"""The SLA gate on crafted locust CSVs: passing, each kind of violation, and bad input."""

from pathlib import Path

import pytest

from loadtests import gate
from loadtests.routes import EMBEDDING, FLOOR, ROUTES, SEARCH_QUERY
from loadtests.runner import plot_history

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def stats_csv(tmp_path: Path, rows: list[tuple]) -> Path:
    """rows: (type, name, requests, failures, p50, p95, p99)."""
    lines = [HEADER]
    for typ, name, n, fails, p50, p95, p99 in rows:
        lines.append(
            f"{typ},{name},{n},{fails},{p50},{p50},1,{p99},1000,{n / 10},{fails / 10},{p50},{p50},{p50},{p95},"
            f"{p95},{p95},{p99},{p99},{p99},{p99},{p99}"
        )
    path = tmp_path / "x_stats.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


SLA = {"routes": {EMBEDDING: {"p50_ms": 5, "p95_ms": 10, "p99_ms": 20, "max_error_rate": 0.01, "min_requests": 100}, SEARCH_QUERY: {"p99_ms": 50}}}


def test_passing_run_has_no_violations(tmp_path):
    csv = stats_csv(
        tmp_path,
        [("GET", "/asin/{asin}/embedding", 1000, 5, 2, 6, 15), ("POST", "/search [query]", 200, 0, 9, 20, 40), ("", "Aggregated", 1200, 5, 3, 9, 30)],
    )
    stats = gate.read_stats(csv)
    assert stats[EMBEDDING].p99_ms == 15
    assert stats[EMBEDDING].error_rate == 0.005
    assert "Aggregated" in stats
    assert gate.check(stats, gate.parse_sla(SLA, ROUTES)) == []


def test_each_broken_budget_is_reported(tmp_path):
    csv = stats_csv(tmp_path, [("GET", "/asin/{asin}/embedding", 1000, 50, 7, 12, 25), ("POST", "/search [query]", 200, 0, 9, 20, 80)])
    violations = gate.check(gate.read_stats(csv), gate.parse_sla(SLA, ROUTES))
    got = {(v.route, v.metric): v.actual for v in violations}
    assert got == {
        (EMBEDDING, "p50_ms"): 7,
        (EMBEDDING, "p95_ms"): 12,
        (EMBEDDING, "p99_ms"): 25,
        (EMBEDDING, "max_error_rate"): 0.05,
        (SEARCH_QUERY, "p99_ms"): 80,
    }
    assert "p99_ms 80 breaks budget 50" in str(next(v for v in violations if v.route == SEARCH_QUERY))
    report = gate.table(gate.read_stats(csv), gate.parse_sla(SLA, ROUTES), violations)
    assert "FAIL" in report
    assert EMBEDDING in report


def test_route_without_traffic_is_a_violation(tmp_path):
    csv = stats_csv(tmp_path, [("GET", "/asin/{asin}/embedding", 40, 0, 1, 2, 3)])
    violations = gate.check(gate.read_stats(csv), gate.parse_sla(SLA, ROUTES))
    assert {(v.route, v.metric) for v in violations} == {(EMBEDDING, "min_requests"), (SEARCH_QUERY, "min_requests")}


def test_na_percentiles_do_not_crash(tmp_path):
    path = stats_csv(tmp_path, [("GET", "/asin/{asin}/embedding", 100, 100, 1, 1, 1)])
    path.write_text(path.read_text().replace(",1,1,1000", ",N/A,N/A,1000"))
    assert gate.read_stats(path)[EMBEDDING].requests == 100


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"routes": {"GET /nope": {"p99_ms": 1}}}, "routes.GET /nope: unknown route"),
        ({"routes": {EMBEDDING: {"p99": 1}}}, f"routes.{EMBEDDING}.p99: unknown budget"),
        ({"routes": {EMBEDDING: {"p99_ms": -1}}}, f"routes.{EMBEDDING}.p99_ms must be a non-negative number"),
        ({"routes": {EMBEDDING: {"max_error_rate": 2}}}, "max_error_rate must be a fraction"),
        ({"routes": {}}, "non-empty mapping"),
        (["x"], "non-empty mapping"),
    ],
)
def test_bad_sla_names_the_field(doc, message):
    with pytest.raises(gate.SlaError, match=message.replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        gate.parse_sla(doc, ROUTES)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(gate.SlaError, match="SLA file not found: .*nope.yaml"):
        gate.load_sla(tmp_path / "nope.yaml")
    with pytest.raises(gate.SlaError, match="stats CSV not found"):
        gate.read_stats(tmp_path / "none_stats.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(gate.SlaError, match="not a locust stats CSV"):
        gate.read_stats(tmp_path / "bad.csv")


def test_shipped_sla_is_valid():
    budgets = gate.load_sla(Path(__file__).resolve().parents[2] / "loadtests" / "sla.yaml", ROUTES)
    assert EMBEDDING in budgets
    assert budgets[EMBEDDING].p99_ms is not None


def test_plots_from_history(tmp_path):
    head = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count"
    rows = [head]
    for t in range(5):
        rows.append(f"{1000 + t},4,GET,/asin/{{asin}}/embedding,{50 + t},0,2,2,3,3,4,5,6,{7 + t},9,9,9,{100 * t}")
        rows.append(f"{1000 + t},4,,Aggregated,{60 + t},0,2,2,3,3,4,5,6,{8 + t},9,9,9,{120 * t}")
    rows.append("1005,4,,Aggregated,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0")
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    files = plot_history(tmp_path / "h.csv", tmp_path)
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in files.values())


def test_index_stream_sends_change_events_at_the_rate(tmp_path, monkeypatch, test_catalog):
    import threading

    import catalog.events  # noqa: F401 - imported up front so the timed window is all sending
    import m5core.events.local  # noqa: F401
    from loadtests.stream import index_stream

    monkeypatch.setenv("M5_EVENTS", "local")
    monkeypatch.setenv("M5_LOCAL_EVENTS_DIR", str(tmp_path / "events"))
    monkeypatch.setenv("M5_CHANGES_TOPIC", "lt.changes")
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    sent = index_stream(40, test_catalog, 0, stop)
    assert 5 <= sent <= 45  # ~40 events in 1 s at 40/s, less on a loaded box
    from m5core.events.local import LocalSource
    from m5core.schema import ChangeEvent

    source = LocalSource(tmp_path / "events", ["lt.changes"], "check")
    events = [ChangeEvent.model_validate_json(m.value) for m in source.poll(max_records=1000, timeout_s=0.1)]
    source.close()
    assert len(events) == sent
    assert {e.op for e in events} <= {"upsert", "patch", "delete"}
    with pytest.raises(ValueError, match="index rate"):
        index_stream(0, test_catalog, 0, stop)


def test_microsecond_percentiles_replace_locusts_whole_milliseconds(tmp_path):
    csv = stats_csv(tmp_path, [("GET", "/asin/{asin}/embedding", 1000, 0, 1, 1, 2), ("GET", "/healthz [floor]", 100, 0, 1, 1, 1)])
    lat = [0.2 + i / 1000 for i in range(1000)]  # 0.200 .. 1.199 ms
    assert gate.percentiles_ms(lat) == {"n": 1000, "p50_ms": 0.699, "p95_ms": 1.149, "p99_ms": 1.189}
    (tmp_path / "p.json").write_text(__import__("json").dumps({EMBEDDING: gate.percentiles_ms(lat)}))
    stats = gate.with_precise(gate.read_stats(csv), tmp_path / "p.json")
    assert (stats[EMBEDDING].p50_ms, stats[EMBEDDING].p99_ms) == (0.699, 1.189)
    assert stats[FLOOR].p99_ms == 1  # not recorded precisely: locust's figure stays
    assert gate.with_precise(gate.read_stats(csv), tmp_path / "none.json")[EMBEDDING].p99_ms == 2


def test_a_route_is_gated_on_its_ratio_to_the_floor_measured_in_the_same_run(tmp_path):
    sla = gate.parse_sla({"routes": {EMBEDDING: {"p99_floor_ratio": 3}, SEARCH_QUERY: {"p99_floor_ratio": 3}}}, ROUTES)
    csv = stats_csv(
        tmp_path,
        [
            ("GET", "/asin/{asin}/embedding", 500, 0, 1, 2, 2),
            ("POST", "/search [query]", 500, 0, 4, 8, 10),
            ("GET", "/healthz [floor]", 50, 0, 1, 1, 1),
        ],
    )
    got = {(v.route, v.metric): v.actual for v in gate.check(gate.read_stats(csv), sla)}
    assert got == {(SEARCH_QUERY, "p99_floor_ratio"): 10.0}  # 10 ms against a 1 ms floor; 2 ms is within 3x
    no_floor = stats_csv(tmp_path, [("GET", "/asin/{asin}/embedding", 500, 0, 1, 2, 2), ("POST", "/search [query]", 500, 0, 4, 8, 4)])
    assert {v.metric for v in gate.check(gate.read_stats(no_floor), sla)} == {"p99_floor_ratio"}  # no floor: cannot pass


def _exposition(counts: dict[float, int], route: str = "/search", method: str = "POST") -> str:
    """The service's request histogram as Prometheus text, cumulative counts per upper bound (seconds)."""
    lines = ["# HELP m5_http_request_duration_seconds x", "# TYPE m5_http_request_duration_seconds histogram"]
    total = 0
    for le in sorted(counts):
        total = counts[le]
        le_s = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'm5_http_request_duration_seconds_bucket{{le="{le_s}",method="{method}",route="{route}"}} {total}')
    lines.append(f'm5_http_request_duration_seconds_count{{method="{method}",route="{route}"}} {total}')
    lines.append(f'm5_http_request_duration_seconds_sum{{method="{method}",route="{route}"}} 0.1')
    return "\n".join(lines) + "\n"


def test_server_percentiles_come_from_the_histograms_between_two_scrapes():
    inf = float("inf")
    before = _exposition({0.0005: 100, 0.001: 100, 0.002: 100, inf: 100})  # 100 requests before the run: not counted
    after = _exposition({0.0005: 600, 0.001: 1050, 0.002: 1100, inf: 1100})  # the run: 500 <= 0.5 ms, 450 <= 1 ms, 50 <= 2 ms
    stats = gate.server_stats(before, after)
    s = stats["POST /search"]
    assert s["n"] == 1000
    assert s["p50_ms"] == 0.5  # rank 500 ends the first bucket
    assert s["p99_ms"] == pytest.approx(1.0 + 1.0 * (990 - 950) / 50)  # interpolated inside (1, 2] ms
    budgets = gate.parse_server({"server": {"POST /search": {"p99_ms": 1.5}, "GET /asin/{asin}/embedding": {"p99_ms": 1, "min_requests": 10}}})
    got = {(v.route, v.metric): v.actual for v in gate.check_server(stats, budgets)}
    assert got == {("server POST /search", "server_p99_ms"): s["p99_ms"], ("server GET /asin/{asin}/embedding", "min_requests"): 0}
    assert "POST /search" in gate.server_table(stats, budgets, [])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"server": {"/search": {"p99_ms": 1}}}, 'expected "<METHOD> /path"'),
        ({"server": {"POST /search": {"p99": 1}}}, "server.POST /search.p99: unknown budget"),
        ({"server": {"POST /search": {"p99_ms": "fast"}}}, "server.POST /search.p99_ms must be a non-negative number"),
        ({"server": ["POST /search"]}, "server: expected a mapping"),
    ],
)
def test_bad_server_budgets_name_the_field(doc, message):
    with pytest.raises(gate.SlaError, match=message.replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        gate.parse_server(doc)
