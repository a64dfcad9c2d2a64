"""Wording shared by the Markdown and HTML renderers, so both say exactly the same thing."""

from __future__ import annotations

from typing import Any

from gracheck.base.text import fmt as _fmt

STATUS_MEANING = {
    "verified": "every check passed (for an empirical claim: every pre-registered rule's CI on the claimed side)",
    "erratum-confirmed": "the printed statement was shown false and the corrected one verified",
    "refuted": "the experiment ran and the evidence is against the claim: a CI lies entirely on the wrong side "
               "of its margin (a finding, not an error)",
    "inconclusive": "the experiment ran but could not decide: a CI straddles its margin or a precondition "
                    "failed (reason and what would decide it given); never counted as verified",
    "failed": "a check failed or raised an error",
    "skipped": "not run here (reason given); never counted as verified",
}


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: :func:`gracheck.base.text.fmt` with ``digits`` significant digits, shortened."""
    return _fmt(v, digits, short=True)


def scale_banner(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    dev = f"{doc['device']}: {env.get('device_name') or 'unknown device'}"
    if doc["scale"] == "smoke":
        return f"Scale: smoke ({dev}, reduced settings — not the paper's numbers)"
    return f"Scale: paper (the paper's settings, run here on {dev})"


def scale_note(doc: dict[str, Any]) -> str:
    n_emp = sum(c["kind"] == "empirical" for c in doc["claims"])
    paper = [e["claim_id"] for e in doc["experiments"] if e.get("paper_scale")]
    s = (
        "Derivation and erratum checks are exact (symbolic) or float64 computations and do not depend on "
        f"the scale; the scale applies to the {n_emp} empirical claim(s) selected. "
    )
    if paper:
        s += f"Paper-scale results committed in results/ are shown beside ours for: {', '.join(paper)}."
    else:
        s += "No paper-scale results are committed in results/: nothing here was run at paper scale."
    return s


def verdict(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    code = doc["exit_code"]
    head = "PASS" if code == 0 else ("ERROR" if code == 3 else "FAIL")
    if code == 0 and c.get("skipped"):
        head = f"PASS, but {c['skipped']} claim(s) skipped and NOT verified"
    why = []
    errored = [x["id"] for x in doc["claims"] if x["errored"]]
    hard = [x["id"] for x in doc["claims"] if x["status"] == "failed" and not x["errored"]]
    if hard:
        why.append(f"failed: {', '.join(hard)}")
    if errored:
        why.append(f"errored: {', '.join(errored)}")
    if doc.get("strict") and (c.get("refuted") or c.get("inconclusive")):
        why.append("empirical claims not verified, with --strict")
    parts = [f"{c.get(s, 0)} {s}" for s in STATUS_MEANING]
    tail = f" — {'; '.join(why)}" if why else ""
    return f"{head} (exit code {code}): " + ", ".join(parts) + tail


def candidate_note(doc: dict[str, Any]) -> str:
    if not doc.get("candidates"):
        return ""
    items = ", ".join(f"{k} ← {v}" for k, v in doc["candidates"].items())
    return f"Candidate implementations under test (not the library's own): {items}."


def findings(doc: dict[str, Any], status: str) -> list[dict[str, Any]]:
    """The claims of this run with ``status`` ("refuted" or "inconclusive"), each with its reason."""
    return [c for c in doc["claims"] if c["status"] == status]


def not_run(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(claim id, kind, reason) for every skipped claim of this run."""
    return [(c["id"], c["kind"], c["reason"]) for c in doc["claims"] if c["status"] == "skipped"]


def as_printed(statement: str) -> str:
    """An erratum's statement without a leading "As printed:" (the report adds that label itself)."""
    s = statement.strip()
    return s[len("as printed:"):].strip() if s.lower().startswith("as printed:") else s


def worst_text(c: dict[str, Any]) -> str:
    w = c.get("worst")
    if w:
        return w["text"]
    if not c["results"]:
        return "not run"
    r = next((r for r in c["results"] if not r["passed"]), c["results"][0])
    return f"measured {fmt(r['measured'])} vs expected {fmt(r['expected'])} ({r['method']}; no tolerance)"


def metric_rows(exp: dict[str, Any]) -> list[list[str]]:
    """Rows (metric, value, CI, n, unit, scale, seeds, note) for an experiment or paper-scale entry."""
    rows = []
    seeds = ", ".join(str(s) for s in exp.get("seeds", [])) or "—"
    for name, m in (exp.get("metrics") or {}).items():
        lo, hi = m.get("ci_low"), m.get("ci_high")
        level = m.get("level", 0.95)
        if lo is not None and hi is not None:
            ci = f"[{fmt(lo)}, {fmt(hi)}] ({fmt(100 * level, 3)}% CI)"
        else:
            ci = "no CI reported"
        rows.append(
            [name, fmt(m.get("value")), ci, fmt(m.get("n")), m.get("unit") or "—", exp.get("scale", "—"), seeds,
             m.get("note") or ""]
        )
    return rows


METRIC_HEADER = ["metric", "value", "uncertainty", "n", "unit", "scale", "seeds", "note"]

EVIDENCE_HEADER = ["method", "passed", "measured", "expected", "abs err", "rel err", "atol", "rtol", "seed", "time"]


def evidence_rows(c: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["method"],
            "yes" if r["passed"] else "NO",
            fmt(r["measured"]),
            fmt(r["expected"]),
            fmt(r["abs_err"], 3),
            fmt(r["rel_err"], 3),
            fmt(r["atol"], 3),
            fmt(r["rtol"], 3),
            str(r["seed"]),
            f"{r['seconds']:.2f} s" if isinstance(r.get("seconds"), (int, float)) else "—",
        ]
        for r in c["results"]
    ]


def experiment_by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["claim_id"]: e for e in doc["experiments"]}


def claim_by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in doc["claims"]}


def env_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    env = doc["environment"]
    rows = [
        ("gracheck", doc["gracheck_version"]),
        ("created (UTC)", doc["created"]),
        ("scale", doc["scale"]),
        ("seed", str(doc["seed"])),
        ("device", f"{doc['device']} ({env.get('device_name')})"),
        ("threads (torch)", str(env.get("threads"))),
        ("CPU cores", str(env.get("cpu_count"))),
        ("git commit", env.get("git_commit") or "not available"),
        ("python", env.get("python")),
        ("torch", env.get("torch")),
        ("numpy", env.get("numpy")),
        ("scipy", env.get("scipy")),
        ("sympy", env.get("sympy")),
        ("matplotlib", env.get("matplotlib") or "—"),
        ("platform", env.get("platform")),
        ("claims selected", "all registered" if doc.get("only") is None else ", ".join(doc["only"])),
        ("report run time", f"{doc['seconds']:.1f} s"),
    ]
    return [(k, str(v)) for k, v in rows]


def other_empirical(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Experiments of this run that no paper-figure section covers (shown in their own section)."""
    covered = {s["claim_id"] for s in doc["figure_sections"]}
    return [e for e in doc["experiments"] if e["claim_id"] not in covered]


def section_absence(doc: dict[str, Any], cid: str) -> str | None:
    """Why the figure section for ``cid`` has no figure of ours, or None when the experiment ran."""
    e = experiment_by_id(doc).get(cid)
    if e is None:
        return "not run here: not selected (--only)"
    if not e["run"]:
        c = claim_by_id(doc).get(cid)
        if c is not None and c["results"] and not c["errored"]:
            return f"no experiment record: {e['reason']}"
        return f"not run here: {e['reason'] or 'no result'}"
    return None


def device_text(dev: Any) -> str:
    """A paper-run provenance's device (a dict from the paper-run script, or an older plain string) in words."""
    if not dev:
        return ""
    if isinstance(dev, str):
        return dev
    if isinstance(dev, dict):
        name = dev.get("name") or dev.get("type") or "unknown device"
        count = dev.get("count")
        mem = dev.get("memory_gib")
        out = f"{name}" + (f" ×{count}" if count and count != 1 else "")
        return out + (f", {fmt(mem, 3)} GiB" if mem else "")
    return str(dev)


def provenance_line(p: dict[str, Any]) -> str:
    """One line from a paper-scale result's provenance: device, versions, wall time, achieved vs peak rate, commit."""
    prov = p.get("provenance") or {}
    parts = []
    dev = device_text(prov.get("device"))
    if dev:
        parts.append(f"device {dev}")
    if prov.get("torch"):
        parts.append(f"torch {prov['torch']}")
    if isinstance(prov.get("wall_seconds"), (int, float)):
        parts.append(f"wall time {fmt(prov['wall_seconds'], 3)} s")
    rate = prov.get("achieved_tflops")
    if isinstance(rate, (int, float)):
        peak = prov.get("peak_tflops") or {}
        peaks = ", ".join(f"{k} {fmt(v, 3)}" for k, v in peak.items() if isinstance(v, (int, float)))
        parts.append(f"achieved {fmt(rate, 3)} TFLOP/s counted" + (f" (peak TFLOP/s: {peaks})" if peaks else ""))
    if prov.get("git_commit"):
        parts.append(f"commit {prov['git_commit']}")
    if prov.get("budget_seconds") is not None:
        parts.append(f"budget {fmt(prov['budget_seconds'], 3)} s")
    return "Provenance: " + ("; ".join(parts) if parts else "none recorded")


def data_read_line(exp: dict[str, Any]) -> str | None:
    """"data read: <folder> (<how chosen>); <file> <algo> <digest prefix>, ..." for an experiment entry that
    recorded its data (``data_read``); None when it read no data file or did not record it."""
    rec = exp.get("data_read") or {}
    folders, files = rec.get("folders") or {}, rec.get("files") or {}
    if not files and not folders:
        return None
    where = "; ".join(f"{k} ({v})" for k, v in sorted(folders.items()))
    parts = []
    for path, info in sorted(files.items()):
        name = path.rsplit("/", 1)[-1]
        algo = next((a for a in ("sha256", "md5") if info.get(a)), None)
        parts.append(f"{name} {algo} {info[algo][:12]}…" if algo else f"{name} (no checksum)")
    return f"data read: {where or 'no folder recorded'}; {len(files)} file(s): " + ", ".join(parts)
