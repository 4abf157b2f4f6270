"""Payment-API stub on Flask (Werkzeug's server): request.get_json() and request.headers, as a Python acquirer decodes."""
import json
import sys
import os
import threading

from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest
from werkzeug.serving import make_server

STEP_UP_REQUIRED = '{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_reference":"acquiring-partner-request-reference-1234","amount":11800,"currency":"USD","state":"SUBMITTED","expires_at":"2025-02-26T17:25:34.534721775Z","state_context":{"customer_interaction":{"method":"HANDOVER","payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_url":"https://pay.klarna.com/eu/requests/552603c0-fe8b-4ab1-aacb-41d55fafbdb4/start"}}}}'

app = Flask(__name__)
records = []
lock = threading.Lock()


def present(*values):
    return [v if isinstance(v, str) else json.dumps(v) for v in values if v not in (None, "")]


def fields(**values):
    return {name.replace("__", "."): present(v)[0] for name, v in values.items() if present(v)}


def dig(value, *keys):
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def record(route):
    return {
        "method": request.method,
        "path": request.path,
        "route": route,
        "payment_method": None,
        "web_urls": {},
        "app_urls": {},
        "partner": present(*request.headers.getlist("X-Partner-Id")),
        "verified": present(*request.headers.getlist("X-Klarna-Stepup-Verified")),
    }


def keep(rec):
    with lock:
        records.append(rec)


@app.post("/payments")
@app.post("/v1/payments")
@app.post("/v2/accounts/<account>/payment/authorize")
def payment(account=None):
    rec = record("payment")
    try:
        body = request.get_json()
    except BadRequest as e:
        keep({**rec, "decode_error": str(e)})
        raise
    cic = dig(body, "step_up_config", "customer_interaction_config")
    rec["payment_method"] = dig(body, "payment_method")
    rec["web_urls"] = fields(
        return_url=dig(body, "return_url"),
        klarna_return_url=dig(body, "klarna_return_url"),
        step_up_config__customer_interaction_config__return_url=dig(cic, "return_url"),
    )
    rec["app_urls"] = fields(
        app_return_url=dig(body, "app_return_url"),
        klarna_app_return_url=dig(body, "klarna_app_return_url"),
        step_up_config__customer_interaction_config__app_return_url=dig(cic, "app_return_url"),
    )
    keep(rec)
    return app.response_class(STEP_UP_REQUIRED, content_type="application/json")


@app.route("/internal/klarna/webhooks", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def relay():
    keep(record("relay"))
    return jsonify(received=True)


@app.route("/__decoded", methods=["GET", "DELETE"])
def decoded():
    with lock:
        if request.method == "DELETE":
            records.clear()
        return jsonify(records)


@app.errorhandler(404)
@app.errorhandler(405)
def not_found(_):
    return jsonify(error="not found"), 404


if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
