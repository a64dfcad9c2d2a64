"""``report.md``: the report as Markdown (figures linked from ``figures/``)."""

from __future__ import annotations

from typing import Any

from gracheck.report import _text as T


def _cell(s: Any) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(x) for x in r) + " |" for r in rows]
    return out + [""]


def _metrics_block(exp: dict[str, Any], label: str) -> list[str]:
    lines = [f"**{label}**", ""]
    rows = T.metric_rows(exp)
    lines += _table(T.METRIC_HEADER, rows) if rows else ["(no metrics reported)", ""]
    for f in exp.get("figures", []):
        lines += [f"![{exp.get('claim_id', '')} — {f}]({f})", ""]
    data_line = T.data_read_line(exp)
    for n in [*exp.get("notes", []), *([data_line] if data_line else [])]:
        lines.append(f"- note: {n}")
    if exp.get("notes") or data_line:
        lines.append("")
    return lines


def _experiment_section(doc: dict[str, Any], title: str, cid: str, shows: str) -> list[str]:
    lines = [f"### {title}", "", f"Claim `{cid}`. The paper shows: {shows}", ""]
    c = T.claim_by_id(doc).get(cid)
    e = T.experiment_by_id(doc).get(cid)
    absent = T.section_absence(doc, cid)
    if c is not None:
        lines += [f"Status here: **{c['status']}** at {doc['scale']} scale, seed {doc['seed']}.", ""]
    if absent:
        lines += [f"*{absent}*", ""]
    else:
        label = f"Ours — {e['scale']} scale, seeds {e['seeds']}, {e['device']}, {e['seconds']:.1f} s"
        lines += _metrics_block({**e, "claim_id": cid}, label)
    if c is not None and c["status"] in ("refuted", "inconclusive"):
        lines += [f"> **Finding — {c['status']} at {c['scale']} scale:** {_cell(c['reason'])}", ""]
    p = e.get("paper_scale") if e else None
    if p is None:
        lines += ["*Not run at paper scale here* (no `results/" + cid + "-paper.json` committed).", ""]
    elif p.get("error"):
        lines += [f"**Paper-scale result present but unreadable:** {p['error']}", ""]
    else:
        verdict = p["verdict"] + (f" ({p['verdict_reason']})" if p.get("verdict_reason") else "")
        lines += [f"*{T.provenance_line(p)}*", ""]
        lines += _metrics_block({**p, "claim_id": cid}, f"{p['label']} — decision rule: {verdict}")
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    v = doc["gracheck_version"]
    L: list[str] = [
        f"# gracheck {v} report — Kumar & Poole, “On Implicit Regularization in β-VAEs” (ICML 2020)",
        "",
        f"> **{T.scale_banner(doc)}**",
        ">",
        f"> {T.scale_note(doc)}",
        "",
        f"**{T.verdict(doc)}**",
        "",
        f"Created {doc['created']} · seed {doc['seed']} · device {doc['device']} · run time {doc['seconds']:.1f} s",
        "",
    ]
    cand = T.candidate_note(doc)
    if cand:
        L += [f"> **{cand}**", ""]
    skipped = T.not_run(doc)
    if skipped:
        L += [f"**Not run here ({len(skipped)}):** " + ", ".join(f"`{i}`" for i, _, _ in skipped)
              + " — reasons in [Not run here](#not-run-here).", ""]

    # Failures and findings first: they are what a reader must not miss.
    failed = [c for c in doc["claims"] if c["status"] == "failed"]
    if failed:
        L += ["## Failures", ""]
        for c in failed:
            what = "errored" if c["errored"] else "failed"
            L += [f"- **`{c['id']}` ({c['source']}) {what}:** {_cell(c['reason'])}"]
        L.append("")
    for status, title in (("refuted", "Findings: empirical claims refuted here"),
                          ("inconclusive", "Findings: empirical claims inconclusive here (the experiment could not decide)")):
        found = T.findings(doc, status)
        if found:
            L += [f"## {title}", ""]
            for c in found:
                L += [f"- **`{c['id']}` ({c['source']}) {status} at {c['scale']} scale, seed {c['seed']}:** "
                      f"{_cell(c['reason'])}"]
            L.append("")

    L += ["## Summary", ""]
    rows = [
        [f"`{c['id']}`", c["source"], c["statement"], ", ".join(c["methods_run"] or c["methods"]) or "—",
         c["status"].upper() if c["status"] in ("failed", "refuted", "inconclusive") else c["status"],
         c["scale"] or "exact", T.worst_text(c)]
        for c in doc["claims"]
    ]
    L += _table(["claim", "paper source", "statement", "methods", "status", "scale", "worst error vs tolerance"], rows)
    L += ["Status words: " + "; ".join(f"**{k}** = {m}" for k, m in T.STATUS_MEANING.items()) + ".", ""]
    if doc.get("summary_figure"):
        alt = "worst error relative to tolerance, per claim; claims without a tolerance-based error are not drawn"
        L += [f"![{alt}]({doc['summary_figure']})", ""]

    errata = [c for c in doc["claims"] if c["kind"] == "erratum"]
    L += ["## Errata", ""]
    if not errata:
        L += ["(no erratum claims selected)", ""]
    for c in errata:
        L += [f"### `{c['id']}` ({c['source']}) — {c['status']}", "",
              f"- **As printed:** {T.as_printed(c['statement'])}",
              f"- **Corrected:** {c['corrected'] or '(not given)'}"]
        if c["results"]:
            for r in c["results"]:
                L.append(f"- **Counterexample / evidence ({r['method']}, {'passed' if r['passed'] else 'FAILED'}):** "
                         f"{_cell(r['detail'])}")
        else:
            L.append(f"- **Not run here:** {c['reason']}")
        L.append("")

    L += ["## The paper's figures", ""]
    for s in doc["figure_sections"]:
        L += _experiment_section(doc, s["title"], s["claim_id"], s["shows"])
    for e in T.other_empirical(doc):
        L += _experiment_section(doc, f"Other empirical claim: {e['claim_id']}", e["claim_id"],
                                 T.claim_by_id(doc)[e["claim_id"]]["statement"])

    L += ["## Not run here", ""]
    if skipped:
        L += _table(["claim", "kind", "why"], [[f"`{i}`", k, r] for i, k, r in skipped])
    else:
        L += ["Every selected claim ran.", ""]

    L += ["## Citation lines", "", "Quote a claim by its line:", "", "```"]
    L += [c["citation"] for c in doc["claims"]]
    L += ["```", ""]

    L += ["## Evidence per claim", ""]
    for c in doc["claims"]:
        L += [f"### `{c['id']}` — {c['status']}", "", f"{c['source']}: {c['statement']}", ""]
        if c["candidate"]:
            L += [f"Checked the candidate `{c['candidate']}`, not the library's implementation.", ""]
        if c["reason"]:
            L += [f"Reason: {_cell(c['reason'])}", ""]
        if c["results"]:
            L += _table(T.EVIDENCE_HEADER, T.evidence_rows(c))
            L += [f"- {r['method']}: {_cell(r['detail'])}" for r in c["results"] if r["detail"]]
            L.append("")

    L += ["## Environment", ""]
    L += _table(["", ""], [[k, v] for k, v in T.env_rows(doc)])
    return "\n".join(L)
