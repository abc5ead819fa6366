"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

    python deploy/prometheus/render_rule.py            # after editing alerts.yml
    python deploy/prometheus/render_rule.py --check    # exit 1 when the two differ

alerts.yml is the one home of the alert rules (promtool tests it as it is); the
PrometheusRule carries the same groups for the Prometheus Operator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
RULE = HERE.parent / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/render_rule.py: edit that
# file and run the script, never this one (tests/deploy/test_kubernetes.py compares them).
"""


def render(alerts_text: str) -> str:
    """The PrometheusRule manifest for the rule groups of an alerts.yml text."""
    groups = yaml.safe_load(alerts_text)["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "m2fp", "labels": {"release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render(ALERTS.read_text())
    if args.check:
        if RULE.read_text() != text:
            print(f"{RULE} differs from {ALERTS}: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
