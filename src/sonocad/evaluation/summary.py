"""Human-readable lines for a metrics.json: mean (95 % CI) per metric and group."""

from __future__ import annotations

import math
from typing import Any


def format_summary(metrics: dict[str, Any]) -> str:
    if "parts" in metrics:  # a multitask model: one block per head
        return "\n".join(f"{name}: {format_summary(part)}"
                         for name, part in metrics["parts"].items())
    lines = [f"{metrics.get('model', 'model')} on {metrics.get('split', '?')}: "
             f"{metrics['n_images']} images ({metrics['reduction']})"]
    for group, stats in metrics.get("groups", {}).items():
        lines.append(f"  {group} ({stats['n_images']} images)")
        named = {k: v for k, v in stats.items() if isinstance(v, dict) and "mean" in v}
        width = max(map(len, named), default=0)
        for name, value in named.items():
            lines.append(f"    {name:<{width}}  {format_ci(value)}")
    detection = metrics.get("lesion_detection")
    if detection:
        lines.append("  lesion by lesion (found at IoU >= 0.1 / 0.5; made-up lesions per image)")
        width = max(map(len, detection))
        lines += [f"    {name:<{width}}  {format_ci(value)}" for name, value in detection.items()]
    return "\n".join(lines)


def format_ci(stat: dict[str, float]) -> str:
    """'0.712 (0.680-0.741)', or 'n/a' when undefined."""
    if stat["mean"] is None or math.isnan(stat["mean"]):
        return "n/a"
    low, high = stat.get("ci_low"), stat.get("ci_high")
    if low is None or math.isnan(low):
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ({low:.3f}-{high:.3f})"
