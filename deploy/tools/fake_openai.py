#!/usr/bin/env python3
"""A tiny OpenAI-compatible HTTP/1.1 server for checking deploy/ end to end (no model).

    python3 deploy/tools/fake_openai.py PORT

POST /v1/chat/completions and /v1/completions:
  * "stream": true  -> SSE chunks (chunked encoding), one per output token, 20 ms apart, the
                       first after 50 ms, then a usage chunk and [DONE]; finish_reason "length"
  * otherwise       -> one JSON body with usage, finish_reason "stop"
  * a model starting with "bad" -> 404 with an OpenAI error body
GET /v1/models, GET /health.
Listens on 127.0.0.1 only. Standard library only.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "tiny-model", "object": "model"}]})
        elif self.path == "/health":
            self._json(200, {})
        else:
            self._json(404, {"error": {"message": "not found", "type": "NotFoundError", "code": 404}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        req = json.loads(self.rfile.read(n) or b"{}")
        model = req.get("model", "tiny-model")
        max_tokens = int(req.get("max_tokens", 5))
        chat = self.path.startswith("/v1/chat")
        if model.startswith("bad"):
            self._json(404, {"error": {"message": f"The model `{model}` does not exist.",
                                       "type": "NotFoundError", "code": 404}})
            return
        if not req.get("stream"):
            time.sleep(0.03)
            choice = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": "hi"}
            else:
                choice["text"] = "hi"
            self._json(200, {"id": "cmpl-1", "object": "chat.completion" if chat else "text_completion",
                             "model": model, "choices": [choice],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(data):
            s = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(s), s))
            self.wfile.flush()

        time.sleep(0.05)
        for i in range(max_tokens):
            last = i == max_tokens - 1
            delta = {"content": f"tok{i} "} if chat else None
            choice = {"index": 0, "finish_reason": "length" if last else None}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = f"tok{i} "
            send(json.dumps({"id": "cmpl-2", "object": "chat.completion.chunk" if chat else "text_completion",
                             "model": model, "choices": [choice]}))
            if not last:
                time.sleep(0.02)
        send(json.dumps({"id": "cmpl-2", "object": "chat.completion.chunk", "model": model, "choices": [],
                         "usage": {"prompt_tokens": 7, "completion_tokens": max_tokens,
                                   "total_tokens": 7 + max_tokens}}))
        send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
