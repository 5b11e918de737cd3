"""``tinyq report RUN``: ``RUN/report.json``, ``RUN/report.md`` and ``RUN/plots/*.png``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from tinyq.report.build import build_report
from tinyq.report.markdown import render
from tinyq.report.plots import FIGURES
from tinyq.runfolder import write_bytes, write_json, write_text

__all__ = ["build_report", "write_report"]


def write_report(run_path: str | Path, data: str | Path | None = None, references: Sequence[str] = (),
                 limit: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Build the report and write its files into the run; returns the report dict."""
    report = build_report(run_path, data, references, limit, log)
    run = Path(run_path)
    plots = {}
    for name, figure in FIGURES.items():
        png = figure(report)
        if png is not None:
            write_bytes(run / "plots" / f"{name}.png", png)
            plots[name] = f"plots/{name}.png"
    report["plots"] = plots
    write_json(run / "report.json", report)
    write_text(run / "report.md", render(report))
    return report
