#!/usr/bin/env python3
"""Lints and renders the Helm chart and validates every Kubernetes manifest under deploy/.

Without a helm binary or a cluster. Uses
  * helm-python-sdk (Helm v4's Go SDK as a C library): `helm lint` and `helm template`,
    for the default values and for several non-default value sets;
  * kubernetes-validate --strict: the Kubernetes OpenAPI schemas (unknown fields rejected);
  * optionally (--servicemonitor-crd FILE) the ServiceMonitor CRD's openAPIV3Schema from
    prometheus-operator (example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml),
    with jsonschema.

Run through deploy/validate.sh, which makes the virtualenv.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(HERE)
CHART = os.path.join(DEPLOY, "helm", "inferscope")

# Value sets rendered besides the defaults: every switch of the chart at least once.
VALUE_SETS = {
    "defaults": {},
    "least-privilege+otlp+servicemonitor": {
        "securityContext": {"privileged": False},
        "otlp": {"endpoint": "http://otel-collector.observability.svc:4317", "protocol": "grpc",
                 "traces": False, "extraResourceAttributes": "deployment.environment=test"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "metricRelabelings": [{"action": "drop", "regex": "vllm:.*",
                                                  "sourceLabels": ["__name__"]}]},
        "metrics": {"podAnnotations": False, "port": 9555},
        "image": {"tag": "test"},
    },
    "hostnetwork+content+matches": {
        "hostNetwork": True,
        "inferscope": {"matches": ["my_server.py", "llama-server"], "vllmMetrics": True,
                       "captureContent": True, "tracingLevel": 2, "quiet": False,
                       "discoverInterval": 0.5, "extraArgs": ["--capture-bytes=8192"],
                       "python": {"timers": "default", "timersEvalUprobes": True, "engineStateInterval": 0.5,
                                  "profileRate": 49, "profileWindow": 30}},
        "otlp": {"endpoint": "http://collector:4318", "protocol": "http", "metrics": False,
                 "kubernetesResourceAttributes": False},
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "priorityClassName": "system-node-critical",
        "hostPaths": {"debugfs": False, "bpffs": False},
        "podAnnotations": {"example.com/team": "ml"},
        "extraEnv": [{"name": "FOO", "value": "bar"}],
        "serviceAccount": {"create": False, "name": "existing"},
        "livenessProbe": {"enabled": False},
        "rbac": {"create": False},
    },
    "pod-labels": {"inferscope": {"podLabels": ["app.kubernetes.io/name", "tier"]}},
    "control-token": {"inferscope": {"controlToken": {"secretName": "inferscope-control"}},
                      "hostPaths": {"tracefs": False, "debugfs": False, "bpffs": False}},
    "no-kubernetes-api": {"inferscope": {"kubernetesApi": False}},
    "minimal": {
        "service": {"enabled": False},
        "hostPaths": {"tracefs": False, "debugfs": False, "bpffs": False},
        "tolerations": [],
        "metrics": {"podAnnotations": False},
        "otlp": {"kubernetesResourceAttributes": False},
    },
}
# Value sets the chart must refuse (schema or template `fail`).
BAD_VALUE_SETS = {
    "bad protocol": {"otlp": {"protocol": "udp"}},
    "tracing level 3": {"inferscope": {"tracingLevel": 3}},
    "servicemonitor without service": {"serviceMonitor": {"enabled": True}, "service": {"enabled": False}},
    "negative profile rate": {"inferscope": {"python": {"profileRate": -1}}},
    "unknown python key": {"inferscope": {"python": {"timer": "default"}}},
    "pod label with a space": {"inferscope": {"podLabels": ["app name"]}},
}


def fail(msg):
    print("FAIL", msg)
    return 1


def kubernetes_validate(path, kube_versions):
    bad = 0
    for kv in kube_versions:
        r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", kv, path],
                           capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip()
        # ServiceMonitor has no schema there: a warning, checked separately.
        lines = [l for l in out.splitlines() if "Couldn't find schema for kind ServiceMonitor" not in l]
        if r.returncode != 0 or any(l.startswith(("ERROR", "FAIL")) for l in lines):
            bad += fail(f"kubernetes-validate -k {kv} {os.path.relpath(path, DEPLOY)}:\n" + "\n".join(lines))
    return bad


def servicemonitor_schema(crd_path):
    import jsonschema  # noqa: F401
    crd = yaml.safe_load(open(crd_path))
    for v in crd["spec"]["versions"]:
        if v["name"] == "v1":
            return v["schema"]["openAPIV3Schema"]
    raise SystemExit(f"no v1 schema in {crd_path}")


def check_servicemonitors(docs, schema, where):
    import jsonschema
    bad = 0
    for d in docs:
        if d and d.get("kind") == "ServiceMonitor":
            # openAPIV3Schema has no additionalProperties: false; reject unknown fields by hand.
            errs = list(jsonschema.Draft7Validator(schema).iter_errors(d))
            errs += [f"unknown field {p}" for p in unknown_fields(d, schema)]
            for e in errs:
                bad += fail(f"{where}: ServiceMonitor: {getattr(e, 'message', e)}")
    return bad


def unknown_fields(obj, schema, path=""):
    out = []
    if isinstance(obj, dict) and "properties" in schema:
        for k, v in obj.items():
            if k not in schema["properties"]:
                if path == "" and k in ("apiVersion", "kind", "metadata"):
                    continue
                out.append(f"{path}.{k}")
            else:
                out += unknown_fields(v, schema["properties"][k], f"{path}.{k}")
    elif isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            out += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return out


def write_manifests(rendered, path):
    manifests = "\n---\n".join(v for k, v in sorted(rendered.items())
                               if k.endswith(".yaml") and v.strip())
    with open(path, "w") as f:
        f.write(manifests)
    return path


def render_for_kube_version(values, kube_version, path):
    """Renders a copy of the chart whose templates see Kubernetes `kube_version`."""
    import shutil
    import helm_python as helm
    tmp = tempfile.mkdtemp(prefix="inferscope-chart-")
    copy = os.path.join(tmp, "inferscope")
    shutil.copytree(CHART, copy)
    for t in glob.glob(os.path.join(copy, "templates", "*")):
        s = open(t).read()
        s = s.replace(".Capabilities.KubeVersion.Version", f'"v{kube_version}"')
        open(t, "w").write(s)
    with helm.Chart.load(copy) as chart:
        rendered = chart.render(values, name="inferscope", namespace="inferscope")
    shutil.rmtree(tmp)
    return write_manifests(rendered, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servicemonitor-crd", help="prometheus-operator's ServiceMonitor CRD YAML")
    ap.add_argument("--kube-versions", default="1.27.0,1.37.0")
    ap.add_argument("--out", help="keep rendered manifests in this folder")
    a = ap.parse_args()
    kube_versions = a.kube_versions.split(",")
    sm_schema = servicemonitor_schema(a.servicemonitor_crd) if a.servicemonitor_crd else None
    bad = 0
    out_dir = a.out or tempfile.mkdtemp(prefix="inferscope-render-")
    os.makedirs(out_dir, exist_ok=True)

    # 1. Plain manifests.
    for path in sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))):
        docs = list(yaml.safe_load_all(open(path)))
        print(f"ok   yaml {os.path.relpath(path, DEPLOY)}: {len([d for d in docs if d])} objects")
        bad += kubernetes_validate(path, kube_versions)
        if sm_schema:
            bad += check_servicemonitors(docs, sm_schema, os.path.relpath(path, DEPLOY))

    # 2. Helm chart.
    import helm_python as helm
    print(f"helm-python-sdk: helm-c {helm.helm_c_version()}, Helm SDK {helm.helm_sdk_version()}")
    lint = helm.lint(CHART, strict=True)
    errors = lint.get("errors") or []
    for m in lint.get("messages") or []:
        # severity: 1 info, 2 warning, 3 error
        tag = {1: "info", 2: "WARN", 3: "ERROR"}.get(m.get("severity"), m.get("severity"))
        print(f"     helm lint {tag}: {m.get('path')}: {m.get('error')}")
        if m.get("severity", 0) >= 2:
            bad += 1
    if errors:
        bad += fail(f"helm lint: {errors}")
    else:
        print("ok   helm lint --strict (defaults)")
    for name, values in VALUE_SETS.items():
        for kv in ("v1.27.0", "v1.31.0"):
            lint = helm.lint(CHART, values=values, strict=True, kube_version=kv)
            if lint.get("errors") or any(m.get("severity", 0) >= 2 for m in lint.get("messages") or []):
                bad += fail(f"helm lint --strict --kube-version {kv} [{name}]: {lint}")
        with helm.Chart.load(CHART) as chart:
            try:
                chart.validate_schema(values)
                rendered = chart.render(values, name="inferscope", namespace="inferscope")
            except Exception as e:  # noqa: BLE001
                bad += fail(f"helm template [{name}]: {e}")
                continue
        path = write_manifests(rendered, os.path.join(out_dir, f"{name}.yaml"))
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        kinds = sorted(d["kind"] for d in docs)
        print(f"ok   helm template [{name}]: {kinds} -> {path}")
        # The SDK renders for its default Kubernetes version (1.36 in Helm 4.2): validate
        # against the newest schema, and render again for the oldest version checked, with
        # .Capabilities.KubeVersion pinned in a copy of the chart.
        bad += kubernetes_validate(path, kube_versions[-1:])
        for kv in kube_versions[:-1]:
            old_path = render_for_kube_version(values, kv, os.path.join(out_dir, f"{name}.k{kv}.yaml"))
            bad += kubernetes_validate(old_path, [kv])
        if sm_schema:
            bad += check_servicemonitors(docs, sm_schema, f"helm [{name}]")
        # Spot checks of what the values must produce.
        ds = next(d for d in docs if d["kind"] == "DaemonSet")
        spec = ds["spec"]["template"]["spec"]
        c = spec["containers"][0]
        if spec.get("hostPID") is not True:
            bad += fail(f"[{name}] hostPID is not true")
        if c["args"][0] != "run":
            bad += fail(f"[{name}] args do not start with run: {c['args']}")
        ic = values.get("inferscope", {})
        if bool(ic.get("captureContent")) != ("--capture-content" in c["args"]):
            bad += fail(f"[{name}] --capture-content does not follow inferscope.captureContent")
        if values.get("otlp", {}).get("endpoint") and not any(x.startswith("--otlp-endpoint=") for x in c["args"]):
            bad += fail(f"[{name}] no --otlp-endpoint")
        for m in ic.get("matches", []):
            if f"--match={m}" not in c["args"]:
                bad += fail(f"[{name}] --match={m} missing")
        py = ic.get("python", {})
        if bool(py.get("timers")) != any(x.startswith("--python-timers=") for x in c["args"]):
            bad += fail(f"[{name}] --python-timers does not follow inferscope.python.timers")
        if bool(py.get("profileRate")) != any(x.startswith("--python-profile-rate=") for x in c["args"]):
            bad += fail(f"[{name}] --python-profile-rate does not follow inferscope.python.profileRate")
        api = ic.get("kubernetesApi", True)
        if ("--kube-api=off" in c["args"]) == api:
            bad += fail(f"[{name}] --kube-api does not follow inferscope.kubernetesApi")
        if spec.get("automountServiceAccountToken") != api:
            bad += fail(f"[{name}] the API token is mounted: {spec.get('automountServiceAccountToken')}, wanted {api}")
        roles = [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        want_roles = 2 if api and values.get("rbac", {}).get("create", True) else 0
        if len(roles) != want_roles:
            bad += fail(f"[{name}] {len(roles)} ClusterRole(Binding)s, wanted {want_roles}")
        for r in roles:
            for rule in r.get("rules", []):
                if set(rule["verbs"]) - {"get", "list", "watch"}:
                    bad += fail(f"[{name}] the ClusterRole writes: {rule}")
        secret = ic.get("controlToken", {}).get("secretName")
        if bool(secret) != any(x.startswith("--control-token-file=") for x in c["args"]):
            bad += fail(f"[{name}] --control-token-file does not follow inferscope.controlToken")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if secret and "/etc/inferscope/control-token" not in mounts:
            bad += fail(f"[{name}] the control token is not mounted")
        if ic.get("control", True) and "/run/inferscope" not in mounts:
            bad += fail(f"[{name}] the control socket's directory is not mounted")
        labels = ic.get("podLabels", [])
        if labels and f"--pod-labels={','.join(labels)}" not in c["args"]:
            bad += fail(f"[{name}] --pod-labels does not follow inferscope.podLabels")
        print(f"     args: {' '.join(c['args'])}")

    for name, values in BAD_VALUE_SETS.items():
        with helm.Chart.load(CHART) as chart:
            try:
                chart.validate_schema(values)
                chart.render(values, name="inferscope", namespace="inferscope")
            except Exception as e:  # noqa: BLE001
                print(f"ok   refused [{name}]: {' '.join(str(e).split())[:200]}")
                continue
        bad += fail(f"chart accepted bad values [{name}]: {json.dumps(values)}")

    print("kubernetes/helm check:", "FAILED" if bad else "passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
