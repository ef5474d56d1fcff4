"""Every dashboard and rule expression parses, checked by a live Prometheus (a parse error is
status "error"; an empty result is fine here: the live-data test runs against a loaded stack)."""

import httpx

from tests.deploy.promql import all_expressions, dashboard_expressions, expand_grafana_vars, metric_names, rule_expressions


def test_the_extractor_finds_every_panel_and_rule():
    dash, rules = dashboard_expressions(), rule_expressions()
    assert len(dash) >= 10
    assert len(rules) >= 10
    where = {w.split(":")[0] for w, _ in dash} | {w.split(":")[0] for w, _ in rules}
    assert where >= {"m5-service.json", "m5-indexer.json", "m5-alerts.yml"}
    used = set().union(*(metric_names(e) for _, e in all_expressions()))
    # the metric names the service and indexer engineers were told to expose are all charted
    assert used >= {
        "m5_http_requests_total",
        "m5_http_request_duration_seconds",
        "m5_http_requests_in_flight",
        "m5_query_cache_hits_total",
        "m5_query_cache_misses_total",
        "m5_index_size",
        "m5_feed_lag_messages",
        "m5_bundle_info",
        "m5_index_info",
        "m5_indexer_events_total",
        "m5_indexer_encode_seconds",
        "m5_indexer_freshness_seconds",
        "m5_indexer_consumer_lag",
        "m5_indexer_dead_letters_total",
        "m5_indexer_skipped_unchanged_total",
    }


def test_every_expression_parses_on_a_live_prometheus(prometheus_url):
    errors = []
    with httpx.Client(base_url=prometheus_url, timeout=10) as client:
        for where, expr in all_expressions():
            body = client.get("/api/v1/query", params={"query": expand_grafana_vars(expr)}).json()
            if body["status"] != "success":
                errors.append(f"{where}: {body.get('errorType')}: {body.get('error')}\n    {expr}")
    assert not errors, "PromQL that Prometheus rejects:\n" + "\n".join(errors)


def test_a_syntax_error_is_status_error_not_an_empty_result(prometheus_url):
    # guards the check above: it relies on Prometheus telling a bad expression from a quiet one
    bad = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "sum by (le (rate(m5_x[1m]))"}).json()
    quiet = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "m5_no_such_metric_total"}).json()
    assert bad["status"] == "error"
    assert bad["errorType"] == "bad_data"
    assert quiet["status"] == "success"
    assert quiet["data"]["result"] == []


def test_grafana_interval_variables_are_expanded():
    assert expand_grafana_vars("rate(m5_x[$__rate_interval])") == "rate(m5_x[1m])"
