#!/usr/bin/env python3
"""Checks that the Grafana dashboard only queries metrics (and labels) inferscope exports.

Known names come from
  * userspace/src/export/prom/*.rs: every family registered there (histograms expand to
    _bucket, _sum and _count), whether or not it has series yet, plus the process_* families
    of the `prometheus` crate's ProcessCollector when prom/mod.rs registers it, and
  * one or more scrapes of a running inferscope (--url) or saved scrapes (--file), which prove
    the names are really served (and add any name prom/*.rs does not spell out).

Metric names are extracted from every PromQL expression in the dashboard (panel targets and
variable queries) after removing strings, label matchers, ranges, label lists of
by/without/on/ignoring/group_left/group_right, functions and keywords.

Optionally (--prometheus URL) every expression, with the dashboard variables replaced by
".*"/defaults, is sent to a Prometheus server's /api/v1/query to prove it parses and to report
which ones return data.

    python3 deploy/grafana/check_dashboard.py --url http://127.0.0.1:9464/metrics
    python3 deploy/grafana/check_dashboard.py --file scrape.txt --prometheus http://127.0.0.1:9090

Exit status 0 when every name is known (and every query parsed), 1 otherwise. Standard
library only.
"""
import argparse
import glob
import json
import os
import re
import sys
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))

PROMQL_FUNCS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max_over_time", "min_over_time", "minute", "month", "predict_linear",
    "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "time",
    "timestamp", "vector", "year",
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
    # Grafana variable query functions
    "label_values", "metrics", "query_result", "label_names",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
# Labels Prometheus adds to every target (and the ServiceMonitor's node label).
TARGET_LABELS = {"job", "instance", "node", "le", "__name__"}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# What the `prometheus` crate's ProcessCollector (registered in prom/mod.rs) exports on Linux.
PROCESS_COLLECTOR = {
    "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
    "process_virtual_memory_bytes", "process_resident_memory_bytes",
    "process_start_time_seconds", "process_threads",
}


def known_from_prom_rs(path):
    """(metric names, label names) declared in one source of export/prom/."""
    src = open(path).read()
    names, labels = set(), set()
    for m in re.finditer(r'\bhist\(\s*&?reg,\s*"([^"]+)"', src):
        n = m.group(1)
        names |= {n + "_bucket", n + "_sum", n + "_count"}
    for pat in (r'\bcounter\(\s*&?reg,\s*"([^"]+)"', r'\bgauge(?:_vec(?:_int)?)?\(\s*&?reg,\s*"([^"]+)"',
                r'IntCounter::new\(\s*"([^"]+)"', r'Opts::new\(\s*"([^"]+)"'):
        names |= set(re.findall(pat, src))
    # Label names: every identifier-like string literal inside a &[...] slice or a .push().
    for sl in re.findall(r"&\[([^\]]*)\]", src) + re.findall(r"\.push\(([^)]*)\)", src):
        labels |= set(re.findall(r'"([a-z_][a-z0-9_]*)"', sl))
    for block in re.findall(r"const (?:GENAI_LABELS|LABELS)[^=]*=\s*&?\[(.*?)\];", src, re.S):
        labels |= set(re.findall(r'"([a-z_][a-z0-9_]*)"', block))
    if "ProcessCollector" in src:
        names |= PROCESS_COLLECTOR
    return names, labels


def known_from_scrape(text):
    names, labels = set(), set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(" + IDENT + r")(\{([^}]*)\})?\s", line)
        if not m:
            continue
        names.add(m.group(1))
        if m.group(3):
            labels |= set(re.findall(r'(' + IDENT + r')="', m.group(3)))
    return names, labels


def exprs_of(dashboard):
    """(where, expr) for every PromQL expression: panel targets and query variables."""
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f'panel "{p.get("title")}" {t.get("refId")}', t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q:
                out.append((f"variable ${v['name']}", q))
    return out


def strip(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges / subqueries
    return e


def metric_names(expr):
    e = strip(expr)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    # label_values(metric, label): drop the label argument
    e = re.sub(r"label_values\(\s*(" + IDENT + r")\s*,\s*" + IDENT + r"\s*\)", r"(\1)", e)
    e = re.sub(r"label_values\(\s*(" + IDENT + r")\s*\)", r"(\1)", e)
    found = set()
    for m in re.finditer(r"(?<![\w.])(" + IDENT + r")(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS or name in PROMQL_FUNCS:
            continue
        found.add(name)
    return found


def label_names(expr):
    e = strip(expr)
    found = set()
    for body in re.findall(r"\{([^}]*)\}", e):
        found |= set(re.findall(r"(" + IDENT + r")\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        found |= set(re.findall(IDENT, body))
    m = re.search(r"label_values\(\s*(?:" + IDENT + r"(?:\{[^}]*\})?\s*,\s*)?(" + IDENT + r")\s*\)", e)
    if m:
        found.add(m.group(1))
    return found


def substitute(expr):
    """The expression as Grafana would send it with every variable at its 'All' default."""
    e = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    e = re.sub(r"\$\{?\w+\}?", ".*", e)
    return e


def prom_query(base, expr):
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    return body


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboard", default=os.path.join(HERE, "inferscope-dashboard.json"))
    ap.add_argument("--prom-rs", action="append", default=[],
                    help="a Rust source registering metric families (repeatable; default: export/prom/*.rs)")
    ap.add_argument("--url", action="append", default=[], help="a running inferscope's /metrics URL (repeatable)")
    ap.add_argument("--file", action="append", default=[], help="a saved /metrics scrape (repeatable)")
    ap.add_argument("--prometheus", help="Prometheus base URL: run every expression through /api/v1/query")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()

    dash = json.load(open(a.dashboard))
    export = os.path.join(REPO, "userspace", "src", "export")
    sources = a.prom_rs or sorted(glob.glob(os.path.join(export, "prom*.rs"))
                                  + glob.glob(os.path.join(export, "prom", "*.rs")))
    names, labels = set(), set()
    for src in sources:
        n, l = known_from_prom_rs(src)
        names |= n
        labels |= l
    src_counts = {"prom/*.rs": len(names)}
    scraped = set()
    for u in a.url:
        with urllib.request.urlopen(u, timeout=10) as r:
            n, l = known_from_scrape(r.read().decode())
        scraped |= n
        labels |= l
    for f in a.file:
        n, l = known_from_scrape(open(f).read())
        scraped |= n
        labels |= l
    if a.url or a.file:
        src_counts["scrape"] = len(scraped)
        in_rs_not_scraped = sorted(x for x in names - scraped if not x.startswith("vllm:"))
        if a.verbose and in_rs_not_scraped:
            print("declared in prom/*.rs, not in the scrape (no series yet):", ", ".join(in_rs_not_scraped))
    else:
        print("note: no --url/--file given; checking against prom/*.rs only")
    known = names | scraped
    labels |= TARGET_LABELS

    bad = 0
    used_all = set()
    exprs = exprs_of(dash)
    for where, expr in exprs:
        used = metric_names(expr)
        used_all |= used
        unknown = sorted(used - known)
        unknown_labels = sorted(label_names(expr) - labels)
        if unknown or unknown_labels:
            bad += 1
            print(f"FAIL {where}: unknown metrics {unknown} labels {unknown_labels}\n     {expr}")
        elif a.verbose:
            print(f"ok   {where}: {sorted(used)}")
    print(f"{len(exprs)} expressions, {len(used_all)} distinct metric names used; "
          f"known names: {src_counts}")
    if not used_all:
        print("FAIL: no metric name extracted (parser broken?)")
        bad += 1

    if a.prometheus:
        empty = []
        for where, expr in exprs:
            if where.startswith("variable"):
                continue
            body = prom_query(a.prometheus, substitute(expr))
            if body.get("status") != "success":
                bad += 1
                print(f"FAIL {where}: Prometheus: {body.get('error')}\n     {substitute(expr)}")
            elif not body["data"]["result"]:
                empty.append(where)
        print(f"Prometheus: {len([e for e in exprs if not e[0].startswith('variable')])} queries run, "
              f"{len(empty)} returned no data")
        for w in empty:
            print(f"  no data: {w}")

    print("dashboard check:", "FAILED" if bad else "passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
