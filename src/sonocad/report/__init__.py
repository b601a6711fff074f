"""Reports: one self-contained HTML file of training runs, their evaluations and comparisons."""

from sonocad.report.runner import build_report

__all__ = ["build_report"]
