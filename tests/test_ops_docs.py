"""The operator docs (doc/OPERATIONS.md, doc/prometheus/, doc/grafana/) name only metrics that exist.

Fast and offline: no server is started. A misspelt metric name in any of the files fails here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "doc"
OPERATIONS = DOC / "OPERATIONS.md"
ALERTS = DOC / "prometheus" / "alerts.yml"
PROMETHEUS = DOC / "prometheus" / "prometheus.yml"
DASHBOARD = DOC / "grafana" / "visionguard.json"

COUNTERS = {
    "visionguard_source_frames_total",
    "visionguard_processed_frames_total",
    "visionguard_skipped_frames_total",
    "visionguard_source_reconnects_total",
    "visionguard_offers_total",
    "visionguard_sent_frames_total",
    "visionguard_events_dropped_total",
    "visionguard_recording_bytes_total",
    "visionguard_recording_dropped_frames_total",
    "visionguard_events_total",
    "visionguard_sse_disconnects_total",
}
HISTOGRAMS = {"visionguard_inference_seconds", "visionguard_event_loop_lag_seconds"}
GAUGES = {"visionguard_source_up", "visionguard_source_running", "visionguard_viewers", "visionguard_sessions",
          "visionguard_max_sessions"}
KNOWN = COUNTERS | HISTOGRAMS | GAUGES
# Names the issue adds beyond the contract's "Metrics" list.
EXTRAS = {"visionguard_sse_disconnects_total", "visionguard_max_sessions", "visionguard_recording_dropped_frames_total",
          "visionguard_source_running", "visionguard_events_dropped_total"}

ALERT_NAMES = {
    "VisionGuardSourceDown",
    "VisionGuardInferenceSlow",
    "VisionGuardFramesSkipped",
    "VisionGuardEventLoopLag",
    "VisionGuardSessionsNearLimit",
}

NAME = re.compile(r"visionguard_[a-z_]+")


def metric_names(text: str) -> set[str]:
    """Every metric name in `text`, histogram series (_bucket/_sum/_count) mapped to their histogram."""
    names = set()
    for name in NAME.findall(text):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    quote = None
    for ch in expr:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and quote is None


def alert_rules() -> list[dict]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for var in data["templating"]["list"]:
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def contract_text() -> str | None:
    for path in (os.environ.get("VISIONGUARD_CONTRACT"), ROOT / "shared" / "CONTRACT.md",
                 ROOT.parent / "shared" / "CONTRACT.md", "/work/shared/CONTRACT.md"):
        if path and Path(path).is_file():
            return Path(path).read_text()
    return None


def test_the_checker_catches_a_misspelt_name():
    assert metric_names("rate(visionguard_proccessed_frames_total[1m])") - KNOWN
    assert not metric_names("rate(visionguard_inference_seconds_bucket[5m]) visionguard_offers_total") - KNOWN
    assert metric_names("visionguard_offers_total_bucket") - KNOWN
    assert balanced('sum by (le) (rate(x{a=~"b|c"}[5m]))')
    assert not balanced("sum(rate(x[5m])")
    assert not balanced("sum(rate(x[5m)])")


def test_known_names_are_in_the_contract():
    text = contract_text()
    if text is None:
        pytest.skip("CONTRACT.md not found (set VISIONGUARD_CONTRACT)")
    missing = {n for n in KNOWN - EXTRAS if not re.search(rf"\b{n}\b", text)}
    assert not missing, f"not in CONTRACT.md: {sorted(missing)}"


@pytest.mark.parametrize("path", [OPERATIONS, ALERTS, PROMETHEUS, DASHBOARD], ids=lambda p: p.name)
def test_docs_use_only_known_metric_names(path):
    unknown = metric_names(path.read_text()) - KNOWN
    assert not unknown, f"{path.relative_to(ROOT)} names unknown metrics: {sorted(unknown)}"


def test_operations_table_lists_every_metric():
    rows = "\n".join(line for line in OPERATIONS.read_text().splitlines() if line.startswith("| `visionguard_"))
    assert metric_names(rows) == KNOWN
    assert "rate(visionguard_processed_frames_total[1m])" in OPERATIONS.read_text()


def test_alert_rules():
    rules = alert_rules()
    assert [r["alert"] for r in rules] and {r["alert"] for r in rules} == ALERT_NAMES
    assert len(rules) == len(ALERT_NAMES)
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()
        assert balanced(rule["expr"]), f"unbalanced PromQL in {rule['alert']}: {rule['expr']}"
        assert metric_names(rule["expr"]) and not metric_names(rule["expr"]) - KNOWN, rule["alert"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["VisionGuardSourceDown"]["for"] == "1m"
    assert "0.033" in by_name["VisionGuardInferenceSlow"]["expr"]
    assert "0.5" in by_name["VisionGuardFramesSkipped"]["expr"]
    assert "0.1" in by_name["VisionGuardEventLoopLag"]["expr"]
    assert "0.9" in by_name["VisionGuardSessionsNearLimit"]["expr"]


def test_prometheus_config():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "visionguard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    assert job["static_configs"][0]["targets"]


def test_operations_quotes_the_prometheus_config_as_it_is():
    text = OPERATIONS.read_text()
    body = "\n".join(line for line in PROMETHEUS.read_text().splitlines() if not line.startswith("# "))
    assert body.strip() in text
    assert "--sub prometheus --scope metrics --ttl 31536000" in text


def test_make_token_has_the_flags_the_doc_uses():
    script = (ROOT / "scripts" / "make-token.py").read_text()
    for flag in ("--sub", "--scope", "--ttl"):
        assert f'"{flag}"' in script


def test_dashboard():
    data = json.loads(DASHBOARD.read_text())
    assert data["title"] and data["uid"] and 36 <= data["schemaVersion"] <= 41
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "label_values(visionguard_source_up, source)" in json.dumps(variables["source"])
    panels = [p for p in data["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in data["panels"]}) == len(data["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and balanced(target["expr"]), panel["title"]
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert not used - KNOWN
    assert used >= {"visionguard_processed_frames_total", "visionguard_source_frames_total",
                    "visionguard_inference_seconds", "visionguard_viewers", "visionguard_sessions",
                    "visionguard_offers_total", "visionguard_event_loop_lag_seconds", "visionguard_source_up",
                    "visionguard_skipped_frames_total", "visionguard_events_total"}


def test_readme_points_at_operations():
    assert "(doc/OPERATIONS.md)" in (ROOT / "README.md").read_text()
