"""Render a report: a verdict line first, tables for people, JUnit XML and JSON for machines,
and a side-by-side comparison of two JSON reports."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from pluct_conformance.registry import GROUPS, Outcome, Report

STYLE = {
    Outcome.PASSED: "green",
    Outcome.FAILED: "bold red",
    Outcome.INCONCLUSIVE: "cyan",
    Outcome.SKIPPED: "yellow",
    Outcome.EXPECTED_FAILURE: "magenta",
}


def verdict_line(report: Report) -> str:
    """The report's first line: what an operator may conclude, in words."""
    counts = report.counts()
    parts = [f"{counts[o.value]} {o.value}" for o in Outcome if counts[o.value]]
    head = {
        "pass": "PASS",
        "fail": "FAIL",
        "partial": "PARTIAL",
        "incomplete": "INCOMPLETE",
    }[report.verdict]
    line = f"{head}: {report.target} ({report.profile}) in {report.seconds} s: {', '.join(parts)}"
    if report.skipped:
        line += f" — partial: {len(report.skipped)} checks skipped for missing credentials" + (
            "" if report.allow_partial else " (exit 2; --allow-partial to accept)"
        )
    if counts["inconclusive"]:
        line += f" — {counts['inconclusive']} inconclusive (upstream faults), not passed"
    return line


def render(report: Report, console: Console) -> None:
    print(verdict_line(report), flush=True)
    summary = Table(title=f"by group (seed {report.seed})")
    for column in ("group", *(o.value for o in Outcome)):
        summary.add_column(column, justify="right" if column != "group" else "left")
    for group in GROUPS:
        counts = report.counts(group)
        if sum(counts.values()):
            summary.add_row(group, *(str(counts[o.value]) for o in Outcome))
    console.print(summary)
    notable = [r for r in report.results if r.outcome is not Outcome.PASSED]
    for outcome in (
        Outcome.FAILED,
        Outcome.INCONCLUSIVE,
        Outcome.SKIPPED,
        Outcome.EXPECTED_FAILURE,
    ):
        chosen = [r for r in notable if r.outcome is outcome]
        if not chosen:
            continue
        console.print(f"[{STYLE[outcome]}]{outcome.value} ({len(chosen)})[/]")
        for result in chosen:
            print(f"- {result.id}  [{result.promise}]")
            print(f"    {result.reason}")
            if result.curl:
                print(f"    reproduce: {result.curl}")
    print(verdict_line(report), flush=True)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "verdict": report.verdict,
        "summary": verdict_line(report),
        "target": report.target,
        "profile": report.profile,
        "seed": report.seed,
        "seconds": report.seconds,
        "counts": report.counts(),
        "results": [{**asdict(r), "outcome": r.outcome.value} for r in report.results],
    }


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n")


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
            skipped=str(counts["skipped"] + counts["xfail"] + counts["inconclusive"]),
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
                failure = ET.SubElement(
                    case, "failure", message=f"[{result.promise}] {result.reason}"
                )
                failure.text = result.curl
            elif result.outcome is not Outcome.PASSED:
                ET.SubElement(case, "skipped", message=f"{result.outcome.value}: {result.reason}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _first_line(text: str, width: int = 90) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def compare(paths: list[Path], labels: list[str] | None = None) -> str:
    """A Markdown table, one row per check, one column per report (outcome + first detail)."""
    reports = [json.loads(p.read_text()) for p in paths]
    by_id: list[dict[str, dict[str, Any]]] = [
        {r["id"]: r for r in report["results"]} for report in reports
    ]
    order: list[str] = []
    promises: dict[str, str] = {}
    for results in by_id:
        for check_id, result in results.items():
            if check_id not in promises:
                order.append(check_id)
                promises[check_id] = result.get("promise", "")
    names = [f"{r['target']} ({r['profile']})" for r in reports]
    names = [label or name for label, name in zip(labels or [], names, strict=False)] + names[
        len(labels or []) :
    ]
    lines = [
        "| check | promise | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(reports),
    ]
    for check_id in order:
        cells = []
        for results in by_id:
            found = results.get(check_id)
            if found is None:
                cells.append("not run")
                continue
            result = found
            cell = (
                f"**{result['outcome']}**" if result["outcome"] == "failed" else result["outcome"]
            )
            if result["outcome"] != "passed" and result.get("reason"):
                cell += ": " + _first_line(result["reason"]).replace("|", "\\|")
            cells.append(cell)
        lines.append(f"| `{check_id}` | {promises[check_id]} | " + " | ".join(cells) + " |")
    totals = [", ".join(f"{n} {k}" for k, n in r["counts"].items() if n) for r in reports]
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return "\n".join(lines)
