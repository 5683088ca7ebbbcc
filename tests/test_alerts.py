"""deploy/prometheus/: the alerting rules checked and unit-tested by promtool
(every alert quiet, firing, then resolved), the PrometheusRule the same
rules, every alert with its runbook section, and every metric a rule reads
one the MC exports."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mc.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "mc-alerts.yaml"
RULE_TESTS = PROMETHEUS / "mc-alerts.test.yaml"
OPERATOR_RULE = PROMETHEUS / "mc-prometheusrule.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool(*args, cwd=PROMETHEUS):
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (make test installs Debian's prometheus)")
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alerts():
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    return group["rules"]


def test_promtool_checks_the_rules_and_the_prometheusrule(tmp_path):
    r = promtool("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    spec = yaml.safe_load(OPERATOR_RULE.read_text())
    assert (spec["apiVersion"], spec["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert spec["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    extracted = tmp_path / "operator-rules.yaml"
    extracted.write_text(yaml.safe_dump({"groups": spec["spec"]["groups"]}))
    r = promtool("check", "rules", str(extracted))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_pass():
    r = promtool("test", "rules", RULE_TESTS.name)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_is_tested_quiet_firing_and_resolved():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    seen = {}
    for case in tests:
        for check in case["alert_rule_test"]:
            seen.setdefault(check["alertname"], []).append(
                (int(check["eval_time"].rstrip("m")), bool(check["exp_alerts"])))
    for rule in alerts():
        checks = sorted(seen.pop(rule["alert"], []))
        firing = [t for t, fires in checks if fires]
        assert firing, f"{rule['alert']} never fires"
        assert any(t > firing[0] and not fires for t, fires in checks), \
            f"{rule['alert']} never resolves"
    assert not seen, f"tests of alerts that do not exist: {set(seen)}"


def test_every_alert_has_a_runbook_section_and_a_severity():
    runbook = RUNBOOK.read_text()
    sections = {h.lower() for h in re.findall(r"^## (\S+)$", runbook, re.M)}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert name.lower() in sections, f"no runbook section for {name}"
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"], name
    assert len(sections) == len(alerts()), "a runbook section for an alert that is gone"
    for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", runbook):
        assert anchor in sections, anchor


def test_rules_read_only_metrics_the_mc_exports():
    metrics = Metrics()
    # Exported by an MC whose service token comes from the Auth Controller.
    metrics.track_service_token_expiry(lambda: 3600.0)
    exported = set()
    for family in metrics.registry.collect():
        exported |= {family.name, family.name + "_total"}
    read = {name for rule in alerts() for name in re.findall(r"\bmc_[a-z0-9_]+", rule["expr"])}
    assert read <= exported, read - exported
