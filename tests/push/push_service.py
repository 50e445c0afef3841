#!/usr/bin/env python3
"""A Web Push push service for Herald's tests: the peer Herald's Web Push
transport POSTs to, strict about RFC 8030 (push), RFC 8291 (aes128gcm
message encryption) and RFC 8292 (VAPID), and written against libraries that
share no code with Herald's Rust crates (http_ece and cryptography), so a
message it decrypts proves Herald's encryption, not just agreement with
itself.

    python3 tests/push/push_service.py --services N --vapid-key <base64url>

binds N push service listeners and one control listener on 127.0.0.1, port
0, prints one JSON line `{"control": PORT, "services": [PORT, ...]}` and runs
until its standard input closes (so it dies with the test that started it)
or SIGTERM.

A push service listener takes `POST /push/<subscription id>`. The control
listener (JSON in and out) is the test's side:

    POST /subscriptions {"service": i}
        -> {"id", "subscription": PushSubscription.toJSON() shape}
    POST /behaviour {"id": ..., "mode": ...} or {"service": i, "mode": ...}
        modes: ok, gone, not_found, throttle_once, error_once, hang
    GET /received[?id=...]
        -> {"messages": [{"plaintext", "ttl", "urgency", "topic", "at_ms"}]}
           (each with its "id" when no id is given)
    GET /attempts?id=...  -> [{"status": int or null, "at_ms"}]
    GET /failures         -> ["POST /push/<id> on port P: <violation>", ...]

A POST that breaks a rule is answered as a real push service would (401 or
403 for VAPID, 413 for size, 404 on another service's port, 400 otherwise)
and recorded in /failures, which the tests assert is empty. A POST held by
"hang" is released when the mode changes by closing its connection
unanswered: it counts as never delivered.
"""

import argparse
import base64
import json
import re
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# RFC 8030 section 7.2: a push service must accept 4096 octets of payload,
# and RFC 8291 sizes its limits so that the whole aes128gcm body (header
# included) fits in that; a larger body is refused with 413, as a browser's
# push service does.
MAX_CIPHERTEXT_BYTES = 4096

# A body bigger than this is not read at all: the connection is closed, so
# a runaway client cannot make this process buffer without bound.
MAX_READ_BYTES = 1 << 20

# RFC 8292 section 2: "exp" must be no more than 24 hours after the request.
MAX_EXP_AHEAD_S = 24 * 60 * 60

# RFC 8030 section 5.4: a Topic is at most 32 characters of the base64url
# alphabet.
TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")

# RFC 8030 section 5.3.
URGENCIES = ("very-low", "low", "normal", "high")

# How POSTs to a subscription (or a whole service) are answered. The `_once`
# modes fall back to "ok" after the one POST they answer.
MODES = ("ok", "gone", "not_found", "throttle_once", "error_once", "hang")
ONCE_MODES = ("throttle_once", "error_once")

# The auth-params of RFC 8292's "vapid" scheme; any other is a client bug.
VAPID_PARAMS = ("t", "k")

# What the control API accepts in one body: a few small JSON objects.
MAX_CONTROL_BODY_BYTES = 64 * 1024


def now_ms():
    return int(time.time() * 1000)


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    """Strict unpadded base64url (RFC 7515 section 2), as JWTs and VAPID's
    `k` use it: padding or any character outside the alphabet is an error,
    where Python's own decoder would skip or accept them."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError(f"not unpadded base64url: {text[:40]!r}")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Violation(Exception):
    """A rule the POST broke, and the status a real push service answers."""

    def __init__(self, status, problem):
        super().__init__(problem)
        self.status = status
        self.problem = problem


class Subscription:
    """One browser's push subscription: the user agent's side of RFC 8291
    (its P-256 key pair and auth secret), which service it belongs to, how
    its POSTs are answered, and what reached it."""

    def __init__(self, sub_id, service):
        self.id = sub_id
        self.service = service
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.p256dh = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.auth = secrets.token_bytes(16)
        self.mode = "ok"
        # Only POSTs answered 201, in the order they were answered.
        self.received = []
        # Every POST that reached this subscription; a hanging one keeps
        # status None, since it never gets an answer.
        self.attempts = []


class State:
    """Everything the listeners share, behind one condition variable: the
    lock for every field, and the wake-up for POSTs held by "hang" when a
    mode changes or the process stops."""

    def __init__(self, services, vapid_key):
        self.cond = threading.Condition()
        self.vapid_key = vapid_key
        self.service_ports = [0] * services
        # A mode for a whole service; other than "ok" it wins over each
        # subscription's own, so one call can stall or fail a service.
        self.service_modes = ["ok"] * services
        self.subscriptions = {}
        # (subscription id, message) over all subscriptions, answered order.
        self.received = []
        self.failures = []
        self.stopping = False
        self.next_message = 0

    def effective_mode(self, sub):
        service_mode = self.service_modes[sub.service]
        return service_mode if service_mode != "ok" else sub.mode

    def take_mode(self, sub):
        """The mode that answers this POST, spending a `_once` mode."""
        service_mode = self.service_modes[sub.service]
        if service_mode != "ok":
            if service_mode in ONCE_MODES:
                self.service_modes[sub.service] = "ok"
            return service_mode
        mode = sub.mode
        if mode in ONCE_MODES:
            sub.mode = "ok"
        return mode


class Handler(BaseHTTPRequestHandler):
    # Herald's client keeps connections alive; HTTP/1.1 with a
    # Content-Length on every answer is what lets it.
    protocol_version = "HTTP/1.1"
    server_version = "herald-test-push-service"

    def log_message(self, format, *args):
        # Hundreds of POSTs a second would bury the test's own output.
        pass

    @property
    def state(self):
        return self.server.state

    def read_body(self, limit):
        """The request body (Content-Length or chunked); None, with the
        connection marked to close, when it is larger than `limit` or
        malformed, since the rest of the stream cannot be trusted then."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size_line = self.rfile.readline(100)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    return None
                if size == 0:
                    # Trailers, up to the empty line that ends them.
                    while self.rfile.readline(1000).strip():
                        pass
                    return body
                if len(body) + size > limit:
                    self.close_connection = True
                    return None
                body += self.rfile.read(size)
                self.rfile.readline(10)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            return None
        if length < 0 or length > limit:
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def answer(self, status, body=None, headers=()):
        """Answers with `body` as JSON (bytes are taken as JSON already
        encoded, so a caller can encode shared state under the lock and
        write it outside)."""
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (timed out); nothing left to tell it.
            self.close_connection = True


class PushHandler(Handler):
    """`POST /push/<id>` on one push service's port."""

    def do_GET(self):
        self.answer(405, {"error": "push messages are POSTed"}, [("Allow", "POST")])

    def do_POST(self):
        arrived_ms = now_ms()
        body = self.read_body(MAX_READ_BYTES)
        port = self.server.server_address[1]
        path = urlsplit(self.path).path
        match = re.fullmatch(r"/push/([A-Za-z0-9_-]+)", path)
        if body is None:
            self.record_failure(path, port, "request body unreadable or over 1 MiB")
            self.answer(413, {"error": "body too large"})
            return
        if match is None:
            self.answer(404, {"error": f"no such push resource {path}"})
            return
        sub_id = match.group(1)
        state = self.state
        with state.cond:
            sub = state.subscriptions.get(sub_id)
            own_port = None if sub is None else state.service_ports[sub.service]
            if sub is not None and own_port == port:
                attempt = {"status": None, "at_ms": arrived_ms}
                sub.attempts.append(attempt)
        if sub is None:
            self.answer(404, {"error": f"no subscription {sub_id}"})
            return
        if own_port != port:
            self.record_failure(
                path, port, f"POSTed on service port {port}, but the endpoint is on port {own_port}"
            )
            # This service has never heard of the subscription.
            self.answer(404, {"error": f"no subscription {sub_id}"})
            return

        try:
            message = self.check(sub, body, port)
        except Violation as v:
            self.record_failure(path, port, v.problem)
            with state.cond:
                attempt["status"] = v.status
            self.answer(v.status, {"error": v.problem})
            return
        message["at_ms"] = arrived_ms

        with state.cond:
            mode = state.take_mode(sub)
            if mode == "hang":
                while state.effective_mode(sub) == "hang" and not state.stopping:
                    state.cond.wait()
                # Released: the connection closes without an answer, as a
                # service that died would leave it; the message was never
                # delivered, and the client has likely timed out by now.
                self.close_connection = True
                return
            status, headers = {
                "ok": (201, []),
                "gone": (410, []),
                "not_found": (404, []),
                "throttle_once": (429, [("Retry-After", "1")]),
                "error_once": (503, []),
            }[mode]
            attempt["status"] = status
            if status == 201:
                sub.received.append(message)
                state.received.append((sub_id, message))
                state.next_message += 1
                # RFC 8030 section 5: the push message resource created.
                headers = [("Location", f"/message/{state.next_message}")]
        self.answer(status, None if status == 201 else {"error": mode}, headers)

    def record_failure(self, path, port, problem):
        with self.state.cond:
            self.state.failures.append(f"POST {path} on port {port}: {problem}")

    def check(self, sub, body, port):
        """The message as /received reports it, or the first Violation:
        VAPID first (a real service refuses an unauthenticated request
        before looking at it), then the push headers, then the payload."""
        self.check_vapid(port)

        problems = []
        encoding = self.headers.get("Content-Encoding")
        if encoding != "aes128gcm":
            problems.append(f"Content-Encoding is not aes128gcm: {encoding!r}")
        ttl = self.headers.get("TTL")
        if ttl is None:
            problems.append("missing TTL")
        elif not re.fullmatch(r"[0-9]+", ttl):
            problems.append(f"TTL is not a number of seconds: {ttl!r}")
        urgency = self.headers.get("Urgency")
        if urgency is not None and urgency not in URGENCIES:
            problems.append(f"Urgency is not one of {'|'.join(URGENCIES)}: {urgency!r}")
        topic = self.headers.get("Topic")
        if topic is not None and not TOPIC.fullmatch(topic):
            problems.append(f"Topic is not 1 to 32 base64url characters: {topic!r}")
        if problems:
            raise Violation(400, "; ".join(problems))
        if len(body) > MAX_CIPHERTEXT_BYTES:
            raise Violation(
                413, f"ciphertext larger than {MAX_CIPHERTEXT_BYTES} bytes: {len(body)}"
            )

        plaintext = decrypt(sub, body)
        try:
            text = plaintext.decode("utf-8")
            envelope = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            envelope = None
        if not isinstance(envelope, dict):
            raise Violation(400, f"plaintext is not a JSON object: {plaintext[:80]!r}")
        return {"plaintext": text, "ttl": ttl, "urgency": urgency, "topic": topic}

    def check_vapid(self, port):
        """RFC 8292: `Authorization: vapid t=<JWT>, k=<key>`, the key the
        subscription was made with, a valid ES256 signature by it, and
        claims for this origin."""
        header = self.headers.get("Authorization")
        if header is None:
            raise Violation(401, "missing Authorization")
        scheme, _, params_text = header.strip().partition(" ")
        if scheme.lower() != "vapid":
            raise Violation(401, f"Authorization scheme is not vapid: {scheme!r}")
        params = {}
        for part in params_text.split(","):
            name, eq, value = part.strip().partition("=")
            name = name.strip().lower()
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if not eq or name not in VAPID_PARAMS or name in params:
                raise Violation(401, f"vapid parameter {part.strip()!r} is not one t= and one k=")
            params[name] = value
        if set(params) != set(VAPID_PARAMS):
            raise Violation(401, f"vapid header lacks {set(VAPID_PARAMS) - set(params)}")

        try:
            k = b64url_decode(params["k"])
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), k)
            if len(k) != 65:
                raise ValueError(f"{len(k)} bytes, not 65")
        except ValueError as e:
            raise Violation(401, f"k is not an uncompressed P-256 point: {e}")
        if k != self.state.vapid_key:
            # The subscription was made with the configured key
            # (applicationServerKey), so only it may push to it.
            raise Violation(403, "k is not the configured VAPID key")
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), k)

        parts = params["t"].split(".")
        if len(parts) != 3:
            raise Violation(401, "t is not a JWS compact serialization (3 parts)")
        try:
            jose = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except ValueError as e:
            raise Violation(401, f"JWT does not decode: {e}")
        if not isinstance(jose, dict) or jose.get("alg") != "ES256":
            raise Violation(401, f"JWT alg is not ES256: {jose}")
        if jose.get("typ", "JWT") != "JWT":
            raise Violation(401, f"JWT typ is not JWT: {jose}")
        if len(signature) != 64:
            # JWS ES256 (RFC 7518 section 3.4) is R || S, 32 octets each,
            # not the DER a TLS stack would write.
            raise Violation(401, f"JWT signature is {len(signature)} bytes, not R||S 64")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Violation(401, "JWT signature invalid")
        if not isinstance(claims, dict):
            raise Violation(401, "JWT claims are not a JSON object")

        origin = f"http://127.0.0.1:{port}"
        aud = claims.get("aud")
        if aud == "http://127.0.0.1":
            raise Violation(403, f"vapid aud {aud} lacks the port {port}")
        if aud != origin:
            raise Violation(403, f"vapid aud {aud!r} is not the endpoint's origin {origin}")
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise Violation(403, f"exp is not an integer: {exp!r}")
        if exp <= now:
            raise Violation(403, f"exp {exp} is in the past (now {int(now)})")
        if exp > now + MAX_EXP_AHEAD_S:
            raise Violation(403, f"exp more than 24 h ahead: {exp - int(now)} s")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            raise Violation(403, f"sub is not a mailto: or https: URI: {sub!r}")


def decrypt(sub, body):
    """The plaintext, by http_ece, after the RFC 8291 section 4 rules that
    http_ece itself does not enforce: one record, and the sender's public
    key (65 octets) as the keyid."""
    if len(body) < 21:
        raise Violation(
            400, f"decryption failed: body of {len(body)} bytes has no aes128gcm header"
        )
    rs = int.from_bytes(body[16:20], "big")
    idlen = body[20]
    if idlen != 65 or body[21:22] != b"\x04":
        raise Violation(
            400,
            f"decryption failed: keyid is {idlen} bytes, not the sender's uncompressed P-256 key",
        )
    records = body[21 + idlen :]
    if len(records) > rs:
        raise Violation(
            400, f"decryption failed: {len(records)} bytes of records with rs {rs}: not one record"
        )
    try:
        return http_ece.decrypt(
            body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
        )
    except Exception as e:  # http_ece raises its own, ValueError, and cryptography's.
        raise Violation(400, f"decryption failed: {type(e).__name__}: {e}")


class ControlHandler(Handler):
    """The tests' side: make subscriptions, set modes, read what arrived."""

    def do_POST(self):
        body = self.read_body(MAX_CONTROL_BODY_BYTES)
        try:
            request = json.loads(body or b"")
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            self.answer(400, {"error": f"body is not a JSON object: {e}"})
            return
        path = urlsplit(self.path).path
        if path == "/subscriptions":
            self.subscribe(request)
        elif path == "/behaviour":
            self.set_behaviour(request)
        else:
            self.answer(404, {"error": f"no control resource {path}"})

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        sub_id = query.get("id", [None])[0]
        state = self.state
        # Encoded under the lock, since POSTs append to these lists; written
        # outside it, so a slow reader holds up no POST.
        with state.cond:
            sub = state.subscriptions.get(sub_id)
            if sub_id is not None and sub is None:
                status, body = 404, {"error": f"no subscription {sub_id}"}
            elif url.path == "/received" and sub is not None:
                status, body = 200, {"messages": sub.received}
            elif url.path == "/received":
                status, body = 200, {"messages": [dict(m, id=i) for i, m in state.received]}
            elif url.path == "/attempts" and sub is not None:
                status, body = 200, sub.attempts
            elif url.path == "/attempts":
                status, body = 400, {"error": "/attempts needs ?id="}
            elif url.path == "/failures":
                status, body = 200, state.failures
            else:
                status, body = 404, {"error": f"no control resource {url.path}"}
            data = json.dumps(body).encode()
        self.answer(status, data)

    def subscribe(self, request):
        state = self.state
        service = request.get("service")
        if not isinstance(service, int) or not 0 <= service < len(state.service_ports):
            self.answer(
                400, {"error": f"service {service!r} is not 0..{len(state.service_ports) - 1}"}
            )
            return
        # Key generation outside the lock: it is the slow part.
        sub = Subscription(secrets.token_urlsafe(12), service)
        with state.cond:
            state.subscriptions[sub.id] = sub
            port = state.service_ports[service]
        self.answer(
            200,
            {
                "id": sub.id,
                "subscription": {
                    "endpoint": f"http://127.0.0.1:{port}/push/{sub.id}",
                    # A browser's PushSubscription.toJSON() has this too,
                    # null unless the push service sets an expiry.
                    "expirationTime": None,
                    "keys": {"p256dh": b64url_encode(sub.p256dh), "auth": b64url_encode(sub.auth)},
                },
            },
        )

    def set_behaviour(self, request):
        state = self.state
        mode = request.get("mode")
        if mode not in MODES:
            self.answer(400, {"error": f"mode {mode!r} is not one of {', '.join(MODES)}"})
            return
        service = request.get("service")
        with state.cond:
            sub = state.subscriptions.get(request.get("id"))
            if sub is not None:
                sub.mode = mode
            elif isinstance(service, int) and 0 <= service < len(state.service_modes):
                state.service_modes[service] = mode
            # A POST held by "hang" re-checks its mode.
            state.cond.notify_all()
        if "id" in request and sub is None:
            self.answer(404, {"error": f"no subscription {request['id']!r}"})
        elif sub is None and not (
            isinstance(service, int) and 0 <= service < len(state.service_modes)
        ):
            self.answer(400, {"error": f"neither a subscription id nor a service: {request}"})
        else:
            self.answer(200, {"mode": mode})


class Server(ThreadingHTTPServer):
    # Herald opens many connections at once when it fans out; the default
    # backlog of 5 would drop SYNs and cost the client a second's retry.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, handler, state):
        super().__init__(("127.0.0.1", 0), handler)
        self.state = state


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1, help="how many push services")
    parser.add_argument(
        "--vapid-key", required=True, help="the application server's public key, base64url"
    )
    args = parser.parse_args()
    try:
        vapid_key = b64url_decode(args.vapid_key)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), vapid_key)
    except ValueError as e:
        parser.error(f"--vapid-key is not a base64url P-256 public key: {e}")
    if args.services < 1:
        parser.error("--services must be at least 1")

    state = State(args.services, vapid_key)
    servers = [Server(PushHandler, state) for _ in range(args.services)]
    for i, server in enumerate(servers):
        state.service_ports[i] = server.server_address[1]
    control = Server(ControlHandler, state)
    for server in servers + [control]:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(
        json.dumps({"control": control.server_address[1], "services": state.service_ports}),
        flush=True,
    )
    try:
        # Until the test that started us closes our stdin or exits.
        while sys.stdin.buffer.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        with state.cond:
            state.stopping = True
            state.cond.notify_all()


if __name__ == "__main__":
    main()
