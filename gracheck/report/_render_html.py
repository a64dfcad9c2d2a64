"""``report.html``: one self-contained file (inline CSS, figures as base64 data: URIs, no scripts).

Nothing in it loads a resource from anywhere: no external stylesheets, fonts, scripts
or images. The only links are in-page anchors and one plain link to the paper.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from gracheck.report import _text as T
from gracheck.report._figures import STATUS_COLOURS

PAPER_URL = "https://arxiv.org/abs/2002.00041"

_CSS = """
:root { --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 24px 32px 64px; line-height: 1.45; font-size: 15px; }
main { max-width: 1200px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
code, .mono { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace; font-size: 13px; }
.banner { border: 3px solid #9a6700; background: #fff8c5; padding: 12px 16px; border-radius: 6px; margin: 12px 0; }
.banner.paper { border-color: #1a7f37; background: #dafbe1; }
.banner .scale { font-size: 20px; font-weight: 700; color: #1f2328; }
.banner p { margin: 6px 0 0; color: #1f2328; }
.verdict { font-size: 17px; font-weight: 700; padding: 10px 14px; border-radius: 6px; margin: 12px 0;
           border-left: 8px solid; background: var(--soft); }
.verdict.pass { border-color: #1a7f37; } .verdict.fail { border-color: #cf222e; background: #ffebe9; }
.meta { color: var(--muted); font-size: 13px; }
.alert { border: 2px solid #cf222e; background: #ffebe9; padding: 8px 14px; border-radius: 6px; margin: 10px 0; }
.finding { border: 2px solid #bc4c00; background: #fff1e5; padding: 8px 14px; border-radius: 6px; margin: 10px 0; }
.finding.inconclusive { border-color: #8250df; background: #fbefff; }
.notrun { border: 1px dashed #6e7781; background: var(--soft); padding: 8px 14px; border-radius: 6px; margin: 10px 0; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
table.summary { table-layout: fixed; }
table.summary th:nth-child(1) { width: 17%; } table.summary th:nth-child(2) { width: 9%; }
table.summary th:nth-child(3) { width: 37%; } table.summary th:nth-child(4) { width: 10%; }
table.summary th:nth-child(5) { width: 11%; } table.summary th:nth-child(6) { width: 5%; }
table.summary th:nth-child(7) { width: 11%; }
table.summary td:first-child code { overflow-wrap: anywhere; }
td.num { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; white-space: nowrap; }
.badge { display: inline-block; padding: 2px 8px; border-radius: 10px; color: #fff; font-weight: 700;
         font-size: 12.5px; white-space: nowrap; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
pre.cite { background: var(--soft); border: 1px solid var(--line); padding: 10px; overflow-x: auto;
           font-size: 12.5px; white-space: pre-wrap; }
nav.toc { font-size: 14px; margin: 8px 0 0; }
nav.toc a { margin-right: 14px; }
.legend span { margin-right: 10px; }
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="badge" style="background:{colour}">{_e(status)}</span>'


def _table(header: list[str], rows: list[list[str]], raw_cols: frozenset[int] = frozenset(),
           classes: dict[int, str] | None = None, table_class: str = "") -> str:
    classes = classes or {}
    h = "".join(f"<th>{_e(x)}</th>" for x in header)
    body = []
    for r in rows:
        cells = []
        for j, x in enumerate(r):
            cls = f' class="{classes[j]}"' if j in classes else ""
            cells.append(f"<td{cls}>{x if j in raw_cols else _e(x)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    tc = f' class="{table_class}"' if table_class else ""
    return f"<table{tc}><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif"}


def _figure(base: Path, rel: str, caption: str) -> str:
    p = Path(rel) if Path(rel).is_absolute() else base / rel
    mime = _MIME.get(p.suffix.lower())
    if mime is None or not p.is_file():
        why = "unsupported figure type" if mime is None else "figure file missing"
        return f'<p class="notrun">{_e(why)}: <code>{_e(rel)}</code></p>'
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:{mime};base64,{data}">'
            f"<figcaption>{_e(caption)} (<code>{_e(rel)}</code>)</figcaption></figure>")


def _metrics(base: Path, exp: dict[str, Any], label: str, cid: str) -> str:
    rows = T.metric_rows(exp)
    out = [f"<p><strong>{_e(label)}</strong></p>"]
    out.append(_table(T.METRIC_HEADER, rows, classes={1: "num", 2: "num"}) if rows else "<p>(no metrics reported)</p>")
    for f in exp.get("figures", []):
        out.append(_figure(base, f, f"{cid} — {label}"))
    data_line = T.data_read_line(exp)
    notes = [*exp.get("notes", []), *([data_line] if data_line else [])]
    if notes:
        out.append("<ul>" + "".join(f"<li>note: {_e(n)}</li>" for n in notes) + "</ul>")
    return "".join(out)


def _experiment_section(doc: dict[str, Any], base: Path, title: str, cid: str, shows: str) -> str:
    c = T.claim_by_id(doc).get(cid)
    e = T.experiment_by_id(doc).get(cid)
    out = [f'<h3 id="fig-{_e(cid)}">{_e(title)}</h3>',
           f"<p>Claim <code>{_e(cid)}</code>. The paper shows: {_e(shows)}</p>"]
    if c is not None:
        out.append(f"<p>Status here: {_badge(c['status'])} at {_e(doc['scale'])} scale, seed {_e(doc['seed'])}.</p>")
    absent = T.section_absence(doc, cid)
    if absent:
        out.append(f'<p class="notrun"><strong>{_e(absent)}</strong></p>')
    else:
        out.append(_metrics(base, e, f"Ours — {e['scale']} scale, seeds {e['seeds']}, {e['device']}, "
                                     f"{e['seconds']:.1f} s", cid))
    if c is not None and c["status"] in ("refuted", "inconclusive"):
        out.append(f'<p class="finding {_e(c["status"])}"><strong>Finding — {_e(c["status"])} at {_e(c["scale"])} scale:</strong> '
                   f"{_e(c['reason'])}</p>")
    p = e.get("paper_scale") if e else None
    if p is None:
        out.append(f'<p class="notrun">Not run at paper scale here (no <code>results/{_e(cid)}-paper.json</code> '
                   "committed).</p>")
    elif p.get("error"):
        out.append(f'<p class="alert"><strong>Paper-scale result present but unreadable:</strong> {_e(p["error"])}</p>')
    else:
        verdict = p["verdict"] + (f" ({p['verdict_reason']})" if p.get("verdict_reason") else "")
        out.append(f"<p><em>{_e(T.provenance_line(p))}</em></p>")
        out.append(_metrics(base, p, f"{p['label']} — decision rule: {verdict}", cid))
    return "".join(out)


def render_html(doc: dict[str, Any], base: Path) -> str:
    base = Path(base)
    v = doc["gracheck_version"]
    B: list[str] = []
    paper_cls = " paper" if doc["scale"] == "paper" else ""
    B.append(f"<h1>gracheck {_e(v)} report — Kumar &amp; Poole, “On Implicit Regularization in β-VAEs” "
             f'(ICML 2020, <a href="{PAPER_URL}">arXiv:2002.00041</a>)</h1>')
    B.append(f'<div class="banner{paper_cls}"><div class="scale">{_e(T.scale_banner(doc))}</div>'
             f"<p>{_e(T.scale_note(doc))}</p></div>")
    ok = doc["exit_code"] == 0
    B.append(f'<div class="verdict {"pass" if ok else "fail"}">{_e(T.verdict(doc))}</div>')
    B.append(f'<p class="meta">Created {_e(doc["created"])} · seed {_e(doc["seed"])} · device {_e(doc["device"])} · '
             f"run time {doc['seconds']:.1f} s</p>")
    cand = T.candidate_note(doc)
    if cand:
        B.append(f'<p class="alert"><strong>{_e(cand)}</strong></p>')
    skipped = T.not_run(doc)
    if skipped:
        B.append(f'<p class="notrun"><strong>Not run here ({len(skipped)}):</strong> '
                 + ", ".join(f"<code>{_e(i)}</code>" for i, _, _ in skipped)
                 + ' — reasons in <a href="#not-run">Not run here</a>.</p>')
    B.append('<nav class="toc"><a href="#summary">Summary</a><a href="#errata">Errata</a>'
             '<a href="#figures">Figures</a><a href="#not-run">Not run here</a><a href="#cite">Citation lines</a>'
             '<a href="#evidence">Evidence</a><a href="#env">Environment</a></nav>')

    failed = [c for c in doc["claims"] if c["status"] == "failed"]
    if failed:
        B.append("<h2>Failures</h2>")
        for c in failed:
            what = "errored" if c["errored"] else "failed"
            B.append(f'<div class="alert"><strong><code>{_e(c["id"])}</code> ({_e(c["source"])}) {what}:</strong> '
                     f"{_e(c['reason'])}</div>")
    for status, title in (("refuted", "Findings: empirical claims refuted here"),
                          ("inconclusive", "Findings: empirical claims inconclusive here (the experiment could not decide)")):
        found = T.findings(doc, status)
        if found:
            B.append(f'<h2 id="findings-{status}">{_e(title)}</h2>')
            for c in found:
                B.append(f'<div class="finding {status}"><strong><code>{_e(c["id"])}</code> ({_e(c["source"])}) '
                         f"{_badge(status)} at {_e(c['scale'])} scale, seed {_e(c['seed'])}:</strong> {_e(c['reason'])}</div>")

    B.append('<h2 id="summary">Summary</h2>')
    rows = [
        [f"<code>{_e(c['id'])}</code>", _e(c["source"]), _e(c["statement"]),
         _e(", ".join(c["methods_run"] or c["methods"]) or "—"), _badge(c["status"]),
         _e(c["scale"] or "exact"), _e(T.worst_text(c))]
        for c in doc["claims"]
    ]
    B.append(_table(["claim", "paper source", "statement", "methods", "status", "scale", "worst error vs tolerance"],
                    rows, raw_cols=frozenset(range(7)), table_class="summary"))
    B.append('<p class="legend">' + " ".join(f"<span>{_badge(k)} {_e(m)}</span>" for k, m in T.STATUS_MEANING.items())
             + "</p>")
    if doc.get("summary_figure"):
        B.append(_figure(base, doc["summary_figure"], "Worst error relative to tolerance, per claim (claims without "
                                                      "a tolerance-based error, e.g. skipped ones, are not drawn)"))

    B.append('<h2 id="errata">Errata</h2>')
    errata = [c for c in doc["claims"] if c["kind"] == "erratum"]
    if not errata:
        B.append("<p>(no erratum claims selected)</p>")
    for c in errata:
        items = [f"<li><strong>As printed:</strong> {_e(T.as_printed(c['statement']))}</li>",
                 f"<li><strong>Corrected:</strong> {_e(c['corrected'] or '(not given)')}</li>"]
        if c["results"]:
            items += [f"<li><strong>Counterexample / evidence ({_e(r['method'])}, "
                      f"{'passed' if r['passed'] else 'FAILED'}):</strong> {_e(r['detail'])}</li>"
                      for r in c["results"]]
        else:
            items.append(f"<li><strong>Not run here:</strong> {_e(c['reason'])}</li>")
        B.append(f"<h3><code>{_e(c['id'])}</code> ({_e(c['source'])}) {_badge(c['status'])}</h3>"
                 f"<ul>{''.join(items)}</ul>")

    B.append('<h2 id="figures">The paper\'s figures</h2>')
    for s in doc["figure_sections"]:
        B.append(_experiment_section(doc, base, s["title"], s["claim_id"], s["shows"]))
    for e in T.other_empirical(doc):
        B.append(_experiment_section(doc, base, f"Other empirical claim: {e['claim_id']}", e["claim_id"],
                                     T.claim_by_id(doc)[e["claim_id"]]["statement"]))

    B.append('<h2 id="not-run">Not run here</h2>')
    if skipped:
        B.append(_table(["claim", "kind", "why"], [[f"<code>{_e(i)}</code>", _e(k), _e(r)] for i, k, r in skipped],
                        raw_cols=frozenset(range(3))))
    else:
        B.append("<p>Every selected claim ran.</p>")

    B.append('<h2 id="cite">Citation lines</h2><pre class="cite">'
             + "\n".join(_e(c["citation"]) for c in doc["claims"]) + "</pre>")

    B.append('<h2 id="evidence">Evidence per claim</h2>')
    for c in doc["claims"]:
        B.append(f'<h3 id="claim-{_e(c["id"])}"><code>{_e(c["id"])}</code> {_badge(c["status"])}</h3>'
                 f"<p>{_e(c['source'])}: {_e(c['statement'])}</p>")
        if c["candidate"]:
            B.append(f'<p class="alert">Checked the candidate <code>{_e(c["candidate"])}</code>, '
                     "not the library's implementation.</p>")
        if c["reason"]:
            B.append(f"<p>Reason: {_e(c['reason'])}</p>")
        if c["results"]:
            B.append(_table(T.EVIDENCE_HEADER, T.evidence_rows(c), classes={i: "num" for i in range(2, 8)}))
            details = [f"<li>{_e(r['method'])}: {_e(r['detail'])}</li>" for r in c["results"] if r["detail"]]
            if details:
                B.append("<ul>" + "".join(details) + "</ul>")

    B.append('<h2 id="env">Environment</h2>')
    B.append(_table(["", ""], [[k, val] for k, val in T.env_rows(doc)]))

    title = f"gracheck {v} report ({doc['scale']} scale)"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            + "\n".join(B) + "</main></body></html>\n")
