"""One self-contained static HTML page per report: table, curves, examples, config, environment.

Everything is inline (CSS in a ``<style>``, plots as base64 PNG ``data:`` URLs, no script), so the
page can be attached to a CI run, mailed or opened offline and always shows the same thing.
"""

from __future__ import annotations

import base64
import json
from html import escape

from robustlab.reports.report import Report, row_value, shown_columns
from robustlab.reports.tables import COLUMNS, NUMERIC

__all__ = ["render_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table.results { border-collapse: collapse; font-size: 0.9em; }
table.results th, table.results td { border: 1px solid #ccc; padding: 0.25em 0.6em; white-space: nowrap; }
table.results td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.results tr.worst { font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #666; font-size: 0.9em; }
"""
_SHOWN = (*COLUMNS, ("sec", "seconds", "{:.1f}"))  # the attack configuration is in the config section


def render_html(report: Report, *, curves_png: bytes, grid_png: bytes | None, grid_note: str) -> str:
    """Render the page; ``grid_png`` is ``None`` when no examples could be drawn (``grid_note`` says why)."""
    columns = shown_columns(_SHOWN, report.rows)
    header = "".join(f"<th>{escape(title)}</th>" for title, _, _ in columns)
    body = "\n".join(
        f'<tr class="{"worst" if row.attack == "worst-case" else "row"}">'
        + "".join(
            _cell(row_value(row, name), fmt, numeric=name in NUMERIC or name == "seconds") for _, name, fmt in columns
        )
        + "</tr>"
        for row in report.rows
    )
    diagnostics = "".join(f"<li><b>{escape(d.code)}</b>: {escape(d.message)}</li>" for d in report.diagnostics)
    fidelity = "".join(f"<li>{escape(f.describe())}</li>" for f in report.fidelity)
    inputs = "".join(f"<li>{escape(line)}</li>" for line in report.inputs)
    grid = (
        f'<img id="examples" alt="clean, adversarial and amplified perturbation" src="{_data_url(grid_png)}">'
        if grid_png is not None
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>robustlab report</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>robustlab report</h1>
<p class="note">schema version {report.schema_version} · data {escape(str(report.config.get("data")))} ·
seed {escape(str(report.config.get("seed")))} · {report.seconds:.1f} s ·
robustlab {escape(str(report.environment.get("robustlab")))} · torch {escape(str(report.environment.get("torch")))}</p>
<h2>Results</h2>
<table class="results" id="results">
<thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody>
</table>
{f'<h2>Data and inputs</h2><ul id="inputs">{inputs}</ul>' if inputs else ""}
{f"<h2>Diagnostics</h2><ul>{diagnostics}</ul>" if diagnostics else ""}
{f'<h2>What the defenses do to clean images</h2><ul id="fidelity">{fidelity}</ul>' if fidelity else ""}
<h2>Robustness curves</h2>
<p class="note">Robust accuracy against the budget ε; each line starts at ε = 0 with the clean accuracy.
An audit adds its ε sweep, and a panel of accuracy against APGD-CE iterations (a curve still falling at its
end had not converged).</p>
<img id="curves" alt="robust accuracy against epsilon" src="{_data_url(curves_png)}">
<h2>Examples</h2>
<p class="note">{escape(grid_note)}</p>
{grid}
<h2>Configuration</h2>
<pre>{escape(json.dumps(report.config, indent=1))}</pre>
<h2>Environment</h2>
<pre>{escape(json.dumps(report.environment, indent=1))}</pre>
</body>
</html>
"""


def _cell(value: object, fmt: str, *, numeric: bool) -> str:
    text = "-" if value is None else fmt.format(value)
    return f'<td class="num">{text}</td>' if numeric else f"<td>{escape(text)}</td>"


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
