"""The study report: per-trial score distributions and LLM latency as a picture (PNG or HTML).

::

    study.metrics(name) ─┬─ per-trial samples ──> box strips, best trials highlighted
                         ├─ per-trial means ────> interval bars (the mean's 95% CI)
                         ├─ pooled llm.latency_s ─> histogram with p50 / p90 / p99
                         └─ trial values ────────> value by trial number, best so far
    .png: the figure       .html: the figure as base64 plus the summary tables

matplotlib is imported here only, through its object API on the Agg canvas, so
no pyplot state or GUI backend is touched.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from studyhall.optimizer.study._summary import FIELDS, Summary, interval_text
from studyhall.optimizer.telemetry._registry import LATENCY
from studyhall.optimizer.telemetry._study import StudyMetrics
from studyhall.storage import InvalidRequest
from studyhall.storage._trials import read_study_samples

if TYPE_CHECKING:
    from studyhall.optimizer.study._study import Study
    from studyhall.optimizer.telemetry._selection import Selection

MAX_TRIALS = 60  # box strips on one axis before they become unreadable
N_BEST = 3
MAX_LEVELS = 6  # at most this many distinct scores: plot shares, not boxes
BEST_COLOR, OTHER_COLOR, SELECTED_COLOR = "#d95f02", "#7570b3", "#1b9e77"


def render_report(study: Study, out: str | Path, name: str = "score", max_trials: int = MAX_TRIALS) -> Path:
    """Write the report of ``study`` to ``out`` (``.png`` or ``.html``) and return its path."""
    path = Path(out)
    kind = path.suffix.lower()
    if kind not in (".png", ".html", ".htm"):
        raise InvalidRequest(f"the report is written as .png or .html; got {str(out)!r}")
    metrics = study.metrics(name)
    png = render_png(study, metrics, max_trials)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".png":
        path.write_bytes(png)
    else:
        path.write_text(_html(study, metrics, png), encoding="utf-8")
    return path


def _best_numbers(study: Study, n: int) -> list[int]:
    if len(study.directions) != 1:
        return [t.number for t in study.best_trials][:n]
    done = [t for t in study.trials(states=["complete"]) if t.value is not None]
    done.sort(key=lambda t: t.value, reverse=study.directions[0] == "maximize")  # type: ignore[arg-type,return-value]
    return [t.number for t in done[:n]]


def _pick(numbers: list[int], best: list[int], limit: int) -> list[int]:
    """At most ``limit`` trial numbers: the best ones and then the latest, in number order."""
    if len(numbers) <= limit:
        return numbers
    keep = [n for n in best if n in numbers][:limit]
    for n in reversed(numbers):
        if len(keep) >= limit:
            break
        if n not in keep:
            keep.append(n)
    return sorted(keep)


def render_png(study: Study, metrics: StudyMetrics, max_trials: int = MAX_TRIALS) -> bytes:
    """The report figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples = read_study_samples(study.storage, study._study_id, metrics.name)
    samples = {n: x for n, x in samples.items() if x.size}
    latency = read_study_samples(study.storage, study._study_id, LATENCY)
    best = _best_numbers(study, N_BEST)
    fig = Figure(figsize=(12, 12), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplot_mosaic([["box", "box"], ["ci", "ci"], ["lat", "val"]], height_ratios=[1.0, 0.8, 1.0])
    ax_box, ax_ci, ax_lat, ax_val = axes["box"], axes["ci"], axes["lat"], axes["val"]
    sel = study.selection
    title = f"study {study.name}: {metrics.n_trials} trials, {metrics.n_complete} complete"
    fig.suptitle(title + (f"\n{sel.line()}" if sel else ""))

    numbers = _pick(sorted(samples), best, max_trials)
    if numbers:
        _score_strips(ax_box, [samples[n] for n in numbers], numbers, best, metrics.name)
        if len(numbers) < len(samples):
            ax_box.set_title(
                ax_box.get_title() + f"\n{len(numbers)} of {len(samples)} trials shown: the best and the latest"
            )
    else:
        _empty(ax_box, f"no per-example {metrics.name!r} samples yet: tell trials with scores=[...]")
    if numbers:
        _interval_bars(
            ax_ci,
            [metrics.per_trial[n] for n in numbers],
            numbers,
            best,
            metrics.name,
            sel if sel is not None and sel.metric == metrics.name else None,
        )
    else:
        _empty(ax_ci, f"no per-trial {metrics.name!r} means yet")

    pooled = [x for x in latency.values() if x.size]
    if pooled:
        lat = np.concatenate(pooled)
        ax_lat.hist(lat, bins=min(40, max(5, int(math.sqrt(lat.size)))), color=OTHER_COLOR, alpha=0.8)
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            v = float(np.percentile(lat, q))
            ax_lat.axvline(v, color=BEST_COLOR, linestyle=style, label=f"p{q} {v:.3g}s")
        ax_lat.legend()
        ax_lat.set_title(f"LLM latency over {lat.size} calls")
        ax_lat.set_xlabel("seconds")
        ax_lat.set_ylabel("calls")
    else:
        _empty(ax_lat, "no LLM latency recorded")

    _values_plot(study, ax_val, best)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _score_strips(ax: Any, data: list[np.ndarray], numbers: list[int], best: list[int], name: str) -> None:
    """One strip per trial: stacked shares when scores take a few values (pass/fail), else boxes."""
    xs = np.arange(len(numbers))
    levels = np.unique(np.concatenate(data))
    if levels.size <= MAX_LEVELS:
        # A box of 0/1 scores is a useless 0-to-1 bar; the share of each value is the distribution.
        cmap = _colors(levels.size)
        bottom = np.zeros(len(data))
        for i, level in enumerate(levels):
            share = np.array([float(np.mean(x == level)) for x in data])
            ax.bar(xs, share, bottom=bottom, color=cmap[i], width=0.8, label=f"{name} = {level:g}")
            bottom += share
        ax.bar(
            xs,
            np.ones(len(data)),
            width=0.8,
            fill=False,
            edgecolor=[BEST_COLOR if n in best else "none" for n in numbers],
            linewidth=2.5,
        )
        ax.set_ylabel("share of examples")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        ax.set_title(f"per-example {name} by trial (shares of each value); best {len(best)} outlined in orange")
    else:
        boxes = ax.boxplot(
            data, positions=xs, showmeans=True, patch_artist=True, widths=0.6, flierprops={"markersize": 2}
        )
        for n, patch in zip(numbers, boxes["boxes"]):
            patch.set_facecolor(BEST_COLOR if n in best else OTHER_COLOR)
            patch.set_alpha(0.9 if n in best else 0.45)
        ax.set_ylabel(name)
        ax.set_title(f"per-example {name} by trial (boxes: quartiles, triangles: means); best {len(best)} in orange")
    ax.set_xticks(xs, [str(n) for n in numbers])
    for label, n in zip(ax.get_xticklabels(), numbers):
        if n in best:
            label.set_color(BEST_COLOR)
            label.set_fontweight("bold")
    if len(numbers) > 25:
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.set_xlim(-0.6, len(numbers) - 0.4)
    ax.set_xlabel("trial")


def _interval_bars(
    ax: Any, summaries: list[Summary], numbers: list[int], best: list[int], name: str, sel: Selection | None = None
) -> None:
    """Each trial's mean with its 95% interval: overlapping bars are trials the data cannot tell apart.

    The selection's score and interval (on its own, usually larger, set of examples) is a green band.
    """
    xs = np.arange(len(numbers))
    means = np.array([s.mean for s in summaries])
    lows = np.array([s.ci_low for s in summaries])
    highs = np.array([s.ci_high for s in summaries])
    colors = [BEST_COLOR if n in best else OTHER_COLOR for n in numbers]
    ax.vlines(xs, lows, highs, colors=colors, linewidth=2.5, alpha=0.8)
    ax.scatter(xs, means, color=colors, s=18, zorder=3)
    methods = sorted({s.ci_method for s in summaries if s.ci_method})
    how = " and ".join({"wilson": "Wilson", "t": "t"}.get(m, m) for m in methods)
    ax.set_title(
        f"mean {name} by trial with its 95% confidence interval ({how}); overlapping bars: not distinguishable"
    )
    ax.set_ylabel(f"mean {name}")
    if sel is not None:
        ax.axhspan(sel.ci_low, sel.ci_high, color=SELECTED_COLOR, alpha=0.15)
        ax.axhline(
            sel.score, color=SELECTED_COLOR, label=f"selected (trial {sel.trial}): {sel.score:.3g} on {sel.n} examples"
        )
        if sel.trial in numbers:
            i = numbers.index(sel.trial)
            ax.scatter([xs[i]], [means[i]], s=120, facecolors="none", edgecolors=SELECTED_COLOR, linewidths=2, zorder=4)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(xs, [str(n) for n in numbers])
    if len(numbers) > 25:
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.set_xlim(-0.6, len(numbers) - 0.4)
    ax.set_xlabel("trial")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"]
    return [cmap(0.15 + 0.7 * i / max(1, n - 1)) for i in range(n)]


def _values_plot(study: Study, ax: Any, best: list[int]) -> None:
    done = [(t.number, t.values[0]) for t in study.trials(states=["complete"]) if t.values]
    if not done:
        _empty(ax, "no completed trials yet")
        return
    xs, ys = zip(*sorted(done))
    ax.scatter(xs, ys, s=12, color=OTHER_COLOR, label="trial value")
    agg = np.maximum.accumulate if study.directions[0] == "maximize" else np.minimum.accumulate
    ax.step(xs, agg(np.asarray(ys)), where="post", color=BEST_COLOR, label="best so far")
    marked = [(x, y) for x, y in done if x in best]
    if marked:
        ax.scatter(*zip(*marked), s=40, facecolors="none", edgecolors=BEST_COLOR)
    ax.set_title("objective value (first objective)")
    ax.set_xlabel("trial")
    ax.legend()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def summary_rows(metrics: StudyMetrics) -> list[tuple[str, Summary | None]]:
    """(label, Summary) rows of the study summary table."""
    rows: list[tuple[str, Summary | None]] = []
    for i, s in enumerate(metrics.values):
        rows.append(("trial value" if len(metrics.values) == 1 else f"trial value [{i}]", s))
    rows.append((f"{metrics.name} (pooled)", metrics.pooled))
    if metrics.name != LATENCY:
        rows.append((f"{LATENCY} (pooled)", metrics.latency))
    return rows


def _fmt(v: float | int) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _selection_html(study: Study) -> str:
    """The study's selected answer (and how it differs from the best trial), or nothing."""
    sel = study.selection
    if sel is None:
        return ""
    return (
        f'<h2>Selected answer</h2><p class="selection"><b>{html.escape(sel.line())}</b></p>'
        "<p>The <i>best trials</i> below rank trials by their value (the mean over a minibatch); the selected "
        "answer was chosen on more examples (its interval is over those) and is the study's answer.</p>"
    )


def _html(study: Study, metrics: StudyMetrics, png: bytes) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("", *FIELDS, "sem", "mean, 95% CI"))
    body = []
    for label, s in summary_rows(metrics):
        if s:
            cells = "".join(f"<td>{_fmt(getattr(s, k))}</td>" for k in (*FIELDS, "sem"))
            cells += f"<td>{html.escape(interval_text(s.ci_low, s.ci_high, s.ci_method))}</td>"
        else:
            cells = f"<td colspan={len(FIELDS) + 2}>-</td>"
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    best_rows = []
    for n in _best_numbers(study, 10):
        t = study.trial(n)
        s = metrics.per_trial.get(n)
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        stats = "".join(f"<td>{_fmt(getattr(s, k))}</td>" for k in ("n", "mean")) if s else "<td colspan=3>-</td>"
        if s:
            stats += f"<td>{html.escape(interval_text(s.ci_low, s.ci_high, s.ci_method))}</td>"
        value = ", ".join(_fmt(v) for v in (t.values or []))
        best_rows.append(f"<tr><td>{n}</td><td>{value}</td>{stats}<td>{html.escape(params)}</td></tr>")
    img = base64.b64encode(png).decode("ascii")
    title = html.escape(f"studyhall report: {study.name}")
    name = html.escape(metrics.name)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>{title}</h1>
<p>{metrics.n_trials} trials, {metrics.n_complete} complete; directions: {", ".join(study.directions)}</p>
{_selection_html(study)}
<h2>Study summary</h2>
<table><tr>{head}</tr>{"".join(body)}</table>
<h2>Best trials</h2>
<table><tr><th>#</th><th>value</th><th>{name} n</th><th>mean</th><th>95% CI</th><th>params</th></tr>{"".join(best_rows)}</table>
<img alt="per-trial {name} distributions and LLM latency" src="data:image/png;base64,{img}">
</body></html>
"""
