"""Evaluation results: the JSON layout, a stdout table, Markdown and a PNG bar chart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from descriptors.atomic_files import atomic_write_text
from evaluation.datasets.protocols import Coverage

SCORE_KEYS = ("map", "map_easy", "map_medium", "map_hard", "mean_iou", "iou_at_0.5")


@dataclass
class MethodResult:
    method: str
    backbone: str
    qe: int | None = 0
    scores: dict[str, float] = field(default_factory=dict)  # keys from SCORE_KEYS that apply
    extra: dict[str, float | int] = field(default_factory=dict)  # e.g. {"at": 30} or {"pairs": 22}

    def as_dict(self) -> dict:
        out: dict = {"method": self.method, "backbone": self.backbone}
        if self.qe is not None:
            out["qe"] = self.qe
        out.update({k: round(float(v), 6) for k, v in self.scores.items()})
        out.update(self.extra)
        return out


@dataclass
class EvalReport:
    dataset: str
    protocol: str
    coverage: Coverage
    results: list[MethodResult]
    # image size, whitening, ...: shown in the table and the Markdown, not in the JSON
    settings: dict = field(default_factory=dict)
    # with an --image-size / --k sweep: per (method, qe, expansion, rerank), its best sweep point
    best: list[MethodResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "coverage": self.coverage.as_dict(),
            "results": [r.as_dict() for r in self.results],
        }
        if self.best:
            out["best"] = [r.as_dict() for r in self.best]
        return out

    def pick_best(self) -> None:
        """`best` from `results`: the highest headline score of each (method, qe, expansion,
        rerank) over the sweep's image sizes and K."""
        key = self.headline_key()
        groups: dict[tuple, MethodResult] = {}
        for r in self.results:
            group = (r.method, r.qe, r.extra.get("expansion"), r.extra.get("rerank"))
            if group not in groups or r.scores.get(key, -1) > groups[group].scores.get(key, -1):
                groups[group] = r
        self.best = list(groups.values())

    def score_keys(self) -> list[str]:
        present = {k for r in self.results for k in r.scores}
        return [k for k in SCORE_KEYS if k in present]

    def headline_key(self) -> str:
        keys = self.score_keys()
        for preferred in ("map", "map_medium", "mean_iou"):
            if preferred in keys:
                return preferred
        return keys[0]


def _percent(key: str, value: float) -> str:
    return f"{100 * value:.1f}" if key.startswith("map") or key.startswith("iou_at") else f"{value:.3f}"


def _rows(report: EvalReport, results: list[MethodResult] | None = None) -> tuple[list[str], list[list[str]]]:
    results = report.results if results is None else results
    keys = report.score_keys()
    extra_keys = sorted({k for r in results for k in r.extra})
    header = ["method", "backbone", "qe", *keys, *extra_keys, "coverage"]
    rows = []
    for r in results:
        rows.append(
            [
                r.method,
                r.backbone,
                "-" if r.qe is None else str(r.qe),
                *[_percent(k, r.scores[k]) if k in r.scores else "" for k in keys],
                *[str(r.extra.get(k, "")) for k in extra_keys],
                str(report.coverage),
            ]
        )
    return header, rows


def _plain_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    return lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]


def format_table(report: EvalReport) -> str:
    lines = [f"{report.dataset} — {report.protocol} ({report.coverage})"]
    if report.settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    lines += _plain_table(*_rows(report))
    if report.best:
        lines += ["", "each method at its best image size and K:"]
        lines += _plain_table(*_rows(report, report.best))
    return "\n".join(lines)


def format_markdown(report: EvalReport) -> str:
    header, rows = _rows(report)
    lines = [f"**{report.dataset}**, protocol `{report.protocol}` — coverage: {report.coverage}", ""]
    if report.settings:
        lines[-1:] = ["", "settings: " + ", ".join(f"`{k}={v}`" for k, v in report.settings.items()), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if report.best:
        header, rows = _rows(report, report.best)
        lines += ["", "Each method at its best image size and K:", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(report: EvalReport, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report.as_dict(), indent=2) + "\n", mkdir=True)


def write_markdown(report: EvalReport, path: str | Path) -> None:
    atomic_write_text(path, format_markdown(report), mkdir=True)


def write_bar_chart(report: EvalReport, path: str | Path) -> None:
    """One bar per (method, qe) with the headline score (mAP, Medium mAP or mean IoU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = report.headline_key()
    labels = [r.method if r.qe in (None, 0) else f"{r.method}\n+QE{r.qe}" for r in report.results]
    values = [
        100 * r.scores.get(key, float("nan")) if key != "mean_iou" else r.scores.get(key)
        for r in report.results
    ]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 1.5), 3.6))
    bars = ax.bar(range(len(values)), values, color="#4a7ab5")
    ax.bar_label(bars, fmt="%.1f" if key != "mean_iou" else "%.2f", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(key.replace("_", " ") + (" (%)" if key != "mean_iou" else ""))
    ax.set_title(f"{report.dataset} ({report.protocol}), {report.coverage}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
