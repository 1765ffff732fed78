#!/usr/bin/env python3
"""A stand-in Kubernetes API server for the tests: the real protocol of the few calls that
inferscope makes, answered from a JSON state file.

- GET /api/v1/pods?fieldSelector=spec.nodeName=N&limit=..  a PodList of the pods on node N
  (every pod when no selector: a client that forgets it sees other nodes' pods), with the
  list's resourceVersion.
- GET /api/v1/pods?watch=true&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T
  a chunked stream of watch events, one JSON object per line: ADDED/MODIFIED/DELETED from RV
  on, and BOOKMARK every second. The FIRST watch is answered with an ERROR event carrying a
  410 Status ("too old resource version"), as an API server does when its watch cache has
  moved on: the client must list again.
- GET /apis/apps/v1/namespaces/NS/replicasets/NAME and /apis/batch/v1/namespaces/NS/jobs/NAME:
  the object, a 404 Status, or a 403 Status for names listed as forbidden.
- Every request needs `Authorization: Bearer <token>` (401 otherwise).

State file (JSON): {"token": "...", "pods": [Pod...], "later": [Pod...],
"replicasets": [ReplicaSet...], "jobs": [Job...], "forbidden": ["replicasets/NAME", ...]}.
The `later` pods are added (ADDED events) when the file named by --add-later appears.
Each request is logged as one JSON line to --log: method, path, query, and what was answered.
"""

import argparse
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Condition()
STATE = {"rv": 100, "pods": {}, "events": [], "watches": 0}


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def node_of(pod):
    return pod.get("spec", {}).get("nodeName", "")


def matches(pod, selector):
    if not selector:
        return True
    key, _, value = selector.partition("=")
    return key == "spec.nodeName" and node_of(pod) == value


def add_pod(pod, kind="ADDED"):
    """Stores a pod with a new resourceVersion and queues its event (LOCK held)."""
    STATE["rv"] += 1
    pod = json.loads(json.dumps(pod))
    pod.setdefault("metadata", {})["resourceVersion"] = str(STATE["rv"])
    STATE["pods"][pod["metadata"]["uid"]] = pod
    STATE["events"].append((STATE["rv"], {"type": kind, "object": pod}))
    LOCK.notify_all()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cfg = None

    def log_message(self, *args):
        pass

    def log(self, **kw):
        u = urllib.parse.urlsplit(self.path)
        line = {"method": self.command, "path": u.path, "query": dict(urllib.parse.parse_qsl(u.query)), **kw}
        with open(self.cfg.log, "a") as f:
            f.write(json.dumps(line) + "\n")

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if self.headers.get("Authorization") != "Bearer " + self.cfg.state["token"]:
            self.log(answer=401)
            return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        parts = u.path.strip("/").split("/")
        if u.path == "/api/v1/pods":
            if q.get("watch") in ("true", "1"):
                return self.watch(q)
            with LOCK:
                items = [p for p in STATE["pods"].values() if matches(p, q.get("fieldSelector"))]
                rv = STATE["rv"]
            self.log(answer=200, items=len(items), rv=rv)
            return self.send_json(200, {"kind": "PodList", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": str(rv)}, "items": items})
        if len(parts) == 7 and parts[0] == "apis" and parts[3] == "namespaces" \
                and (parts[1:3], parts[5]) in ((["apps", "v1"], "replicasets"), (["batch", "v1"], "jobs")):
            ns, kind, name = parts[4], parts[5], parts[6]
            if f"{kind}/{name}" in self.cfg.state.get("forbidden", []):
                self.log(answer=403)
                return self.send_json(403, status(403, "Forbidden", f'{kind} "{name}" is forbidden: '
                                                  f'User "system:serviceaccount:x:inferscope" cannot get resource'))
            for o in self.cfg.state.get(kind, []):
                if o["metadata"]["name"] == name and o["metadata"].get("namespace") == ns:
                    self.log(answer=200)
                    return self.send_json(200, o)
            self.log(answer=404)
            return self.send_json(404, status(404, "NotFound", f'{kind} "{name}" not found'))
        self.log(answer=404)
        return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, q):
        with LOCK:
            STATE["watches"] += 1
            first = STATE["watches"] == 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if first:
            self.log(answer="410")
            self.chunk({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (100)")})
            self.wfile.write(b"0\r\n\r\n")
            return
        self.log(answer="stream")
        since = int(q.get("resourceVersion") or 0)
        deadline = time.time() + min(float(q.get("timeoutSeconds", 290)), 290)
        last_bookmark = 0.0
        try:
            while time.time() < deadline:
                with LOCK:
                    LOCK.wait(timeout=0.2)
                    events = [(rv, e) for rv, e in STATE["events"] if rv > since]
                    rv_now = STATE["rv"]
                for rv, e in events:
                    if matches(e["object"], q.get("fieldSelector")):
                        self.chunk(e)
                    since = rv
                if q.get("allowWatchBookmarks") == "true" and time.time() - last_bookmark > 1:
                    last_bookmark = time.time()
                    self.chunk({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                               "metadata": {"resourceVersion": str(rv_now)}}})
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--add-later", required=True)
    cfg = ap.parse_args()
    with open(cfg.state) as f:
        cfg.state = json.load(f)
    with LOCK:
        for p in cfg.state["pods"]:
            add_pod(p)
        STATE["events"].clear()
    Handler.cfg = cfg

    def later():
        while not os.path.exists(cfg.add_later):
            time.sleep(0.1)
        with LOCK:
            for p in cfg.state.get("later", []):
                add_pod(p)

    threading.Thread(target=later, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", cfg.port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
