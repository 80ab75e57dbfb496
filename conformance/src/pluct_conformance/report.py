"""Render a report: rich tables for people, JUnit XML and JSON for machines."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from pluct_conformance.registry import GROUPS, Outcome, Report

STYLE = {
    Outcome.PASSED: "green",
    Outcome.FAILED: "bold red",
    Outcome.SKIPPED: "yellow",
    Outcome.EXPECTED_FAILURE: "magenta",
}


def render(report: Report, console: Console) -> None:
    summary = Table(
        title=f"pluct-conformance: {report.target} ({report.profile}, seed {report.seed})"
    )
    for column in ("group", "passed", "failed", "skipped", "expected failures"):
        summary.add_column(column, justify="right" if column != "group" else "left")
    for group in GROUPS:
        counts = report.counts(group)
        if sum(counts.values()):
            summary.add_row(
                group,
                str(counts["passed"]),
                str(counts["failed"]),
                str(counts["skipped"]),
                str(counts["xfail"]),
            )
    console.print(summary)
    notable = [r for r in report.results if r.outcome is not Outcome.PASSED]
    if notable:
        details = Table(title="Not passed", show_lines=True)
        for column in ("check", "outcome", "reason"):
            details.add_column(column, overflow="fold")
        for result in notable:
            reason = result.reason + (f"\n[dim]{result.curl}[/dim]" if result.curl else "")
            details.add_row(
                result.id, f"[{STYLE[result.outcome]}]{result.outcome.value}[/]", reason
            )
        console.print(details)
    verdict = "FAIL" if report.unexpected_failures else "PASS"
    console.print(f"[bold]{verdict}[/bold] in {report.seconds} s: {report.counts()}")


def write_json(report: Report, path: Path) -> None:
    data = {
        "target": report.target,
        "profile": report.profile,
        "seed": report.seed,
        "seconds": report.seconds,
        "counts": report.counts(),
        "results": [{**asdict(r), "outcome": r.outcome.value} for r in report.results],
    }
    path.write_text(json.dumps(data, indent=2))


def write_junit(report: Report, path: Path) -> None:
    suites = ET.Element("testsuites", name="pluct-conformance", time=str(report.seconds))
    for group in GROUPS:
        results = [r for r in report.results if r.group == group]
        if not results:
            continue
        counts = report.counts(group)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=group,
            tests=str(len(results)),
            failures=str(counts["failed"]),
            skipped=str(counts["skipped"] + counts["xfail"]),
        )
        for result in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{group}.{result.profile}",
                name=result.id,
                time=str(result.seconds),
            )
            if result.outcome is Outcome.FAILED:
                failure = ET.SubElement(case, "failure", message=result.reason)
                failure.text = result.curl
            elif result.outcome in (Outcome.SKIPPED, Outcome.EXPECTED_FAILURE):
                ET.SubElement(case, "skipped", message=f"{result.outcome.value}: {result.reason}")
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
