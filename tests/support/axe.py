"""axe-core (bundled with axe-playwright-python: no network at run time) against a live page.

`serious_violations(page)` runs the WCAG 2.0/2.1 A and AA rules (plus axe's best practices) on
the page as it is now and returns every violation axe rates serious or critical, one line per
element, so a failing assertion names the rule, the element and axe's own explanation.
"""

from __future__ import annotations

from typing import Any

from axe_playwright_python.sync_playwright import Axe

AXE = Axe()
WCAG_AA_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
BLOCKING = ("serious", "critical")


SETTLE_SCRIPT = """async () => {
  // Finite animations (a screen fading in) would be measured half-way; endless ones (spinners)
  // never finish and are left running.
  const finite = document.getAnimations().filter((a) => {
    const timing = a.effect?.getComputedTiming();
    return timing && Number.isFinite(timing.endTime) && a.playState === "running";
  });
  await Promise.all(finite.map((a) => a.finished.catch(() => null)));
}"""


def axe_results(page, tags: list[str] | None = None) -> dict[str, Any]:
    """The raw axe-core result for the page (`violations` only), once finite animations end."""
    page.evaluate(SETTLE_SCRIPT)
    options = {
        "resultTypes": ["violations"],
        "runOnly": {"type": "tag", "values": tags or WCAG_AA_TAGS},
    }
    return AXE.run(page, options=options).response


def serious_violations(page, tags: list[str] | None = None) -> list[str]:
    """`"rule (impact) selector: summary"` for each element axe rates serious or critical."""
    found = []
    for violation in axe_results(page, tags)["violations"]:
        if violation["impact"] not in BLOCKING:
            continue
        for node in violation["nodes"]:
            target = " ".join(str(t) for t in node["target"])
            summary = node.get("failureSummary", "").replace("\n", " ")
            found.append(f"{violation['id']} ({violation['impact']}) {target}: {summary}")
    return found


def assert_accessible(page, state: str) -> None:
    """No serious or critical axe violation in this page state."""
    found = serious_violations(page)
    assert found == [], f"axe, {state}:\n" + "\n".join(found)


__all__ = ["WCAG_AA_TAGS", "assert_accessible", "axe_results", "serious_violations"]
