"""`icg report`: one static HTML page (index.html + images/) of covers, result tables, bars and curves."""

from icg.report.build import build_report

__all__ = ["build_report"]
