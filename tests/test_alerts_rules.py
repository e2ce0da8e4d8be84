"""Rule files: ``linkpulse alerts check`` names file, line and field of every problem;
``linkpulse alerts test`` runs the project's own example rule tests; reload keeps old rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from linkpulse.alerts.reload import RuleSetHolder
from linkpulse.alerts.rules import DEFAULT_SCORE_THRESHOLD, RuleFileError, check_rule_files
from linkpulse.alerts.ruletest import run_rule_tests
from linkpulse.cli import app

RULES = Path(__file__).resolve().parents[1] / "deploy" / "rules"
runner = CliRunner()


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def check(*paths: Path) -> tuple[int, str]:
    r = runner.invoke(app, ["alerts", "check", *map(str, paths)])
    return r.exit_code, r.output  # stdout and stderr together


def test_the_example_rules_check_clean_and_their_tests_pass() -> None:
    code, out = check(RULES)
    assert code == 0, out
    assert "ok: 6 rules in 2 files" in out
    r = runner.invoke(app, ["alerts", "test", str(RULES / "payments.test.yaml")])
    assert r.exit_code == 0, r.output
    assert "0 failed" in r.output
    result = run_rule_tests(RULES / "payments.test.yaml")
    assert result.ok and result.passed >= 15


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    f = write(tmp_path, "bad.yaml", "rules:\n  - name: a\n    kind: threshold\n   metric: x\n")
    code, out = check(f)
    assert code == 1
    assert f"{f}:4: (syntax):" in out


def test_every_problem_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "many.yaml",
        """rules:
  - name: unknown_metric
    kind: threshold
    metric: gmvv
    threshold: 1
  - name: bad_duration
    kind: threshold
    metric: gmv
    threshold: 1
    for: 3 minutes
  - name: bad_matcher
    kind: anomaly
    metric: gmv
    where: ['seller_id']
  - name: bad_hysteresis
    kind: threshold
    metric: payment_failure_rate
    threshold: 0.05
    recovery: 0.08
    severity: urgent
    colour: red
    summary: "{{ valeu }}"
  - name: bad_matcher
    kind: absence
    metric: orders
""",
    )
    code, out = check(f)
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith(str(f))]
    want = [
        (4, "rules[0](unknown_metric).metric", "unknown metric 'gmvv'"),
        (10, "rules[1](bad_duration).for", "expected a duration"),
        (14, "rules[2](bad_matcher).where", "matcher 'seller_id'"),
        (19, "rules[3](bad_hysteresis).recovery", "must be at or below the threshold"),
        (20, "rules[3](bad_hysteresis).severity", "expected one of critical"),
        (21, "rules[3](bad_hysteresis).colour", "unknown field"),
        (22, "rules[3](bad_hysteresis).summary", "unknown template variable 'valeu'"),
        (23, "rules[4](bad_matcher).absent_for", "needs absent_for"),
    ]
    assert len(lines) == len(want), out
    for line, (n, field, text) in zip(lines, want, strict=True):
        assert line.startswith(f"{f}:{n}: {field}: "), line
        assert text in line, line


def test_names_defined_twice_across_files(tmp_path: Path) -> None:
    one = "rules:\n  - {name: same, kind: anomaly, metric: gmv}\n"
    write(tmp_path, "a.yaml", one)
    write(tmp_path, "b.yaml", one)
    write(tmp_path, "c.yaml", "tenant: acme\n" + one)  # another scope: fine
    _, problems = check_rule_files([tmp_path])
    assert [(Path(p.file).name, p.line, p.field) for p in problems] == [("b.yaml", 2, "name")]
    assert "also defined at" in problems[0].message


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    code, out = check(tmp_path / "nope.yaml")
    assert code == 1 and "nope.yaml:0: (file): no such file" in out


def test_a_failing_rule_test_fails_with_where_and_what(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        "rules:\n  - {name: hi, kind: threshold, metric: orders, threshold: 5}\n",
    )
    t = write(
        tmp_path,
        "r.test.yaml",
        """rule_files: [r.yaml]
tests:
  - name: wrong expectation
    input_series: [{series: 'orders{tenant="a"}', values: "9"}]
    alert_rule_test:
      - {eval_time: 1m, alertname: hi, exp_alerts: []}
      - {eval_time: 1m, alertname: nope, exp_alerts: []}
""",
    )
    r = runner.invoke(app, ["alerts", "test", str(t)])
    assert r.exit_code == 1
    result = run_rule_tests(t)
    assert [(p.line, p.field) for p in result.problems] == [
        (7, "tests[0].alert_rule_test[1].alertname")
    ]
    t.write_text(
        t.read_text().replace("      - {eval_time: 1m, alertname: nope, exp_alerts: []}\n", "")
    )
    result = run_rule_tests(t)
    assert len(result.failures) == 1
    assert "wrong expectation: at 1m, hi: unexpected firing alerts" in result.failures[0]


def test_reload_keeps_the_old_rules_when_the_new_file_is_bad(tmp_path: Path) -> None:
    f = write(tmp_path, "r.yaml", "rules:\n  - {name: a, kind: anomaly, metric: gmv}\n")
    holder = RuleSetHolder([tmp_path])
    assert holder.poll() is False
    f.write_text("rules:\n  - {name: a, kind: anomaly, metric: gmv, for: never}\n")
    assert holder.poll() is False  # changed, but bad: old rules stay
    assert [r.name for r in holder.current.rules] == ["a"] and holder.version == 1
    assert [p.field for p in holder.last_problems] == ["rules[0](a).for"]
    f.write_text("rules:\n  - {name: b, kind: anomaly, metric: gmv}\n")
    assert holder.poll() is True
    assert [r.name for r in holder.current.rules] == ["b"] and holder.version == 2
    holder.request_reload()  # what SIGHUP does: reload at the next look
    f.write_text("rules:\n  - {name: c, kind: anomaly, metric: gmv}\n")
    assert [r.name for r in holder.current.rules] == ["c"]
    with pytest.raises(RuleFileError):
        RuleSetHolder([write(tmp_path / ".." / tmp_path.name, "r.yaml", "rules: 3")])


def test_default_score_threshold_is_the_detectors_page_threshold() -> None:
    from linkpulse.online_ml import PAGE_THRESHOLD

    assert DEFAULT_SCORE_THRESHOLD == PAGE_THRESHOLD


def test_sighup_reloads_at_the_next_look(tmp_path: Path) -> None:
    import os
    import signal

    from linkpulse.alerts.reload import install_sighup

    f = write(tmp_path, "r.yaml", "rules:\n  - {name: a, kind: anomaly, metric: gmv}\n")
    holder = RuleSetHolder([tmp_path])
    before = signal.getsignal(signal.SIGHUP)
    try:
        assert install_sighup([holder])
        f.write_text("rules:\n  - {name: b, kind: anomaly, metric: gmv}\n")
        os.kill(os.getpid(), signal.SIGHUP)
        assert [r.name for r in holder.current.rules] == ["b"]
    finally:
        signal.signal(signal.SIGHUP, before)
