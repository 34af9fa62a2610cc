#!/usr/bin/env python3
"""End-to-end tests for grwhd: a real daemon on 127.0.0.1, a real TLS client.

Each test starts its own daemon (own temp dir, port, spool) and stops it.
The handler tests/e2e/handler.lua writes one line per call to a file, which
is how a test sees what reached the script.

    python3 tests/e2e/run.py [-k SUBSTRING] [-v]

GRWHD_BIN names the binary (default: <repo>/grwhd), so a sanitizer build
can run the same tests.  Standard library only.
"""

import http.client
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("GRWHD_BIN") or os.path.join(REPO, "grwhd")
FIXTURES = os.path.join(REPO, "tests", "fixtures")
HANDLER = os.path.join(HERE, "handler.lua")

# A distinctive secret makes "never in the log" a reliable grep.
SECRET = "Sx" + secrets.token_hex(12)
VERBOSE = False

# Shared across the run: one certificate, and every status seen, so "never
# a 3xx" covers every request any test made.
CERT = None
KEY = None
SEEN_STATUSES = []
SEEN_LOCK = threading.Lock()

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "ThreadSanitizer",
                   "SUMMARY: AddressSanitizer",
                   "SUMMARY: UndefinedBehaviorSanitizer")


class TestFailure(Exception):
    pass


class TestSkip(Exception):
    """The machine cannot run this test (said in the output, not hidden)."""


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def note_status(status):
    with SEEN_LOCK:
        SEEN_STATUSES.append(status)
    # Checked at once so the failing request is named in the message.
    check(not (300 <= status < 400), "got a 3xx status %d" % status)


def wait_for(pred, timeout, step=0.05):
    """Polls pred() until true or timeout; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_cert(dir_):
    global CERT, KEY
    CERT = os.path.join(dir_, "cert.pem")
    KEY = os.path.join(dir_, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", KEY, "-out", CERT],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=30)


def client_ctx():
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return json.loads(f.read())


def fixture_names():
    return sorted(n for n in os.listdir(FIXTURES)
                  if n.endswith(".json") and n != "batch.json")


def event_with_id(base, cid):
    """A copy of a fixture event whose contactId is cid (unique per test)."""
    ev = json.loads(json.dumps(base))
    ev.setdefault("contact", {})
    if not isinstance(ev["contact"], dict):
        ev["contact"] = {}
    ev["contact"]["contactId"] = cid
    return ev


# ---------------------------------------------------------------------------
# The daemon under test

class Daemon:
    def __init__(self, ctx, args=(), env=None, spool=None, out=None,
                 workers=2, secret=True):
        self.ctx = ctx
        self.port = free_port()
        self.spool = spool or os.path.join(ctx.dir, "spool.db")
        self.out = out or os.path.join(ctx.dir, "out.txt")
        ctx.n_daemons += 1
        self.log = os.path.join(ctx.dir, "stderr.%d.log" % ctx.n_daemons)
        self.killed = False
        self.stopped = False
        cmd = [BIN, "--script", HANDLER,
               "--listen", "127.0.0.1:%d" % self.port,
               "--tls-cert", CERT, "--tls-key", KEY,
               "--spool", self.spool, "--workers", str(workers)]
        if secret:
            cmd += ["--secret", SECRET]
        cmd += list(args)
        e = dict(os.environ)
        # Keep settings of the caller's environment out of the daemon.
        for k in list(e):
            if k.startswith("GRWHD_") and k != "GRWHD_BIN":
                del e[k]
        e["GRWHD_TEST_OUT"] = self.out
        e.update(env or {})
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     env=e, cwd=ctx.dir)
        ctx.daemons.append(self)
        ok = wait_for(lambda: ("msg=listening" in self.stderr() or
                               '"msg":"listening"' in self.stderr())
                      or self.proc.poll() is not None, 15)
        check(ok and self.proc.poll() is None,
              "daemon did not start (rc=%s): %s"
              % (self.proc.poll(), self.stderr()[-600:]))

    def stderr(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; returns the exit status."""
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
                self.logf.close()
                raise TestFailure("daemon ignored SIGTERM for 10 s")
        self.logf.close()
        return self.proc.returncode

    # -- output of the handler ----------------------------------------------

    def calls(self):
        """Handler calls so far, as dicts (see handler.lua for the format)."""
        try:
            with open(self.out, "r", encoding="utf-8",
                      errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            p = line.split("|")
            if len(p) < 10:
                continue
            rows.append(dict(fn=p[0], type=p[1], cid=p[2], id=p[3],
                             attempt=p[4], batch_index=p[5],
                             batch_size=p[6], webhook_id=p[7],
                             request_id=p[8], remote=p[9],
                             seq=p[10] if len(p) > 10 else "-"))
        return rows

    def wait_calls(self, n, timeout=15):
        rows = wait_for(lambda: len(self.calls()) >= n and self.calls(),
                        timeout)
        rows = self.calls()
        check(len(rows) >= n, "expected %d handler calls, saw %d within %ss"
              % (n, len(rows), timeout))
        return rows

    # -- clients --------------------------------------------------------------

    def conn(self, timeout=10):
        return http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=client_ctx(),
                                           timeout=timeout)

    def url(self, path="/hook", secret=SECRET, param="secret", extra=""):
        q = []
        if secret is not None:
            q.append("%s=%s" % (param, secret))
        if extra:
            q.append(extra)
        return path + ("?" + "&".join(q) if q else "")

    def request(self, method, url, body=None, headers=None, conn=None):
        """One request; returns (status, headers dict lower-case, body)."""
        own = conn is None
        c = conn or self.conn()
        h = {}
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        try:
            c.request(method, url, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            if own:
                c.close()
        note_status(r.status)
        return r.status, hdrs, data

    def post(self, obj, url=None, conn=None, headers=None, raw=None):
        """POSTs obj as JSON with GetResponse's headers; returns a triple."""
        body = raw if raw is not None else json.dumps(obj).encode()
        h = {"X-Webhook-ID": str(uuid.uuid4()),
             "X-Request-ID": str(uuid.uuid4())}
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            h["X-Webhook-Type"] = obj["type"]
        h.update(headers or {})
        # None drops a header, to send a request without it.
        h = {k: v for k, v in h.items() if v is not None}
        return self.request("POST", url or self.url(), body, h, conn)

    def tls_socket(self, timeout=5):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout)
        return client_ctx().wrap_socket(raw, server_hostname="127.0.0.1")


def read_response(sock, method="POST"):
    """Parses one HTTP response from an already-used socket."""
    r = http.client.HTTPResponse(sock, method=method)
    r.begin()
    data = r.read()
    note_status(r.status)
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def readable(sock, timeout):
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def closed_soon(s, timeout=2.0):
    """True if the peer closes the connection within timeout."""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not readable(s, max(0.0, end - time.monotonic())):
                return False
            if not s.recv(4096):
                return True
    except (OSError, ssl.SSLError):
        return True
    return False


def send_then_read(d, head, chunks, gap=0.0, want_close=False):
    """Sends head, then chunks while the server has not answered yet.

    A server may answer (413) and close before reading the whole body; if
    the client kept writing, the close could turn into a reset that hides
    the answer.  So it stops writing once the answer is readable.
    """
    s = d.tls_socket()
    try:
        s.sendall(head)
        for ch in chunks:
            if readable(s, gap):
                break
            try:
                s.sendall(ch)
            except OSError:
                break
        check(readable(s, 5), "no answer within 5 s")
        res = read_response(s)
        if want_close:
            check(closed_soon(s), "connection left open after %d" % res[0])
        return res
    finally:
        s.close()


def expect_json_error(status, hdrs, body, want, what):
    check(status == want, "%s: status %d, want %d (body %r)"
          % (what, status, want, body[:200]))
    try:
        j = json.loads(body)
    except ValueError:
        raise TestFailure("%s: body is not JSON: %r" % (what, body[:200]))
    check(isinstance(j, dict), "%s: JSON body is not an object" % what)
    check(hdrs.get("content-type", "").startswith("application/json"),
          "%s: content type %r" % (what, hdrs.get("content-type")))
    return j


def expect_ok(res, what):
    status, hdrs, body = res
    check(status == 200, "%s: status %d, body %r" % (what, status,
                                                    body[:200]))
    check(body == b'{"status":"OK"}', "%s: body %r" % (what, body[:200]))
    check(hdrs.get("content-type", "").split(";")[0].strip()
          == "application/json",
          "%s: content type %r" % (what, hdrs.get("content-type")))


# ---------------------------------------------------------------------------
# Tests.  Each takes a Ctx; a failed check raises TestFailure.

def test_http_table(ctx):
    """Every row of the HTTP table that can be provoked on purpose."""
    d = ctx.daemon(args=["--max-body", "1024"])
    ok_ev = event_with_id(fixture("contact_added.json"), "http-ok")
    expect_ok(d.post(ok_ev), "right secret, object")

    st, h, b = d.post(ok_ev, url=d.url(secret="wrong" + SECRET))
    expect_json_error(st, h, b, 403, "wrong secret")
    st, h, b = d.post(ok_ev, url=d.url(secret=None))
    expect_json_error(st, h, b, 403, "missing secret")
    st, h, b = d.post(ok_ev, url=d.url(secret=""))
    expect_json_error(st, h, b, 403, "empty secret")

    st, h, b = d.request("GET", d.url())
    expect_json_error(st, h, b, 405, "GET without action")
    check("POST" in h.get("allow", ""), "GET 405 without Allow: POST: %r"
          % h.get("allow"))
    st, h, b = d.request("PUT", d.url(), json.dumps(ok_ev).encode())
    expect_json_error(st, h, b, 405, "PUT")
    check("POST" in h.get("allow", ""), "PUT 405 without Allow: POST")

    # Over --max-body, announced by Content-Length.
    big = json.dumps(event_with_id(fixture("contact_added.json"),
                                   "x" * 3000)).encode()
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (d.url(), len(big))).encode()
    st, h, b = send_then_read(d, head, [big[i:i + 512]
                                        for i in range(0, len(big), 512)],
                              gap=0.2, want_close=True)
    expect_json_error(st, h, b, 413, "body over --max-body (Content-Length)")

    # Over --max-body while a chunked body streams.
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n" % d.url()).encode()
    chunks = [b"%x\r\n%s\r\n" % (len(big[i:i + 256]), big[i:i + 256])
              for i in range(0, len(big), 256)] + [b"0\r\n\r\n"]
    st, h, b = send_then_read(d, head, chunks, gap=0.05, want_close=True)
    expect_json_error(st, h, b, 413, "chunked body over --max-body")

    # A chunked body under the limit is fine.
    small = json.dumps(event_with_id(fixture("contact_moved.json"),
                                     "http-chunked")).encode()
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            % d.url()).encode()
    chunks = [b"%x\r\n%s\r\n" % (len(small[i:i + 100]), small[i:i + 100])
              for i in range(0, len(small), 100)] + [b"0\r\n\r\n"]
    expect_ok(send_then_read(d, head, chunks), "chunked body under limit")

    for raw, what in [(b"this is not json", "not JSON"),
                      (b"", "empty body"),
                      (b"[" * 200 + b"]" * 200, "deeply nested arrays"),
                      (b'{"a":' * 150 + b"1" + b"}" * 150 + b"x",
                       "deep objects, then junk"),
                      (b'{"type":"contact_added",', "truncated JSON"),
                      (b"42", "scalar 42"), (b'"x"', "scalar string"),
                      (b"null", "null"), (b"[1,2]", "array of numbers"),
                      (b'[{"type":"contact_added"},1]',
                       "array with a non-object")]:
        st, h, b = d.post(None, raw=raw)
        j = expect_json_error(st, h, b, 400, what)
        check(j.get("status") == "ERROR" and isinstance(j.get("error"), str)
              and j["error"], "%s: error body %r" % (what, b))

    expect_ok(d.post([]), "empty array")

    # No string type: default gets "".  Unknown type: default gets it.
    expect_ok(d.post({"contact": {"contactId": "http-notype"},
                      "account": {"accountId": "A"}}), "object without type")
    expect_ok(d.post({"type": 7, "contact": {"contactId": "http-numtype"}}),
              "object with a number as type")
    expect_ok(d.post({"type": "brand_new_type",
                      "contact": {"contactId": "http-unknown"}}),
              "unknown type")

    rows = d.wait_calls(5)
    by = {r["cid"]: r for r in rows}
    check(by.get("http-ok", {}).get("fn") == "contact_added",
          "right-secret event not handled by contact_added: %r" % rows)
    check("http-chunked" in by, "chunked event not handled")
    for cid in ("http-notype", "http-numtype"):
        r = by.get(cid)
        check(r is not None, "%s not handled: %r" % (cid, rows))
        check(r["fn"] == "default" and r["type"] == "",
              "%s: fn=%s meta.type=%r, want default and ''"
              % (cid, r["fn"], r["type"]))
    r = by.get("http-unknown")
    check(r and r["fn"] == "default" and r["type"] == "brand_new_type",
          "unknown type not handled by default: %r" % r)
    # Nothing from 4xx requests or from [] may reach the handler.
    time.sleep(0.5)
    rows = d.calls()
    check(len(rows) == 5, "expected exactly 5 handler calls, got %d: %r"
          % (len(rows), [(r["fn"], r["cid"]) for r in rows]))


def test_secret_param_and_path(ctx):
    """--secret-param names the parameter; --path restricts the URL."""
    d = ctx.daemon(args=["--secret-param", "token", "--path", "/gr/hook"])
    ev = event_with_id(fixture("contact_added.json"), "param-1")
    expect_ok(d.post(ev, url=d.url("/gr/hook", param="token")),
              "secret in token=")
    st, h, b = d.post(ev, url=d.url("/gr/hook", param="secret"))
    expect_json_error(st, h, b, 403, "secret under the default name")
    st, h, b = d.post(ev, url=d.url("/elsewhere", param="token"))
    expect_json_error(st, h, b, 404, "other path than --path")
    rows = d.wait_calls(1)
    check(rows[0]["cid"] == "param-1", "wrong event handled: %r" % rows)


def test_secret_file_two_lines(ctx):
    path = os.path.join(ctx.dir, "secrets.txt")
    s1, s2 = "Fa" + secrets.token_hex(8), "Fb" + secrets.token_hex(8)
    with open(path, "w") as f:
        f.write("%s\n%s\n" % (s1, s2))
    d = ctx.daemon(args=["--secret-file", path], secret=False)
    ev = event_with_id(fixture("contact_added.json"), "file-1")
    expect_ok(d.post(ev, url=d.url(secret=s1)), "first line of secret file")
    ev = event_with_id(fixture("contact_added.json"), "file-2")
    expect_ok(d.post(ev, url=d.url(secret=s2)), "second line of secret file")
    st, h, b = d.post(ev, url=d.url(secret=s1 + s2))
    expect_json_error(st, h, b, 403, "secret not in file")
    d.wait_calls(2)
    for mode in (0o644, 0o602):
        n = d.stderr().count("every user may read or write")
        os.chmod(path, mode)
        d.proc.send_signal(signal.SIGHUP)
        check(wait_for(lambda: d.stderr().count("every user may read or "
                                                "write") > n, 5),
              "no warning about a secret file of mode %o" % mode)


def test_emptied_secret_file_keeps_old_secrets(ctx):
    """A reload that finds no secret keeps the old ones: never open."""
    path = os.path.join(ctx.dir, "secrets.txt")
    s1 = "Fe" + secrets.token_hex(8)
    with open(path, "w") as f:
        f.write(s1 + "\n")
    d = ctx.daemon(args=["--secret-file", path], secret=False)
    with open(path, "w") as f:
        f.write("# rotated out\n")
    d.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: "secret reload failed" in d.stderr(), 5),
          "an emptied secret file was not refused: %r" % d.stderr()[-300:])
    ev = event_with_id(fixture("contact_added.json"), "empty-1")
    for url in (d.url(secret=None), d.url(secret="")):
        st, h, b = d.post(ev, url=url)
        expect_json_error(st, h, b, 403, "no secret after an emptied file")
    expect_ok(d.post(ev, url=d.url(secret=s1)), "the old secret still works")
    d.wait_calls(1)


def test_many_reloads_still_take_a_new_secret(ctx):
    """Reloads that leave the file as it was change nothing; every change
    is taken, however many, while requests are being checked."""
    path = os.path.join(ctx.dir, "secrets.txt")
    s1 = "Fm" + secrets.token_hex(8)
    with open(path, "w") as f:
        f.write(s1 + "\n")
    d = ctx.daemon(args=["--secret-file", path], secret=False, workers=1)
    for i in range(5):
        d.proc.send_signal(signal.SIGHUP)
        check(wait_for(lambda: d.stderr().count("why=SIGHUP") > i, 5),
              "reload %d not logged" % (i + 1))
    check("secrets reloaded" not in d.stderr(),
          "an unchanged file was reloaded as a change")
    stop = threading.Event()
    statuses = []

    def knock():
        # Requests read the secrets while they are being replaced.
        while not stop.is_set():
            statuses.append(d.post({}, url=d.url(secret="nope"))[0])

    t = threading.Thread(target=knock)
    t.start()
    try:
        old = s1
        for i in range(70):
            new = "Fr%d" % i + secrets.token_hex(8)
            with open(path, "w") as f:
                f.write(new + "\n")
            d.proc.send_signal(signal.SIGHUP)
            check(wait_for(lambda: d.stderr().count("secrets reloaded")
                           > i, 5),
                  "change %d not taken: %r" % (i + 1, d.stderr()[-300:]))
            old = new
    finally:
        stop.set()
        t.join()
    check(statuses and set(statuses) == {403},
          "wrong secret during reloads got %r" % sorted(set(statuses)))
    ev = event_with_id(fixture("contact_added.json"), "many-1")
    expect_ok(d.post(ev, url=d.url(secret=old)), "the 70th secret")
    st, h, b = d.post(ev, url=d.url(secret=s1))
    expect_json_error(st, h, b, 403, "the first secret after 70 changes")
    d.wait_calls(1)


def test_secret_env(ctx):
    s = "Ev" + secrets.token_hex(8)
    d = ctx.daemon(env={"GRWHD_SECRET": s}, secret=False)
    ev = event_with_id(fixture("contact_added.json"), "env-1")
    expect_ok(d.post(ev, url=d.url(secret=s)), "secret from GRWHD_SECRET")
    st, h, b = d.post(ev, url=d.url(secret=SECRET))
    expect_json_error(st, h, b, 403, "secret other than GRWHD_SECRET")
    d.wait_calls(1)


def test_legacy_callback(ctx):
    """A legacy GET callback with action= becomes one event."""
    d = ctx.daemon()
    want = {"subscribe": "contact_added", "open": "contact_opened_message",
            "click": "contact_clicked_message_link",
            "unsubscribe": "contact_removed_link", "goal": "callback_goal"}
    n = 0
    with open(os.path.join(FIXTURES, "legacy-callbacks.txt")) as f:
        for line in f:
            if not line.startswith("GET "):
                continue
            target = line.split()[1]
            # Unique per line so the dedupe digest cannot merge two of them.
            target += "&secret=%s&n=%d" % (SECRET, n)
            n += 1
            expect_ok(d.request("GET", target), "legacy " + target[:40])
    rows = d.wait_calls(n)
    got = sorted(r["type"] for r in rows)
    check(got == sorted(want.values()),
          "legacy callback types %r, want %r" % (got, sorted(want.values())))
    for r in rows:
        fn = r["type"] if r["type"] in HANDLED else "default"
        check(r["fn"] == fn, "legacy %s handled by %s" % (r["type"], r["fn"]))


HANDLED = set(n[:-5] for n in os.listdir(FIXTURES)
              if n.endswith(".json") and n != "batch.json")


def test_deep_nesting_is_refused_not_fatal(ctx):
    """Nesting deeper than any stack: an error answer, and still alive."""
    d = ctx.daemon(args=["--max-body", "4000000"])
    for raw in (b"[" * 1000000, b'{"a":' * 500000,
                b'{"type":"x","n":' + b"[" * 500000 + b"]" * 500000 + b"}"):
        st, h, b = d.post(None, raw=raw)
        check(st in (400, 413), "deep nesting (%d bytes) answered %d"
              % (len(raw), st))
        check(d.alive(), "daemon died on deep nesting")
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "deep")),
              "request after deep nesting")


def test_invalid_utf8_is_accepted(ctx):
    d = ctx.daemon()
    raw = (b'{"type":"contact_added","contact":{"contactId":"utf8-1",'
           b'"name":"bad \xff\xfe byte \xc3"}}')
    expect_ok(d.post(None, raw=raw), "invalid UTF-8 in a string")
    rows = d.wait_calls(1)
    check(rows[0]["cid"] == "utf8-1" and rows[0]["fn"] == "contact_added",
          "wrong call: %r" % rows)


def test_one_contact_in_order(ctx):
    """One contact's events reach the handler in the order received."""
    d = ctx.daemon(workers=4)
    base = fixture("contact_moved.json")
    n = 0
    c = d.conn()
    try:
        for req in range(15):
            batch = []
            for _ in range(4):
                for cid in ("ord-A", "ord-B", "ord-C"):
                    ev = event_with_id(base, cid)
                    ev["seq"] = n
                    n += 1
                    batch.append(ev)
            # Single objects and batches both count.
            if req % 3 == 0:
                for ev in batch:
                    expect_ok(d.post(ev, conn=c), "seq %d" % ev["seq"])
            else:
                expect_ok(d.post(batch, conn=c), "batch at seq %d"
                          % batch[0]["seq"])
    finally:
        c.close()
    d.wait_calls(n, timeout=30)
    for cid in ("ord-A", "ord-B", "ord-C"):
        seqs = [int(r["seq"]) for r in d.calls() if r["cid"] == cid]
        check(seqs == sorted(seqs) and len(seqs) == n // 3,
              "%s handled out of order or not once each: %s" % (cid, seqs))


def test_failing_handler_does_not_block(ctx):
    """A handler error is logged; later events still run; daemon lives."""
    d = ctx.daemon(env={"GRWHD_TEST_FAIL_TYPE": "contact_added"})
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "f-1")),
              "event whose handler fails")
    expect_ok(d.post(event_with_id(fixture("contact_moved.json"), "f-1")),
              "next event of the same contact")
    rows = d.wait_calls(1)
    check(rows[0]["fn"] == "contact_moved", "unexpected call %r" % rows)
    check(wait_for(lambda: "boom" in d.stderr(), 5),
          "handler error not logged")
    check(d.alive(), "daemon died after a handler error")


def test_backlog_bound_answers_503(ctx):
    """Over --max-backlog: 503 with Retry-After, and 200 again once drained."""
    d = ctx.daemon(args=["--max-backlog", "3"],
                   env={"GRWHD_TEST_SLEEP": "0.4"}, workers=1)
    base = fixture("contact_moved.json")
    got = []
    for i in range(10):
        st, h, b = d.post(event_with_id(base, "bl-%d" % i))
        got.append(st)
        if st == 503:
            expect_json_error(st, h, b, 503, "backlog full")
            check(h.get("retry-after", "").strip().isdigit(),
                  "503 without a numeric Retry-After: %r"
                  % h.get("retry-after"))
            break
        check(st == 200, "event %d: %d %r" % (i, st, b))
    check(503 in got and got.index(503) <= 4,
          "no 503 once the backlog bound (3) was passed: %r" % got)
    accepted = got.index(503)
    d.wait_calls(accepted, timeout=15)
    expect_ok(d.post(event_with_id(base, "bl-after")), "after the drain")
    rows = d.wait_calls(accepted + 1, timeout=10)
    check(not any(r["cid"] == "bl-%d" % accepted for r in rows),
          "the refused event was handled anyway")


def test_fixture_types_reach_their_function(ctx):
    d = ctx.daemon()
    sent = {}
    for name in fixture_names():
        ev = fixture(name)
        wid = str(uuid.uuid4())
        expect_ok(d.post(ev, headers={"X-Webhook-ID": wid}), name)
        sent[ev["type"]] = wid
    rows = d.wait_calls(len(sent))
    for t, wid in sent.items():
        mine = [r for r in rows if r["type"] == t]
        check(len(mine) == 1, "%s handled %d times" % (t, len(mine)))
        check(mine[0]["fn"] == t, "%s went to function %s"
              % (t, mine[0]["fn"]))
        check(mine[0]["webhook_id"] == wid,
              "%s: meta.webhook_id %r, want %r"
              % (t, mine[0]["webhook_id"], wid))
        check(mine[0]["request_id"] not in ("", "-"),
              "%s: meta.request_id missing" % t)
        check(mine[0]["attempt"] == "1", "%s: attempt %r"
              % (t, mine[0]["attempt"]))
        check(mine[0]["remote"] == "127.0.0.1" or
              mine[0]["remote"].startswith("127.0.0.1"),
              "%s: meta.remote_addr %r" % (t, mine[0]["remote"]))


def test_batch_fixture(ctx):
    d = ctx.daemon()
    batch = fixture("batch.json")
    expect_ok(d.post(batch), "batch.json")
    rows = d.wait_calls(5)
    time.sleep(0.3)
    rows = d.calls()
    check(len(rows) == 5, "batch.json: %d handler calls, want 5" % len(rows))
    idx = sorted(int(r["batch_index"]) for r in rows)
    check(idx in (list(range(5)), list(range(1, 6))),
          "batch_index values %r" % idx)
    check(all(r["batch_size"] == "5" for r in rows),
          "batch_size values %r" % [r["batch_size"] for r in rows])
    base = idx[0]
    for r in rows:
        want = batch[int(r["batch_index"]) - base]["type"]
        check(r["fn"] == want and r["type"] == want,
              "batch_index %s: fn %s type %s, want %s"
              % (r["batch_index"], r["fn"], r["type"], want))


def make_batch(prefix, n):
    names = fixture_names()
    return [event_with_id(fixture(names[i % len(names)]),
                          "%s-%d" % (prefix, i)) for i in range(n)]


def test_batch_100(ctx):
    d = ctx.daemon(workers=2)
    expect_ok(d.post(make_batch("b100", 100)), "batch of 100")
    d.wait_calls(100, timeout=30)
    time.sleep(0.3)
    cids = [r["cid"] for r in d.calls()]
    check(len(cids) == 100 and set(cids) == set("b100-%d" % i
                                                for i in range(100)),
          "batch of 100: %d calls, %d distinct" % (len(cids), len(set(cids))))


def test_batch_over_100_accepted(ctx):
    d = ctx.daemon(workers=2)
    expect_ok(d.post(make_batch("b101", 101)), "batch of 101")
    d.wait_calls(101, timeout=30)
    check(re.search(r"level=warn\b", d.stderr()),
          "no warning logged for a batch of more than 100 events")


def test_keep_alive(ctx):
    d = ctx.daemon()
    c = d.conn()
    try:
        first = None
        for i in range(6):
            ev = event_with_id(fixture("contact_added.json"), "ka-%d" % i)
            c.request("POST", d.url(), body=json.dumps(ev).encode(),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            note_status(r.status)
            check(r.status == 200 and body == b'{"status":"OK"}',
                  "request %d on one connection: %d %r" % (i, r.status, body))
            check(not r.will_close,
                  "server closed the keep-alive connection after %d" % i)
            if first is None:
                first = c.sock
            check(c.sock is first, "connection was reopened at request %d"
                  % i)
    finally:
        c.close()
    d.wait_calls(6)


def test_expect_100_continue(ctx):
    d = ctx.daemon()
    body = json.dumps(event_with_id(fixture("contact_added.json"),
                                    "continue-1")).encode()
    s = d.tls_socket()
    try:
        s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Content-Type: application/json\r\n"
                   "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                   % (d.url(), len(body))).encode())
        interim = b""
        end = time.monotonic() + 5
        while b"\r\n\r\n" not in interim and time.monotonic() < end:
            check(readable(s, max(0.0, end - time.monotonic())),
                  "no 100 Continue within 5 s")
            ch = s.recv(1)
            check(ch, "connection closed before 100 Continue: %r" % interim)
            interim += ch
        check(re.match(rb"HTTP/1\.[01] 100 ", interim),
              "first answer is not 100 Continue: %r" % interim[:80])
        s.sendall(body)
        st, h, b = read_response(s)
        expect_ok((st, h, b), "body after 100 Continue")
    finally:
        s.close()
    rows = d.wait_calls(1)
    check(rows[0]["cid"] == "continue-1", "wrong event: %r" % rows)


def test_kill9_after_ack(ctx):
    """Acked events survive kill -9 and run after a restart."""
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(env={"GRWHD_TEST_SLEEP": "0.5"}, spool=spool, workers=2)
    cids = ["k9-%d" % i for i in range(20)]
    names = fixture_names()
    c = d.conn()
    try:
        for i, cid in enumerate(cids):
            ev = event_with_id(fixture(names[i % len(names)]), cid)
            expect_ok(d.post(ev, conn=c), "event %s" % cid)
    finally:
        c.close()
    d.kill9()
    before = set(r["cid"] for r in d.calls())
    check(len(before) < len(cids),
          "all events were handled before the kill; the test proves nothing")
    d2 = ctx.daemon(spool=spool, out=d.out, workers=2)
    ok = wait_for(lambda: set(cids) <= set(r["cid"] for r in d2.calls()), 20)
    missing = set(cids) - set(r["cid"] for r in d2.calls())
    check(ok, "after kill -9 and restart, %d acked events never handled: %s"
          " (%d handled before the kill)"
          % (len(missing), sorted(missing)[:10], len(before)))


def test_parallel_exactly_once(ctx):
    d = ctx.daemon(workers=4)
    senders, batches, per = 16, 25, 4
    names = fixture_names()
    errors = []

    def sender(s):
        c = d.conn(timeout=20)
        try:
            for b in range(batches):
                evs = [event_with_id(fixture(names[(s + b + i) % len(names)]),
                                     "c%d-%d-%d" % (s, b, i))
                       for i in range(per)]
                st, h, body = d.post(evs, conn=c)
                if st != 200 or body != b'{"status":"OK"}':
                    errors.append("sender %d batch %d: %d %r"
                                  % (s, b, st, body[:100]))
        except Exception as e:  # noqa: a thread must not die silently
            errors.append("sender %d: %r" % (s, e))
        finally:
            c.close()

    ts = [threading.Thread(target=sender, args=(s,)) for s in range(senders)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    check(not any(t.is_alive() for t in ts), "senders hung")
    check(not errors, "%d failed requests, first: %s"
          % (len(errors), errors[:3]))
    total = senders * batches * per
    d.wait_calls(total, timeout=60)
    time.sleep(0.5)
    counts = {}
    for r in d.calls():
        counts[r["cid"]] = counts.get(r["cid"], 0) + 1
    want = set("c%d-%d-%d" % (s, b, i) for s in range(senders)
               for b in range(batches) for i in range(per))
    missing = want - set(counts)
    dup = [k for k, v in counts.items() if v != 1]
    extra = set(counts) - want
    check(not missing and not dup and not extra,
          "%d missing, %d duplicated, %d unexpected (e.g. %s %s)"
          % (len(missing), len(dup), len(extra), sorted(missing)[:3],
             dup[:3]))


def test_idle_connections_do_not_delay(ctx):
    d = ctx.daemon()
    idle = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", d.port), 5)
            idle.append(s)
        for _ in range(20):
            idle.append(d.tls_socket())
        ev = event_with_id(fixture("contact_added.json"), "idle-real")
        t0 = time.monotonic()
        res = d.post(ev, conn=d.conn(timeout=5))
        took = time.monotonic() - t0
        expect_ok(res, "request beside 220 idle connections")
        check(took < 1.0, "request took %.2f s beside idle connections"
              % took)
    finally:
        for s in idle:
            s.close()
    d.wait_calls(1)


def test_no_secret_or_email_in_log(ctx):
    d = ctx.daemon()
    emails = set()
    for name in fixture_names() + ["batch.json"]:
        with open(os.path.join(FIXTURES, name)) as f:
            emails.update(re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
                                     f.read()))
    check(emails, "no e-mail addresses found in the fixtures")
    n = 0
    for name in fixture_names():
        expect_ok(d.post(fixture(name)), name)
        n += 1
    expect_ok(d.post(fixture("batch.json")), "batch.json")
    n += 5
    # Requests that fail carry the secret too.
    d.request("GET", d.url())
    d.post(None, raw=b"not json")
    # A legacy callback has an address in its query string.
    with open(os.path.join(FIXTURES, "legacy-callbacks.txt")) as f:
        legacy = [l.split()[1] for l in f if l.startswith("GET ")]
    d.request("GET", legacy[0] + "&secret=" + SECRET)
    # A parse error and a UTF-8 repair must not quote the body in the log.
    emails.add("leak.check@example.com")
    d.post(None, raw=b'{"type":"x","contact":{"email":"leak.check@example.com"'
                     b',"name":')
    expect_ok(d.post(None, raw=b'{"type":"contact_added","contact":'
                               b'{"contactId":"utf8-leak","email":'
                               b'"leak.check\xff@example.com"}}'),
              "invalid UTF-8 beside an address")
    n += 1
    emails.add("leak.check\ufffd@example.com")
    d.wait_calls(n, timeout=20)
    time.sleep(0.3)
    log = d.stderr()
    check(SECRET not in log, "the secret appears in stderr")
    leaked = [e for e in emails if e in log or e.replace("@", "%40") in log]
    check(not leaked, "e-mail addresses in stderr: %s" % sorted(leaked))
    check(re.search(r"msg=request method=POST path=\S*REDACTED\S* "
                    r"status=200 events=\d+ bytes=\d+ ms=[\d.]+ "
                    r"remote=127\.0\.0\.1", log),
          "no access line with a redacted path, status, events, bytes, ms"
          " and remote")


def test_cli_check(ctx):
    r = subprocess.run([BIN, "check", "--script", HANDLER],
                       capture_output=True, timeout=15)
    check(r.returncode == 0, "check on a good script: rc %d, %r"
          % (r.returncode, r.stderr[-300:]))
    out = r.stdout.decode()
    missing = [t for t in HANDLED if t not in out]
    check(not missing, "check does not list %s" % missing)
    check("default" in out, "check does not list default")

    bad = os.path.join(ctx.dir, "bad.lua")
    with open(bad, "w") as f:
        f.write("local on = {}\n\nfunction on.default(ev, meta)\n"
                "  local x = = 1\nend\nreturn on\n")
    r = subprocess.run([BIN, "check", "--script", bad], capture_output=True,
                       timeout=15)
    check(r.returncode == 1, "check on a syntax error: rc %d"
          % r.returncode)
    text = (r.stdout + r.stderr).decode("utf-8", "replace")
    check("bad.lua:4" in text, "check message lacks bad.lua:4: %r"
          % text[-300:])


def test_cli_feed(ctx):
    out = os.path.join(ctx.dir, "feed.txt")
    env = dict(os.environ, GRWHD_TEST_OUT=out)
    env.pop("GRWHD_TEST_FAIL_TYPE", None)
    files = [os.path.join(FIXTURES, n) for n in fixture_names()]
    r = subprocess.run([BIN, "feed", "--script", HANDLER] + files,
                       capture_output=True, timeout=30, env=env,
                       cwd=ctx.dir)
    check(r.returncode == 0, "feed good payloads: rc %d, %r"
          % (r.returncode, r.stderr[-300:]))
    with open(out) as f:
        fns = [l.split("|")[0] for l in f.read().splitlines()]
    check(sorted(fns) == sorted(HANDLED), "feed called %r" % sorted(fns))

    with open(os.path.join(FIXTURES, "batch.json"), "rb") as f:
        r = subprocess.run([BIN, "feed", "--script", HANDLER, "-"],
                           input=f.read(), capture_output=True, timeout=30,
                           env=env, cwd=ctx.dir)
    check(r.returncode == 0, "feed from stdin: rc %d, %r"
          % (r.returncode, r.stderr[-300:]))

    env["GRWHD_TEST_FAIL_TYPE"] = "contact_added"
    r = subprocess.run([BIN, "feed", "--script", HANDLER,
                        os.path.join(FIXTURES, "contact_added.json")],
                       capture_output=True, timeout=30, env=env,
                       cwd=ctx.dir)
    check(r.returncode != 0, "feed with a failing handler exited 0")
    check(b"boom" in r.stderr + r.stdout,
          "feed failure does not show the error message")


def test_cli_bad_option(ctx):
    for argv in (["--no-such-option"],
                 ["--script", HANDLER, "--workers", "many"],
                 ["--script", HANDLER, "--listen"]):
        r = subprocess.run([BIN] + argv, capture_output=True, timeout=15,
                           cwd=ctx.dir)
        check(r.returncode == 2, "%s: rc %d, want 2" % (argv, r.returncode))
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        check(len(lines) == 1, "%s: %d lines of error, want 1: %r"
              % (argv, len(lines), lines[:4]))


def client_hello():
    """The first bytes of a real TLS ClientHello, made in memory."""
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = client_ctx().wrap_bio(inc, outg, server_hostname="127.0.0.1")
    try:
        o.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outg.read()


def test_garbage_does_not_stop_daemon(ctx):
    d = ctx.daemon(args=["--conn-timeout", "3"])
    rnd = random.Random(1234)
    keep = []    # connections left open until the end, as a peer might
    hello = client_hello()
    body = json.dumps(fixture("contact_added.json")).encode()
    post_head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                 "Content-Type: application/json\r\n\r\n"
                 % (d.url(), len(body))).encode()

    def tcp(data, close=False):
        s = socket.create_connection(("127.0.0.1", d.port), 5)
        keep.append(s)
        s.sendall(data)
        if close:
            s.close()

    def tls(data, close=False, unwrap=False):
        s = d.tls_socket()
        keep.append(s)
        s.sendall(data)
        if unwrap:
            s.unwrap()
        if close:
            s.close()

    def bad_chunks():
        st = send_then_read(d, ("POST %s HTTP/1.1\r\nHost: x\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n"
                                % d.url()).encode(),
                            [b"zz\r\nhello\r\n0\r\n\r\n"])[0]
        check(400 <= st < 500, "bad chunk encoding answered %d" % st)

    attacks = [
        # Random bytes where a TLS handshake should be.
        *[(lambda n=n: tcp(bytes(rnd.getrandbits(8) for _ in range(n))))
          for n in (1, 5, 200, 5000, 70000)],
        # A TLS record header claiming a huge length, then nothing.
        lambda: tcp(b"\x16\x03\x01\xff\xff"),
        # Plain HTTP on the TLS port.
        lambda: tcp(b"POST /hook HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
        # Truncated ClientHello, then close.
        *[(lambda c=c: tcp(hello[:c], close=True))
          for c in (3, len(hello) // 2, len(hello) - 1)],
        # Half a body, then an abrupt close or a clean TLS close.
        lambda: tls(post_head + body[:len(body) // 2], close=True),
        lambda: tls(post_head + body[:len(body) // 2], unwrap=True,
                    close=True),
        # Half the headers, then close.
        lambda: tls(b"POST /hook?secret=" + SECRET.encode()
                    + b" HTTP/1.1\r\nCon", close=True),
        # Not HTTP inside TLS; a request line far too long; many headers.
        lambda: tls(bytes(rnd.getrandbits(8) for _ in range(3000))),
        lambda: tls(b"POST /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n"),
        lambda: tls(b"POST /hook HTTP/1.1\r\n"
                    + b"X-A: b\r\n" * 20000 + b"\r\n"),
        lambda: tls(b"POST /hook HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
        lambda: tls(b"POST /hook HTTP/1.1\r\nContent-Length: "
                    b"99999999999999999999999\r\n\r\n"),
        bad_chunks,
    ]
    try:
        for attack in attacks:
            try:
                attack()
            except (OSError, ssl.SSLError):
                pass  # the server may reset a garbage connection: fine
    finally:
        for s in keep:
            s.close()
    time.sleep(0.3)
    check(d.alive(), "daemon died after garbage: rc %s" % d.proc.poll())
    ev = event_with_id(fixture("contact_added.json"), "after-garbage")
    expect_ok(d.post(ev), "good request after garbage")
    rows = d.wait_calls(1)
    check(rows[-1]["cid"] == "after-garbage", "wrong event: %r" % rows)


def test_secret_with_reserved_characters(ctx):
    """A secret with characters that must be percent-encoded in a URL."""
    sec = "p@ss w/rd+1&x=%"
    d = ctx.daemon(args=["--secret", sec], secret=False)
    enc = "".join(c if c.isalnum() else "%%%02X" % ord(c) for c in sec)
    ev = event_with_id(fixture("contact_added.json"), "enc-1")
    expect_ok(d.post(ev, url=d.url(secret=enc)), "percent-encoded secret")
    for wrong in (SECRET, enc[:-3], enc + "x", "p%40ss"):
        st, h, b = d.post(ev, url=d.url(secret=wrong))
        check(st == 403, "secret %r answered %d" % (wrong, st))
    d.wait_calls(1)
    check(sec not in d.stderr() and enc not in d.stderr(),
          "the secret appears in stderr")
    check("must be percent-encoded" in d.stderr(),
          "no warning that the secret needs encoding: %r" % d.stderr()[:400])
    d.stop()
    plain = ctx.daemon(args=["--secret", "Plain-secret_0.9~"], secret=False)
    check("percent-encoded" not in plain.stderr(),
          "a URL-safe secret was warned about: %r" % plain.stderr()[:400])


def logfmt_keys(line):
    """The keys of one logfmt line, honouring quoted values."""
    keys, i = [], 0
    while i < len(line):
        m = re.compile(r'\s*([^\s=]+)=').match(line, i)
        if not m:
            return None
        keys.append(m.group(1))
        i = m.end()
        if i < len(line) and line[i] == '"':
            i += 1
            while i < len(line) and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        else:
            while i < len(line) and not line[i].isspace():
                i += 1
    return keys


def test_peer_text_is_escaped_in_log(ctx):
    """Headers a peer controls cannot forge keys or lines in the log."""
    d = ctx.daemon()
    evil = 'x y" level=error msg=forged \x1b[31mred'
    ev = event_with_id(fixture("contact_added.json"), "esc-1")
    try:
        res = d.post(ev, headers={"X-Webhook-ID": evil, "X-Request-ID": evil})
    except ValueError:
        raise TestFailure("client refused the header (test bug)")
    expect_ok(res, "request with odd header values")
    rows = d.wait_calls(1)
    log = d.stderr()
    check("\x1b" not in log, "a raw escape byte from a header is in the log")
    for line in log.splitlines():
        keys = logfmt_keys(line)
        check(keys is not None and keys.count("level") == 1
              and keys.count("msg") == 1,
              "log line does not parse as logfmt or has forged keys: %r"
              % line)
    check("msg=forged" not in re.sub(r'"(?:[^"\\]|\\.)*"', '""', log),
          "a header value forged a key in the log")


def test_conn_timeout_closes_idle(ctx):
    d = ctx.daemon(args=["--conn-timeout", "2"])
    plain = socket.create_connection(("127.0.0.1", d.port), 5)
    tls_idle = d.tls_socket()
    try:
        check(closed_soon(plain, 6), "idle TCP connection open after 6 s "
              "with --conn-timeout 2")
        check(closed_soon(tls_idle, 2), "idle TLS connection open after 6 s "
              "with --conn-timeout 2")
    finally:
        plain.close()
        tls_idle.close()
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "ct")),
              "request after idle timeouts")


def test_large_batches_overflow_queues(ctx):
    """More events than the worker queues hold: all run, each once."""
    d = ctx.daemon(workers=1)
    names = fixture_names()
    total = 0
    # Three bodies of 1000 (the most one may carry) against 1024 slots.
    for r in range(3):
        evs = [event_with_id(fixture(names[i % len(names)]),
                             "big-%d-%d" % (r, i)) for i in range(1000)]
        expect_ok(d.post(evs), "batch %d of 1000" % r)
        total += len(evs)
    d.wait_calls(total, timeout=60)
    time.sleep(0.5)
    counts = {}
    for row in d.calls():
        counts[row["cid"]] = counts.get(row["cid"], 0) + 1
    dup = [k for k, v in counts.items() if v != 1]
    check(len(counts) == total and not dup,
          "%d distinct of %d, %d duplicated (e.g. %s)"
          % (len(counts), total, len(dup), dup[:3]))


def test_sigterm_under_load(ctx):
    """SIGTERM while senders stream batches: exit 0, nothing acked lost.

    Requests in flight are stored and answered; new ones hear 503; the
    listener is stopped only once no connection is held by the intake.
    """
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(spool=spool, workers=2)
    acked, lock, stop = [], threading.Lock(), threading.Event()
    codes = {}

    def sender(k):
        conn = None
        n = 0
        while not stop.is_set():
            evs = [event_with_id(fixture("contact_moved.json"),
                                 "tl-%d-%d-%d" % (k, n, i)) for i in range(20)]
            n += 1
            try:
                conn = conn or d.conn(timeout=10)
                st, _, b = d.post(evs, conn=conn)
            except (OSError, http.client.HTTPException):
                conn = None
                time.sleep(0.05)
                continue
            with lock:
                codes[st] = codes.get(st, 0) + 1
                if st == 200 and b == b'{"status":"OK"}':
                    acked.extend(e["contact"]["contactId"] for e in evs)

    ts = [threading.Thread(target=sender, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    try:
        time.sleep(1.5)
        rc = d.stop()
    finally:
        stop.set()
        for t in ts:
            t.join(15)
    check(rc == 0, "exit status %s after SIGTERM under load (codes %r): %s"
          % (rc, codes, d.stderr()[-300:]))
    check("Fatal error" not in d.stderr(), "libmicrohttpd aborted")
    check(len(acked) > 0, "nothing acknowledged before SIGTERM: %r" % codes)
    d2 = ctx.daemon(spool=spool, out=d.out, workers=2)
    want = set(acked)
    ok = wait_for(lambda: want <= set(r["cid"] for r in d2.calls()), 30)
    check(ok, "%d of %d acknowledged events never handled"
          % (len(want - set(r["cid"] for r in d2.calls())), len(want)))


def test_sigterm_keeps_unhandled(ctx):
    """SIGTERM with a backlog: prompt exit 0, the rest runs after restart."""
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(env={"GRWHD_TEST_SLEEP": "0.5"}, spool=spool, workers=1)
    cids = ["st-%d" % i for i in range(10)]
    for cid in cids:
        expect_ok(d.post(event_with_id(fixture("contact_moved.json"), cid)),
                  cid)
    t0 = time.monotonic()
    rc = d.stop()
    took = time.monotonic() - t0
    check(rc == 0, "exit status after SIGTERM: %s" % rc)
    check(took < 8, "SIGTERM took %.1f s" % took)
    before = len(d.calls())
    d2 = ctx.daemon(spool=spool, out=d.out, workers=1)
    ok = wait_for(lambda: set(cids) <= set(r["cid"] for r in d2.calls()), 15)
    check(ok, "after SIGTERM and restart, events missing: %s (%d before)"
          % (sorted(set(cids) - set(r["cid"] for r in d2.calls())), before))


def test_stderr_lines_are_logfmt(ctx):
    """Every stderr line is one logfmt record, whatever --workers is."""
    d = ctx.daemon(workers=1)
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "lf-1")),
              "one event")
    d.post(None, raw=b"not json")
    d.wait_calls(1)
    d.stop()
    for line in d.stderr().splitlines():
        keys = logfmt_keys(line)
        check(keys and keys[:3] == ["ts", "level", "msg"],
              "stderr line is not a logfmt record: %r" % line[:160])


def test_duplicate_delivery_handled_once(ctx):
    """A retry (same X-Webhook-ID) or a repeated body runs once."""
    d = ctx.daemon()
    ev = event_with_id(fixture("contact_added.json"), "dup-1")
    wid = str(uuid.uuid4())
    for _ in range(3):
        expect_ok(d.post(ev, headers={"X-Webhook-ID": wid}), "retry")
    ev2 = event_with_id(fixture("contact_added.json"), "dup-2")
    for _ in range(2):
        expect_ok(d.post(ev2, headers={"X-Webhook-ID": None}),
                  "same body, no X-Webhook-ID")
    # A new delivery of equal content is a new event.
    ev3 = event_with_id(fixture("contact_added.json"), "dup-3")
    expect_ok(d.post(ev3), "first delivery")
    expect_ok(d.post(ev3), "second delivery, new X-Webhook-ID")
    d.wait_calls(4)
    time.sleep(1.0)
    got = sorted(r["cid"] for r in d.calls())
    check(got == ["dup-1", "dup-2", "dup-3", "dup-3"],
          "handler calls %r, want dup-1, dup-2 once and dup-3 twice" % got)


def test_failed_handler_is_retried(ctx):
    d = ctx.daemon(env={"GRWHD_TEST_FAIL_ATTEMPTS": "1"})
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "rt-1")),
              "event failing on its first attempt")
    rows = d.wait_calls(1, timeout=10)
    check(rows[0]["cid"] == "rt-1" and rows[0]["attempt"] == "2",
          "want one call at attempt 2, got %r" % rows)


def test_sigterm_exits_zero(ctx):
    d = ctx.daemon()
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "t-1")),
              "before SIGTERM")
    d.wait_calls(1)
    rc = d.stop()
    check(rc == 0, "exit status after SIGTERM: %s" % rc)


class SmallDisk:
    """A 4 MiB tmpfs the test mounts (root only) and can fill and free."""

    def __init__(self, ctx):
        self.dir = os.path.join(ctx.dir, "small")
        os.mkdir(self.dir)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m",
                            "tmpfs", self.dir], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise TestSkip("cannot mount a tmpfs (needs root): %s"
                           % r.stderr.strip())
        self.filler = os.path.join(self.dir, "filler")

    def fill(self):
        with open(self.filler, "wb") as f:
            try:
                f.write(b"\0" * (4 << 20))
            except OSError:
                pass

    def free(self):
        os.unlink(self.filler)

    def unmount(self):
        subprocess.run(["umount", "-l", self.dir], capture_output=True)


def big_batch(prefix):
    batch = [event_with_id(fixture("contact_added.json"), "%s-%d"
                           % (prefix, i)) for i in range(100)]
    for ev in batch:
        ev["pad"] = "x" * 2000
    return batch


def grwhd_cli(*args, timeout=20):
    """Runs the grwhd binary with args; returns (rc, stdout, stderr)."""
    p = subprocess.run([BIN] + list(args), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_dead_letters_listed_and_retried(ctx):
    """After --max-attempts an event is dead, listed, and re-queued."""
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(args=["--max-attempts", "2"], spool=spool,
                   env={"GRWHD_TEST_FAIL_TYPE": "contact_added"})
    for cid in ("dl-A", "dl-B"):
        expect_ok(d.post(event_with_id(fixture("contact_added.json"), cid)),
                  cid)

    def dead():
        rc, out, _ = grwhd_cli("spool", "--spool", spool, "dead", "--json")
        return json.loads(out) if rc == 0 and out.strip() else []

    # The one retry comes 0.5 to 1 s after the first failure.
    rows = wait_for(lambda: len(dead()) == 2 and dead(), 10)
    check(rows and len(rows) == 2, "dead events: %r" % (rows,))
    for r in rows:
        check(r["type"] == "contact_added" and r["attempts"] == 2 and
              "boom" in r["last_error"] and r["received_at"] > 0,
              "dead listing %r" % r)
    ids = {r["contact_id"]: r["id"] for r in rows}
    check(sorted(ids) == ["dl-A", "dl-B"], "contacts %r" % ids)
    check(wait_for(lambda: "event is dead" in d.stderr(), 5),
          "no log line for the dead event")
    rc, out, _ = grwhd_cli("spool", "--spool", spool, "stats")
    check(rc == 0 and re.search(r"^dead\s+2$", out, re.M),
          "stats: %r" % out)
    rc, _, err = grwhd_cli("spool", "--spool", spool, "purge-dead")
    check(rc == 2 and "--yes" in err, "purge-dead without --yes: %d %r"
          % (rc, err))
    check(d.stop() == 0, "stop")

    # Re-queued while the daemon is stopped, handled once it starts.
    rc, out, _ = grwhd_cli("spool", "--spool", spool, "retry",
                           str(ids["dl-A"]))
    check(rc == 0 and "re-queued 1" in out, "retry by id: %d %r" % (rc, out))
    d2 = ctx.daemon(spool=spool, out=d.out)
    rows = d2.wait_calls(1, timeout=10)
    check(rows[0]["cid"] == "dl-A" and rows[0]["attempt"] == "1",
          "after retry: %r" % rows)
    # Re-queued while it runs, picked up within a couple of seconds.
    rc, out, _ = grwhd_cli("spool", "--spool", spool, "retry", "--all")
    check(rc == 0 and "re-queued 1" in out, "retry --all: %d %r" % (rc, out))
    rows = d2.wait_calls(2, timeout=10)
    check(sorted(r["cid"] for r in rows) == ["dl-A", "dl-B"],
          "handled after retry: %r" % rows)
    rc, out, _ = grwhd_cli("spool", "--spool", spool, "stats")
    check(rc == 0 and re.search(r"^dead\s+0$", out, re.M),
          "stats after retry: %r" % out)
    rc, _, err = grwhd_cli("spool", "--spool", spool, "retry", "x1")
    check(rc == 2, "retry of a bad id: rc %d %r" % (rc, err))


def test_identical_batch_twice_once(ctx):
    """The same batch again (no X-Webhook-ID, or the same one) runs once."""
    d = ctx.daemon()
    batch = fixture("batch.json")
    for _ in range(2):
        expect_ok(d.post(batch, headers={"X-Webhook-ID": None}), "batch")
    wid = str(uuid.uuid4())
    other = [event_with_id(ev, "ib-%d" % i) for i, ev in enumerate(batch)]
    for _ in range(2):
        expect_ok(d.post(other, headers={"X-Webhook-ID": wid}), "by id")
    d.wait_calls(10)
    time.sleep(1.0)
    check(len(d.calls()) == 10, "%d calls for 2 distinct batches of 5"
          % len(d.calls()))
    check(wait_for(lambda: "duplicates=5" in d.stderr(), 3),
          "access line does not count the duplicates")


def test_dedupe_survives_restart(ctx):
    """GetResponse may retry after grwhd restarted: still handled once."""
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(spool=spool)
    ev = event_with_id(fixture("contact_added.json"), "dr-1")
    wid = str(uuid.uuid4())
    expect_ok(d.post(ev, headers={"X-Webhook-ID": wid}), "first")
    d.wait_calls(1)
    check(d.stop() == 0, "stop")
    d2 = ctx.daemon(spool=spool, out=d.out)
    expect_ok(d2.post(ev, headers={"X-Webhook-ID": wid}), "retry")
    expect_ok(d2.post(event_with_id(ev, "dr-2")), "a new one")
    d2.wait_calls(2)
    time.sleep(0.5)
    got = sorted(r["cid"] for r in d2.calls())
    check(got == ["dr-1", "dr-2"], "calls after restart: %r" % got)


def test_dedupe_window_zero_turns_it_off(ctx):
    d = ctx.daemon(args=["--dedupe-window", "0"])
    ev = event_with_id(fixture("contact_added.json"), "dz-1")
    wid = str(uuid.uuid4())
    for _ in range(2):
        expect_ok(d.post(ev, headers={"X-Webhook-ID": wid}), "post")
    d.wait_calls(2)


def test_kill9_mid_handler_counts_attempt(ctx):
    """kill -9 while a handler runs: it runs again, as attempt 2."""
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(spool=spool, env={"GRWHD_TEST_SLEEP": "5"})
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "km-1")),
              "slow event")
    time.sleep(1.0)     # the attempt has begun and been recorded
    d.kill9()
    check(d.calls() == [], "handler finished before the kill")
    d2 = ctx.daemon(spool=spool, out=d.out)
    rows = d2.wait_calls(1, timeout=10)
    check(rows[0]["cid"] == "km-1" and rows[0]["attempt"] == "2",
          "after restart: %r" % rows)


def test_full_disk_503_then_recovery(ctx):
    """A spool that cannot grow answers 503 + Retry-After, then recovers."""
    disk = SmallDisk(ctx)
    try:
        d = ctx.daemon(spool=os.path.join(disk.dir, "spool.db"))
        base = fixture("contact_added.json")
        expect_ok(d.post(event_with_id(base, "df-0")), "before full")
        disk.fill()
        statuses = []
        for _ in range(20):
            st, h, b = d.post(big_batch("df-big"))
            statuses.append(st)
            if st == 503:
                expect_json_error(st, h, b, 503, "disk full")
                check(h.get("retry-after", "").strip().isdigit(),
                      "503 without Retry-After")
                break
        check(503 in statuses, "never 503 on a full disk: %r" % statuses)
        check(d.alive(), "daemon died on a full disk")
        disk.free()
        expect_ok(d.post(event_with_id(base, "df-after")), "after space")
        ok = wait_for(lambda: "df-after" in [c["cid"] for c in d.calls()],
                      10)
        check(ok, "event after recovery not handled")
        d.stop()
    finally:
        disk.unmount()


# ---------------------------------------------------------------------------
# The Lua runtime: reload, limits, the grwhd module, tooling, examples.

VERSIONED = """local on = {}
function on.default(ev, meta)
  local f = assert(io.open(os.getenv("GRWHD_TEST_OUT"), "a"))
  f:write("%s|", tostring(ev.contact and ev.contact.contactId), "\\n")
  f:close()
end
return on
"""


def write_script(path, text):
    """Writes a script the way editors and git do: a new file renamed over."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def versions_seen(d):
    try:
        with open(d.out) as f:
            return [l.split("|")[:2] for l in f.read().splitlines()]
    except FileNotFoundError:
        return []


def post_and_wait_version(d, cid, timeout=10):
    expect_ok(d.post(event_with_id(fixture("contact_moved.json"), cid)), cid)
    ok = wait_for(lambda: any(v[1] == cid for v in versions_seen(d)),
                  timeout)
    check(ok, "event %s not handled: %r" % (cid, versions_seen(d)))
    return [v[0] for v in versions_seen(d) if v[1] == cid][0]


def scripted_daemon(ctx, text, **kw):
    script = os.path.join(ctx.dir, "script", "h.lua")
    os.makedirs(os.path.dirname(script), exist_ok=True)
    write_script(script, text)
    args = ["--script", script] + list(kw.pop("args", []))
    return script, ctx.daemon(args=args, **kw)


def test_reload_on_rename_sighup_and_broken(ctx):
    """A replaced script is picked up; a broken one is refused; SIGHUP."""
    script, d = scripted_daemon(ctx, VERSIONED % "v1")
    check(post_and_wait_version(d, "r-1") == "v1", "first version")
    write_script(script, VERSIONED % "v2")
    check(wait_for(lambda: d.stderr().count("msg=\"script loaded\"") >= 2,
                   5), "no reload after a rename over the script")
    check(post_and_wait_version(d, "r-2") == "v2", "after rename")

    write_script(script, "local on = {\n")
    check(wait_for(lambda: "reload failed" in d.stderr(), 5),
          "broken script not reported")
    check(re.search(r'error="[^"]*h\.lua:\d+:', d.stderr()),
          "reload error without file:line")
    check(post_and_wait_version(d, "r-3") == "v2", "old version kept")

    # SIGHUP reloads at once, before the watcher would notice.
    with open(script, "w") as f:
        f.write(VERSIONED % "v3")
    d.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: "why=SIGHUP" in d.stderr(), 0.4),
          "SIGHUP did not reload within 0.4 s")
    check(post_and_wait_version(d, "r-4") == "v3", "after SIGHUP")
    check(d.alive(), "daemon died during reloads")


def test_reload_when_a_module_changes(ctx):
    modp = os.path.join(ctx.dir, "script", "mod.lua")
    os.makedirs(os.path.dirname(modp))
    write_script(modp, 'return { version = "m1" }\n')
    script, d = scripted_daemon(ctx, """local mod = require("mod")
local on = {}
function on.default(ev, meta)
  local f = assert(io.open(os.getenv("GRWHD_TEST_OUT"), "a"))
  f:write(mod.version, "|", ev.contact.contactId, "\\n")
  f:close()
end
return on
""", workers=1)
    check(post_and_wait_version(d, "m-1") == "m1", "first module")
    write_script(modp, 'return { version = "m2" }\n')
    check(wait_for(lambda: "why=\"script changed\"" in d.stderr(), 5),
          "module change not noticed")
    check(post_and_wait_version(d, "m-2") == "m2", "changed module")


LIMITS = """local on = {}
local function mark(meta, what)
  local f = assert(io.open(os.getenv("GRWHD_TEST_OUT"), "a"))
  f:write(what, "|", meta.type, "|", meta.attempt, "\\n")
  f:close()
end
function on.contact_moved(ev, meta)
  if meta.attempt > 1 then return mark(meta, "retried") end
  while true do end
end
function on.contact_copied(ev, meta)
  if meta.attempt > 1 then return mark(meta, "retried") end
  while true do pcall(function() while true do end end) end
end
function on.contact_added(ev, meta)
  if meta.attempt > 1 then return mark(meta, "retried") end
  local t, s = {}, string.rep("x", 1 << 20)
  for i = 1, 1000 do t[i] = s .. i end
end
function on.default(ev, meta) mark(meta, "ok") end
return on
"""


def test_loops_and_memory_hogs_are_stopped(ctx):
    """Busy loops (even inside pcall) and memory hogs fail, then retry."""
    script, d = scripted_daemon(
        ctx, LIMITS, workers=1,
        args=["--handler-timeout", "0.5", "--lua-memory", "32M"])
    for t in ("contact_moved.json", "contact_copied.json",
              "contact_added.json", "contact_rejected.json"):
        expect_ok(d.post(fixture(t)), t)
    ok = wait_for(lambda: len(versions_seen(d)) >= 4, 15)
    rows = [tuple(v) for v in versions_seen(d)]
    check(ok, "not every event ran: %r" % rows)
    want = {("retried", "contact_moved"), ("retried", "contact_copied"),
            ("retried", "contact_added"), ("ok", "contact_rejected")}
    check(set(rows) == want, "outcomes %r" % rows)
    log = d.stderr()
    check(log.count("handler timed out after 0.5 s") >= 2,
          "timeouts not logged")
    check("not enough memory" in log, "memory failure not logged")
    check("why=\"memory limit\"" in log, "state not rebuilt after the hog")
    check(d.alive(), "daemon died")


def feed_script(ctx, text, payload, env=None, args=()):
    path = os.path.join(ctx.dir, "f.lua")
    with open(path, "w") as f:
        f.write(text)
    pay = os.path.join(ctx.dir, "payload.json")
    with open(pay, "w") as f:
        f.write(payload)
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([BIN, "feed", "--script", path, pay] + list(args),
                       capture_output=True, text=True, timeout=60, env=e,
                       cwd=ctx.dir)
    return r


def test_json_round_trip_in_a_handler(ctx):
    text = r"""
local on = {}
function on.default(ev, meta)
  local s = grwhd.json.encode(ev)
  local back = grwhd.json.decode(s)
  assert(grwhd.json.encode(back) == s, "not stable")
  assert(ev.n == 9007199254740993 and math.type(ev.n) == "integer")
  assert(ev.z == grwhd.null and ev.missing == nil)
  assert(ev.u == "\u{e9}\u{1F600}", "unicode")
  assert(#ev.arr == 3 and ev.arr[3][1] == 2)
  assert(grwhd.json.encode(ev.empty) == "[]")
  assert(grwhd.json.encode({}) == "{}")
  local ok, err = pcall(grwhd.json.decode, '{"a":}')
  assert(not ok and err:find("at byte 6"), err)
  print("roundtrip ok")
end
return on
"""
    payload = ('{"type":"t","n":9007199254740993,"z":null,'
               '"u":"\\u00e9\\ud83d\\ude00","arr":[1,"x",[2]],"empty":[]}')
    r = feed_script(ctx, text, payload)
    check(r.returncode == 0 and "roundtrip ok" in r.stderr,
          "rc %d out %r err %r" % (r.returncode, r.stdout, r.stderr[-500:]))


class _Peer(threading.Thread):
    """A small HTTP server on 127.0.0.1 that records what it was sent."""

    def __init__(self):
        import http.server
        peer = self
        self.got = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                peer.got.append((self.command, self.path,
                                 dict(self.headers), body))
                if self.path == "/slow":
                    time.sleep(2)
                elif self.path == "/slow1.5":
                    time.sleep(1.5)
                code = 503 if self.path == "/fail" else 201
                try:
                    self.send_response(code)
                    self.send_header("X-Seen",
                                     self.headers.get("X-Test", ""))
                    self.send_header("Set-Cookie", "a=1")
                    self.send_header("Set-Cookie", "b=2")
                    self.end_headers()
                    self.wfile.write(b"echo:" + body)
                except OSError:
                    pass    # the client gave up first (timeout tests)
            do_GET = do_POST = do_PUT = do_any

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        super().__init__(daemon=True)
        self.start()

    def run(self):
        self.srv.serve_forever(poll_interval=0.1)

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_http_request_against_a_local_server(ctx):
    peer = _Peer()
    closed = free_port()
    try:
        text = r"""
local base = os.getenv("PEER")
local on = {}
function on.default(ev, meta)
  local st, body, h = grwhd.http.request{url = base .. "/x", method = "PUT",
    body = "hello", headers = { ["X-Test"] = "t1" }}
  assert(st == 201, st)
  assert(body == "echo:hello", body)
  assert(h["x-seen"] == "t1" and h["set-cookie"] == "a=1, b=2")
  local st2 = grwhd.http.request{url = base .. "/fail"}
  assert(st2 == 503)
  local t0 = grwhd.now()
  local none, err = grwhd.http.request{url = base .. "/slow", timeout = 0.3}
  assert(none == nil and err:find("imeout"), err)
  assert(grwhd.now() - t0 < 1.5, "timeout not kept")
  local none2, err2 = grwhd.http.request{url = os.getenv("CLOSED")}
  assert(none2 == nil and err2:find("onnect"), err2)
  assert(not pcall(grwhd.http.request, {url = base, headers = {["A\nB"] = "x"}}))
  assert(not pcall(grwhd.http.request, {}))
  print("http ok")
end
return on
"""
        r = feed_script(ctx, text, '{"type":"t"}',
                        env={"PEER": "http://127.0.0.1:%d" % peer.port,
                             "CLOSED": "http://127.0.0.1:%d/" % closed})
        check(r.returncode == 0 and "http ok" in r.stderr,
              "rc %d out %r err %r" % (r.returncode, r.stdout,
                                       r.stderr[-600:]))
        check(any(g[0] == "PUT" and g[3] == b"hello" for g in peer.got),
              "server saw %r" % peer.got)
    finally:
        peer.stop()


def test_http_timeout_bounded_by_handler_time(ctx):
    """A request cannot outlive the handler's --handler-timeout."""
    peer = _Peer()
    try:
        script, d = scripted_daemon(ctx, """local on = {}
function on.default(ev, meta)
  local t0 = grwhd.now()
  local st, err = grwhd.http.request{url = os.getenv("PEER") .. "/slow",
                                     timeout = 30}
  local f = assert(io.open(os.getenv("GRWHD_TEST_OUT"), "a"))
  f:write(string.format("%.2f", grwhd.now() - t0), "|", tostring(st), "\\n")
  f:close()
end
return on
""", args=["--handler-timeout", "0.5"],
            env={"PEER": "http://127.0.0.1:%d" % peer.port})
        expect_ok(d.post(fixture("contact_added.json")), "post")
        check(wait_for(lambda: versions_seen(d), 10), "no call")
        took = float(versions_seen(d)[0][0])
        check(took < 1.0, "request waited %.2f s past a 0.5 s budget" % took)
    finally:
        peer.stop()


def test_http_makes_no_request_once_handler_time_is_spent(ctx):
    """With the handler's time spent, a request is not sent at all.

    Each call takes 1.5 s of a 2 s budget: the second is cut at 2 s, and
    the attempt fails there instead of running more 30 s requests.
    """
    peer = _Peer()
    try:
        text = r"""
local on = {}
function on.default(ev, meta)
  for i = 1, 4 do
    grwhd.http.request{url = os.getenv("PEER") .. "/slow1.5"}
  end
end
return on
"""
        r = feed_script(ctx, text, '{"type":"t"}',
                        env={"PEER": "http://127.0.0.1:%d" % peer.port},
                        args=["--handler-timeout", "2"])
        m = re.search(r"type=t ([\d.]+) ms", r.stdout)
        took = float(m.group(1)) / 1000 if m else -1
        sent = [g for g in peer.got if g[1] == "/slow1.5"]
        check(r.returncode == 1 and "handler timed out" in r.stdout,
              "attempt did not fail by its time limit: rc %d out %r err %r"
              % (r.returncode, r.stdout[-400:], r.stderr[-400:]))
        check(1.9 <= took < 2.6, "attempt ended after %.2f s, not ~2 s"
              % took)
        check(len(sent) == 2, "%d requests sent; 2 fit in the budget"
              % len(sent))
    finally:
        peer.stop()


def test_http_request_checks_its_arguments(ctx):
    """Bad arguments raise an error naming the field; nothing is sent."""
    peer = _Peer()
    try:
        text = r"""
local base = os.getenv("PEER")
local function fails(args, want)
  local ok, err = pcall(grwhd.http.request, args)
  assert(not ok, "accepted " .. tostring(args.url) .. " "
                 .. tostring(args.method))
  assert(err:find("grwhd.http.request: " .. want, 1, true), err)
end
local on = {}
function on.default(ev, meta)
  local m = base .. "/bad"
  fails({url = m, method = "GET /x HTTP/1.1\r\nX-A: b"}, "'method'")
  fails({url = m, method = "GET\n"}, "'method'")
  fails({url = m, method = "GE T"}, "'method'")
  fails({url = m, method = ""}, "'method'")
  fails({url = m, method = {}}, "'method' must be a string")
  local bare = base:gsub("^http://", "") .. "/bad"
  fails({url = bare}, "'url' must start with http:// or https://")
  fails({url = "ftp://127.0.0.1/bad"}, "'url' must start with")
  fails({url = "file:///etc/passwd"}, "'url' must start with")
  fails({url = true}, "'url' must be a string")
  fails({}, "'url' is required")
  fails({url = m, body = {}}, "'body' must be a string")
  fails({url = m, headers = "x"}, "'headers' must be a table")
  fails({url = m, timeout = -1}, "'timeout' must be a positive number")
  fails({url = m, timeout = "soon"}, "'timeout' must be a positive number")
  local ok, err = pcall(grwhd.http.request, m)
  assert(not ok and err:find("grwhd.http.request: expects a table", 1,
                             true), err)
  assert(grwhd.http.request{url = "HTTP://" .. base:sub(8) .. "/upper",
                            method = "post", body = "a=1"} == 201)
  assert(grwhd.http.request{url = base .. "/typed", body = "{}",
    headers = {["content-type"] = "application/json"}} == 201)
  io.stdout:write("args ok\n")
end
return on
"""
        r = feed_script(ctx, text, '{"type":"t"}',
                        env={"PEER": "http://127.0.0.1:%d" % peer.port})
        check(r.returncode == 0 and "args ok" in r.stdout,
              "rc %d out %r err %r" % (r.returncode, r.stdout[-600:],
                                       r.stderr[-300:]))
        paths = [g[1] for g in peer.got]
        check("/bad" not in paths, "a refused request was sent: %r" % paths)

        def ctype(path):
            for g in peer.got:
                if g[1] == path:
                    return g[0], {k.lower(): v for k, v
                                  in g[2].items()}.get("content-type")
            raise TestFailure("%s not received: %r" % (path, paths))
        check(ctype("/upper") == ("POST", None),
              "method/type of a body without Content-Type: %r"
              % (ctype("/upper"),))
        check(ctype("/typed") == ("POST", "application/json"),
              "a given Content-Type: %r" % (ctype("/typed"),))
    finally:
        peer.stop()


def test_serve_warns_about_handler_names_and_unhandled_types(ctx):
    """A mistyped handler name must not lose events without a word."""
    p = os.path.join(ctx.dir, "mis.lua")
    with open(p, "w") as f:
        f.write("local on = {}\nfunction on.contact_subscribed() end\n"
                "function on.contact_added() end\nreturn on\n")
    d = ctx.daemon(args=["--script", p])
    check(wait_for(lambda: "did you mean 'contact_added'" in d.stderr(), 5),
          "no warning about contact_subscribed at start: %r"
          % d.stderr()[-500:])
    check(d.stderr().count("did you mean") == 1,
          "the start warning is repeated per worker: %r" % d.stderr())
    for n in range(3):
        expect_ok(d.post(event_with_id(fixture("contact_moved.json"),
                                       "mv-%d" % n)), "moved %d" % n)
    expect_ok(d.post(fixture("contact_added.json")), "added")
    pat = "no handler and no default for this type"
    check(wait_for(lambda: pat in d.stderr(), 5),
          "no warning for an event nothing handles: %r" % d.stderr()[-500:])
    lines = [l for l in d.stderr().splitlines() if pat in l]
    check(all("type=contact_moved" in l for l in lines) and
          1 <= len(lines) <= 2,
          "want one warning per worker at most: %r" % lines)
    d.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: d.stderr().count("did you mean") == 2, 5),
          "a reload does not repeat the warning")


def test_check_warns_and_new_writes_a_starter(ctx):
    p = os.path.join(ctx.dir, "w.lua")
    with open(p, "w") as f:
        f.write("local on = {}\nfunction on.contact_subscribed() end\n"
                "function on.contact_opend_message() end\nreturn on\n")
    rc, out, err = grwhd_cli("check", "--script", p)
    check(rc == 0, "check rc %d" % rc)
    rc, _, err2 = grwhd_cli("check", "--strict", "--script", p)
    check(rc == 1 and "--strict" in err2, "check --strict: %d %r"
          % (rc, err2[-200:]))
    # Names are the script's: control bytes must not reach the terminal.
    q = os.path.join(ctx.dir, "ctl.lua")
    with open(q, "w") as f:
        f.write('return { ["a\\nlevel=error\\27[31m"] = function() end }\n')
    rc, out, err2 = grwhd_cli("check", "--script", q)
    check(rc == 0 and "\x1b" not in out + err2 and
          out.count("\n") == 1 and "a\\x0alevel" in out,
          "control bytes in check's output: %r %r" % (out, err2))
    check("'contact_subscribed'" in err and "'contact_added'" in err,
          "no suggestion for contact_subscribed: %r" % err)
    check("'contact_opened_message'" in err, "no typo suggestion: %r" % err)
    e = os.path.join(ctx.dir, "e.lua")
    with open(e, "w") as f:
        f.write("return {}\n")
    rc, out, err = grwhd_cli("check", "--script", e)
    check(rc == 0 and "no handler and no default" in err,
          "empty script: %d %r" % (rc, err))
    with open(e, "w") as f:
        f.write('return { contact_added = "oops", note = 5 }\n')
    rc, out, err = grwhd_cli("check", "--script", e)
    check(rc == 0 and "'contact_added' is a string, not a function" in err
          and "'note'" not in err, "non-function handler: %d %r" % (rc, err))
    s = os.path.join(ctx.dir, "starter.lua")
    rc, out, _ = grwhd_cli("new", s)
    check(rc == 0 and os.path.exists(s), "new: %d %r" % (rc, out))
    rc, out, err = grwhd_cli("check", "--strict", "--script", s)
    check(rc == 0 and "handles: default" in out and "warning" not in err,
          "starter does not check clean: %r %r" % (out, err))
    with open(s) as f:
        text = f.read()
    for t in HANDLED:
        if t != "default":
            check("on.%s(" % t in text, "starter lacks %s" % t)
    rc, _, err = grwhd_cli("new", s)
    check(rc == 1 and "not overwritten" in err, "new over a file: %r" % err)
    p = subprocess.run([BIN, "new", "-"], capture_output=True, text=True,
                       timeout=20, cwd=ctx.dir)
    check(p.returncode == 0 and p.stdout == text,
          "new - does not print the starter: %d %r" % (p.returncode,
                                                       p.stdout[:80]))
    check(not os.path.exists(os.path.join(ctx.dir, "-")),
          "new - wrote a file named '-'")
    # Every commented function, once uncommented, runs on its fixture and
    # on an event whose contact is JSON null.
    live = os.path.join(ctx.dir, "live.lua")
    with open(live, "w") as f:
        f.write(re.sub(r"(?m)^--   ", "  ",
                       re.sub(r"(?m)^-- (function on\.|end)", r"\1", text)))
    nulls = os.path.join(ctx.dir, "nulls.json")
    with open(nulls, "w") as f:
        json.dump([{"type": t, "contact": None} for t in sorted(HANDLED)
                   if t != "default"], f)
    payloads = sorted(os.path.join(FIXTURES, n) for n in os.listdir(FIXTURES)
                      if n.endswith(".json"))
    rc, out, err = grwhd_cli("feed", "--script", live, nulls, *payloads)
    check(rc == 0 and "FAIL" not in out and out.count("\nok") >= 20,
          "the uncommented starter fails: %d %r %r" % (rc, out[-400:],
                                                      err[-400:]))


def test_feed_reports_each_outcome(ctx):
    text = """local on = {}
function on.contact_added(ev) error("nope") end
function on.contact_moved(ev) end
return on
"""
    path = os.path.join(ctx.dir, "f.lua")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([BIN, "feed", "--script", path,
                        os.path.join(FIXTURES, "batch.json")],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1, "a failing handler must fail feed: %d"
          % r.returncode)
    lines = [l for l in r.stdout.splitlines() if l[:4] in ("ok  ", "skip",
                                                            "FAIL")]
    check(len(lines) == 5, "one line per event: %r" % r.stdout)
    check(re.search(r"^FAIL .*#3 type=contact_added [\d.]+ ms", r.stdout,
                    re.M) and "nope" in r.stdout, "failure line %r"
          % r.stdout)
    check(re.search(r"^ok   .*#4 type=contact_moved [\d.]+ ms", r.stdout,
                    re.M), "ok line %r" % r.stdout)
    check(re.search(r"^skip .*#1 type=contact_opened_message", r.stdout,
                    re.M), "skip line %r" % r.stdout)
    r = subprocess.run([BIN, "feed", "--script", path, "-"],
                       input="not json", capture_output=True, text=True,
                       timeout=30)
    check(r.returncode == 1 and "not valid JSON" in r.stderr,
          "bad payload on stdin: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([BIN, "feed", "--script", path],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 2, "feed without payloads: %d" % r.returncode)


EXAMPLES = os.path.join(REPO, "examples")


def test_examples_run(ctx):
    """Each example does its job against local files and a local server."""
    peer = _Peer()
    try:
        # forward_http: the subscriber arrives as JSON; a 503 is retried.
        env = {"FORWARD_URL": "http://127.0.0.1:%d/sub" % peer.port}
        d = ctx.daemon(args=["--script",
                             os.path.join(EXAMPLES, "forward_http.lua")],
                       env=env)
        expect_ok(d.post(fixture("contact_added.json")), "subscriber")
        check(wait_for(lambda: peer.got, 10), "nothing forwarded")
        method, path, hdrs, body = peer.got[0]
        doc = json.loads(body)
        check(method == "POST" and path == "/sub" and
              doc["contact_id"] == "Hn5Wc" and doc["list"] ==
              "demo_list_alpha" and "Idempotency-Key" in hdrs,
              "forwarded %r %r" % (path, doc))
        d.stop()
        env = {"FORWARD_URL": "http://127.0.0.1:%d/fail" % peer.port}
        d = ctx.daemon(args=["--script",
                             os.path.join(EXAMPLES, "forward_http.lua")],
                       env=env)
        expect_ok(d.post(event_with_id(fixture("contact_added.json"),
                                       "ex-f")), "to a failing endpoint")
        check(wait_for(lambda: "forward got HTTP 503" in d.stderr(), 10),
              "a 503 from the endpoint did not fail the attempt")
        d.stop()

        # unsubscribes_csv: one file per list.
        udir = os.path.join(ctx.dir, "unsub")
        os.mkdir(udir)
        d = ctx.daemon(args=["--script",
                             os.path.join(EXAMPLES, "unsubscribes_csv.lua")],
                       env={"UNSUB_DIR": udir})
        expect_ok(d.post(fixture("contact_removed_link.json")), "unsub")
        expect_ok(d.post(fixture("contact_removed_bounce.json")), "bounce")
        f = os.path.join(udir, "demo_list_alpha.csv")
        check(wait_for(lambda: os.path.exists(f) and
                       len(open(f).read().splitlines()) == 3, 10),
              "csv: %r" % (os.listdir(udir),))
        lines = open(f).read().splitlines()
        check(lines[0] == "occurred_at,contact_id,email,reason" and
              lines[1].endswith(",link") and lines[2].endswith(",bounce"),
              "csv lines %r" % lines)
        d.stop()
        # A folder that is not there fails the load, not every event.
        r = subprocess.run([BIN, "check", "--script",
                            os.path.join(EXAMPLES, "unsubscribes_csv.lua")],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ,
                                    UNSUB_DIR=os.path.join(udir, "none")))
        check(r.returncode == 1 and "UNSUB_DIR must be a folder" in r.stderr,
              "a missing UNSUB_DIR: %d %r" % (r.returncode, r.stderr[-300:]))

        # router: a module beside the handler, found by require.
        d = ctx.daemon(args=["--script", os.path.join(EXAMPLES, "router",
                                                      "handler.lua")])
        expect_ok(d.post(fixture("batch.json")), "batch")
        check(wait_for(lambda: d.stderr().count("msg=membership") == 3 and
                       d.stderr().count("msg=engagement") == 2, 10),
              "router log: %r" % d.stderr()[-600:])

        # subscribers_csv and handler.lua, through feed.
        csv = os.path.join(ctx.dir, "subs.csv")
        r = subprocess.run([BIN, "feed", "--script",
                            os.path.join(EXAMPLES, "subscribers_csv.lua"),
                            os.path.join(FIXTURES, "contact_added.json")],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, SUBSCRIBERS_CSV=csv))
        check(r.returncode == 0 and "Hn5Wc" in open(csv).read(),
              "subscribers_csv: %r" % r.stderr[-300:])
        r = subprocess.run([BIN, "feed", "--script",
                            os.path.join(EXAMPLES, "handler.lua")] +
                           [os.path.join(FIXTURES, n) for n in
                            fixture_names()],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and "skip" not in r.stdout,
              "handler.lua: %r" % r.stdout[-300:])
        check("@" not in r.stderr, "an e-mail address at info level")
    finally:
        peer.stop()


# ---------------------------------------------------------------------------
# Operations: admin listener, metrics, reloads, logs, options, packaging.

def admin_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def metric(text, name, labels=""):
    """The value of one series in Prometheus text, or None."""
    want = name + ("{%s}" % labels if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


def test_metrics_follow_requests_and_results(ctx):
    port = free_port()
    d = ctx.daemon(args=["--admin", "127.0.0.1:%d" % port,
                         "--max-attempts", "2"],
                   env={"GRWHD_TEST_FAIL_TYPE": "contact_moved"})
    st, body = admin_get(port, "/healthz")
    check(st == 200, "healthz %d" % st)
    st, body = admin_get(port, "/readyz")
    check(st == 200, "readyz %d %s" % (st, body))
    st, m0 = admin_get(port, "/metrics")
    check(st == 200 and metric(m0, "grwhd_requests_total", 'code="200"')
          == 0, "fresh metrics: %r" % m0[:300])
    batch = fixture("batch.json")
    wid = str(uuid.uuid4())
    expect_ok(d.post(batch, headers={"X-Webhook-ID": wid}), "batch")
    expect_ok(d.post(batch, headers={"X-Webhook-ID": wid}), "repeat")
    st, _, _ = d.post(batch, url=d.url(secret="wrong"))
    check(st == 403, "wrong secret %d" % st)
    d.wait_calls(4)

    def settled():
        _, m = admin_get(port, "/metrics")
        dead = metric(m, "grwhd_events_handled_total",
                      'type="contact_moved",result="dead"')
        return m if dead == 1 else None
    m = wait_for(settled, 10)
    check(m, "the failing event never went dead in the metrics")
    want = [
        ("grwhd_requests_total", 'code="200"', 2),
        ("grwhd_requests_total", 'code="403"', 1),
        ("grwhd_events_received_total", 'type="contact_added"', 1),
        ("grwhd_events_received_total", 'type="contact_moved"', 1),
        ("grwhd_events_handled_total",
         'type="contact_added",result="ok"', 1),
        ("grwhd_events_handled_total",
         'type="contact_moved",result="retry"', 1),
        ("grwhd_dedupe_hits_total", "", 5),
        ("grwhd_spool_dead", "", 1),
        ("grwhd_spool_backlog", "", 0),
        ("grwhd_ack_latency_seconds_count", "", 2),
        ("grwhd_handler_latency_seconds_count", "", 6),
    ]
    for name, labels, value in want:
        got = metric(m, name, labels)
        check(got == value, "%s{%s} = %r, want %r" % (name, labels, got,
                                                     value))
    check(metric(m, "grwhd_open_connections") is not None, "no gauge")
    # A NULL name printed with %s: a series no scraper can parse.
    for text in (m0, m):
        check("(null)" not in text, "metrics show (null): %r"
              % [l for l in text.splitlines() if "(null)" in l][:3])
    d.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: metric(admin_get(port, "/metrics")[1],
                                  "grwhd_script_reloads_total",
                                  'result="ok"') == 1, 5),
          "script reload not counted")
    st, _ = admin_get(port, "/nope")
    check(st == 404, "unknown admin path %d" % st)


def test_readyz_503_while_spool_cannot_write(ctx):
    disk = SmallDisk(ctx)
    try:
        port = free_port()
        d = ctx.daemon(spool=os.path.join(disk.dir, "spool.db"),
                       args=["--admin", "127.0.0.1:%d" % port])
        disk.fill()
        for _ in range(20):
            if d.post(big_batch("rz"))[0] == 503:
                break
        st, body = admin_get(port, "/readyz")
        check(st == 503 and "spool" in body, "readyz on a full disk: %d %s"
              % (st, body))
        # A balancer sends nothing while readyz says 503: the daemon must
        # find out by itself that the spool takes writes again.
        disk.free()
        check(wait_for(lambda: admin_get(port, "/readyz")[0] == 200, 5),
              "readyz still %r 5 s after space came back, with no request"
              % (admin_get(port, "/readyz"),))
        check("no transaction is active" not in d.stderr(),
              "the log hides why the write failed: %r"
              % [l for l in d.stderr().splitlines() if "failed" in l][:2])
        expect_ok(d.post(event_with_id(fixture("contact_added.json"),
                                       "rz-after")), "after space")
        d.stop()
    finally:
        disk.unmount()


def make_pair(dir_, name):
    cert = os.path.join(dir_, name + ".pem")
    key = os.path.join(dir_, name + ".key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=" + name, "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=30)
    return cert, key


def peer_cn(port):
    ctx_ = ssl.create_default_context()
    ctx_.check_hostname = False
    ctx_.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 5) as raw:
        with ctx_.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject"],
                         input=pem, capture_output=True, text=True)
    return out.stdout.strip().split("=")[-1].strip()


def test_tls_reload_keeps_old_connections(ctx):
    a_cert, a_key = make_pair(ctx.dir, "pairA")
    b_cert, b_key = make_pair(ctx.dir, "pairB")
    cert = os.path.join(ctx.dir, "cert.pem")
    key = os.path.join(ctx.dir, "key.pem")
    shutil.copy(a_cert, cert)
    shutil.copy(a_key, key)
    port = free_port()
    d = ctx.daemon(args=["--tls-cert", cert, "--tls-key", key,
                         "--admin", "127.0.0.1:%d" % port])
    check(peer_cn(d.port) == "pairA", "first pair")
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    old = http.client.HTTPSConnection("127.0.0.1", d.port, context=insecure,
                                      timeout=10)
    ev = event_with_id(fixture("contact_added.json"), "tls-1")
    expect_ok(d.post(ev, conn=old), "on the old connection")
    shutil.copy(b_cert, cert)
    shutil.copy(b_key, key)
    d.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: "TLS certificate reloaded" in d.stderr(), 5),
          "no reload logged")
    check(peer_cn(d.port) == "pairB", "a new connection gets the new pair")
    expect_ok(d.post(event_with_id(ev, "tls-2"), conn=old),
              "the old keep-alive connection after the reload")
    shutil.copy(a_key, key)         # a key of another certificate
    d.proc.send_signal(signal.SIGHUP)
    check(wait_for(lambda: "TLS reload failed" in d.stderr(), 5),
          "a mismatched pair was not refused")
    check("does not belong to the certificate" in d.stderr(),
          "the refusal does not say why: %r" % [
              l for l in d.stderr().splitlines() if "TLS reload" in l])
    check(peer_cn(d.port) == "pairB", "the good pair stays after a bad one")
    old.close()
    # Handshakes under way while pairs are replaced, and connections that
    # close afterwards, must find every pair they took still there.
    stop = threading.Event()
    statuses = []

    def handshakes():
        while not stop.is_set():
            c = http.client.HTTPSConnection("127.0.0.1", d.port,
                                            context=insecure, timeout=10)
            statuses.append(d.post(event_with_id(ev, "tls-r%d"
                                                 % len(statuses)),
                                   conn=c)[0])
            c.close()

    t = threading.Thread(target=handshakes)
    t.start()
    try:
        for i in range(20):
            pair = (a_cert, a_key) if i % 2 == 0 else (b_cert, b_key)
            shutil.copy(pair[0], cert)
            shutil.copy(pair[1], key)
            d.proc.send_signal(signal.SIGHUP)
            check(wait_for(lambda: d.stderr().count(
                "TLS certificate reloaded") > i + 1, 5),
                "reload %d not logged" % (i + 2))
    finally:
        stop.set()
        t.join()
    check(len(statuses) >= 10 and set(statuses) == {200},
          "%d requests during reloads: %r" % (len(statuses),
                                               sorted(set(statuses))))
    check(d.proc.poll() is None, "the daemon died during reloads")
    check(peer_cn(d.port) == "pairB", "the last pair loaded is served")
    # Every connection has closed: only the current pair is left.
    pairs = lambda: metric(admin_get(port, "/metrics")[1], "grwhd_tls_pairs")
    check(wait_for(lambda: pairs() == 1, 5),
          "%r TLS pairs in memory after the connections closed" % pairs())
    check("not tied to their sockets" not in d.stderr(),
          "sessions not tracked: %r" % d.stderr()[-300:])


def test_json_log_lines_parse(ctx):
    d = ctx.daemon(args=["--log-format", "json"],
                   env={"GRWHD_TEST_FAIL_TYPE": "contact_moved"})
    expect_ok(d.post(fixture("batch.json")), "batch")
    d.post(None, raw=b"{")
    d.wait_calls(4)
    check(wait_for(lambda: "will retry" in d.stderr(), 5), "no failure line")
    d.stop()
    lines = d.stderr().splitlines()
    check(len(lines) >= 6, "few lines: %r" % lines)
    msgs = set()
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            raise TestFailure("not JSON: %r" % line[:200])
        check(isinstance(doc, dict) and {"ts", "level", "msg"} <= set(doc),
              "line without ts/level/msg: %r" % line[:200])
        msgs.add(doc["msg"])
    for m in ("listening", "request", "handler failed, will retry",
              "shutting down"):
        check(m in msgs, "no %r line among %r" % (m, sorted(msgs)))
    # A bad option is reported as a JSON line too, however JSON was asked.
    for args, env in ((["--log-format", "json", "--workers", "0"], {}),
                      (["--tls-cert", "c.pem"], {"GRWHD_LOG_FORMAT": "json"})):
        p = subprocess.run([BIN, "--script", "x.lua"] + args,
                           capture_output=True, text=True, timeout=20,
                           env=dict(os.environ, **env))
        try:
            doc = json.loads(p.stderr)
        except ValueError:
            raise TestFailure("option error not JSON: %r" % p.stderr)
        check(p.returncode == 2 and doc.get("level") == "error",
              "option error: %d %r" % (p.returncode, doc))


def logfmt_pairs(line):
    """(key, value) pairs of one logfmt line, quoted values unescaped."""
    pairs, i = [], 0
    key = re.compile(r'\s*([^\s=]+)=')
    while i < len(line):
        m = key.match(line, i)
        if not m:
            return None
        i = m.end()
        if i < len(line) and line[i] == '"':
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            # The log's escapes are JSON's.
            value = json.loads(line[i:j + 1])
            i = j + 1
        else:
            j = i
            while j < len(line) and not line[j].isspace():
                j += 1
            value = line[i:j]
            i = j
        pairs.append((m.group(1), value))
    return pairs


def log_records(text, fmt):
    """Each line of a log as a list of pairs; every key at most once."""
    records = []
    for line in text.splitlines():
        if fmt == "json":
            try:
                pairs = json.loads(line, object_pairs_hook=list)
            except ValueError:
                raise TestFailure("not JSON: %r" % line[:200])
        else:
            pairs = logfmt_pairs(line)
            check(pairs is not None, "not logfmt: %r" % line[:200])
        keys = [k for k, _ in pairs]
        check(len(keys) == len(set(keys)) and keys[:3] == ["ts", "level",
                                                           "msg"],
              "line with repeated or misplaced keys: %r" % line[:300])
        check(len(line.encode()) < 4096, "line of %d bytes" % len(line))
        records.append(dict(pairs))
    return records


def test_script_log_with_many_fields_is_cut_and_says_so(ctx):
    """Thousands of fields (colliding names among them) give one bounded
    line that says it was cut, in every format."""
    text = r"""
local on = {}
function on.default(ev, meta)
  local f = {}
  for i = 1, 3000 do
    f["x" .. string.char(1, i % 200 + 1) .. string.rep("y", i // 200)] = i
  end
  grwhd.log.info("many", f)
  local g = {}
  for i = 1, 300 do g[string.format("k%03d", i)] = i end
  grwhd.log.info("some", g)
end
return on
"""
    for fmt in ("json", "text"):
        r = feed_script(ctx, text, '{"type":"t"}',
                        args=["--log-format", fmt, "--handler-timeout", "2"])
        check(r.returncode == 0, "%s: rc %d err %r" % (fmt, r.returncode,
                                                      r.stderr[-300:]))
        recs = log_records(r.stderr, fmt)
        for msg in ("many", "some"):
            m = [x for x in recs if x["msg"] == msg]
            check(len(m) == 1 and m[0].get("truncated") in (True, "true"),
                  "%s %s: not marked as cut: %r" % (fmt, msg, m))
        some = [x for x in recs if x["msg"] == "some"][0]
        ks = sorted(k for k in some if k.startswith("k"))
        check(ks and ks == ["k%03d" % i for i in range(1, len(ks) + 1)],
              "%s: fields not whole and in order: %r" % (fmt, ks[-3:]))


def test_script_log_fields_keep_the_daemons_names(ctx):
    """Fields named like the daemon's own are renamed, and a long message
    is cut so that the event's ids stay in its line."""
    text = r"""
local on = {}
function on.default(ev, meta)
  grwhd.log.info("m", { level = "x", msg = "y", ts = "z", spool_id = "s",
    attempt = "a", ["field.level"] = "f", ["a b"] = 1, a_b = 2, ok = "k",
    f = 1.5, t = true, no = false, inf = 1/0, big = 2^53 })
  grwhd.log.warn(string.rep('long "text"\n', 600), { after = "v" })
  grwhd.log.warn(string.rep("\1", 3000))
end
return on
"""
    for fmt in ("json", "text"):
        r = feed_script(ctx, text, '{"type":"t"}',
                        args=["--log-format", fmt])
        check(r.returncode == 0, "%s: rc %d out %r err %r"
              % (fmt, r.returncode, r.stdout, r.stderr[-300:]))
        recs = log_records(r.stderr, fmt)
        m = [x for x in recs if x["msg"] == "m"]
        check(len(m) == 1, "%s: no line for msg m: %r" % (fmt, recs))
        want = {"level": "info", "msg": "m", "spool_id": 1, "attempt": 1,
                "field.level": "f", "field.field.level": "x",
                "field.msg": "y", "field.ts": "z", "field.spool_id": "s",
                "field.attempt": "a", "a_b": 1, "field.a_b": 2,
                "ok": "k", "f": 1.5, "t": True, "no": False, "inf": "inf",
                "big": 9.007199254741e+15}
        got = {k: v for k, v in m[0].items() if k != "ts"}
        if fmt == "text":
            want = {k: json.dumps(v) if isinstance(v, bool) else
                    "9.007199254741e+15" if k == "big" else str(v)
                    for k, v in want.items()}
        check(got == want, "%s: fields %r, want %r" % (fmt, got, want))
        long = [x for x in recs if x["level"] == "warn"]
        check(len(long) == 2, "%s: long lines %r" % (fmt, long))
        for x in long:
            check(str(x.get("spool_id")) == "1" and
                  str(x.get("attempt")) == "1",
                  "%s: a long message pushed out the ids: %r"
                  % (fmt, sorted(x)))
            check(x["msg"].endswith("...") and len(x["msg"]) > 500,
                  "%s: message not cut with an ellipsis: %r"
                  % (fmt, x["msg"][-40:]))
        check(long[0]["msg"].startswith('long "text"\nlong'),
              "%s: message %r" % (fmt, long[0]["msg"][:40]))


def test_print_writes_log_lines(ctx):
    """print() in a script writes an info line, with the event's ids."""
    text = r"""
print("loading", 1)
local on = {}
function on.default(ev, meta)
  print("from handler", 42, nil, true,
        setmetatable({}, { __tostring = function() return "obj" end }))
end
return on
"""
    r = feed_script(ctx, text, '{"type":"t"}',
                    args=["--log-format", "json"])
    check(r.returncode == 0 and "from handler" not in r.stdout
          and "loading" not in r.stdout,
          "print went to stdout: rc %d out %r" % (r.returncode, r.stdout))
    recs = log_records(r.stderr, "json")
    got = [x for x in recs if x["msg"].startswith("from handler")]
    check(len(got) == 1 and got[0]["msg"] == "from handler\t42\tnil\ttrue\tobj"
          and got[0]["level"] == "info" and got[0].get("spool_id") == 1
          and got[0].get("attempt") == 1, "print line: %r" % recs)
    check(any(x["msg"] == "loading\t1" and "spool_id" not in x
              for x in recs), "print at load: %r" % recs)
    r = feed_script(ctx, text, '{"type":"t"}', args=["--log-level", "warn"])
    check(r.returncode == 0 and "from handler" not in r.stdout + r.stderr,
          "print below --log-level: %r %r" % (r.stdout, r.stderr))

    # The daemon's workers: the line is a logfmt record like any other.
    script, d = scripted_daemon(ctx, text.replace("from handler",
                                                  "from worker"))
    expect_ok(d.post(fixture("contact_added.json")), "post")
    check(wait_for(lambda: "from worker" in d.stderr(), 10),
          "no print output: %r" % d.stderr()[-300:])
    d.stop()
    lines = [logfmt_pairs(l) for l in d.stderr().splitlines()
             if "from worker" in l]
    check(len(lines) == 1 and lines[0] is not None, "lines %r" % lines)
    rec = dict(lines[0])
    check(rec.get("level") == "info" and rec.get("spool_id") and
          rec.get("attempt") == "1" and
          rec.get("msg") == "from worker\t42\tnil\ttrue\tobj",
          "worker print line: %r" % rec)


def test_options_from_environment_and_config_file(ctx):
    conf = os.path.join(ctx.dir, "grwhd.conf")
    with open(conf, "w") as f:
        f.write("# grwhd options\nmax-body = 1K\nsecret-param = token\n"
                "path = /from-file\n")
    d = ctx.daemon(args=["--config", conf],
                   env={"GRWHD_PATH": "/from-env"})
    small = {"type": "contact_added"}
    big = {"type": "contact_added", "pad": "x" * 1500}
    u = d.url(path="/from-env", param="token")
    expect_ok(d.post(small, url=u), "param and path from file and env")
    st, _, _ = d.post(big, url=u)
    check(st == 413, "max-body from the file: %d" % st)
    st, _, _ = d.post(small, url=d.url(path="/from-file", param="token"))
    check(st == 404, "the environment did not override the file: %d" % st)
    st, _, _ = d.post(small, url=d.url(path="/from-env"))
    check(st == 403, "secret-param from the file ignored: %d" % st)
    d.stop()
    d2 = ctx.daemon(args=["--config", conf, "--max-body", "4K"],
                    env={"GRWHD_PATH": "/from-env"})
    expect_ok(d2.post(big, url=d2.url(path="/from-env", param="token")),
              "the command line overrides the file")
    bad = os.path.join(ctx.dir, "bad.conf")
    with open(bad, "w") as f:
        f.write("workers = lots\n")
    rc, _, err = grwhd_cli("--config", bad, "--script", HANDLER)
    check(rc == 2 and "bad.conf:1" in err, "bad config: %d %r" % (rc, err))
    # A secret variable set but empty (a drop-in's unset ${X}) must not
    # leave the daemon open; other empty variables count as unset.
    for var in ("GRWHD_SECRET", "GRWHD_SECRET_FILE"):
        p = subprocess.run([BIN, "--script", HANDLER], capture_output=True,
                           text=True, timeout=20,
                           env=dict(os.environ, **{var: ""}))
        check(p.returncode == 2 and "set but empty" in p.stderr,
              "%s empty: %d %r" % (var, p.returncode, p.stderr[-200:]))


def test_make_install_lays_out_files(ctx):
    dest = os.path.join(ctx.dir, "dest")
    # Not the settings of a make that runs these tests (make sanitize
    # passes BUILD and CFLAGS down): they would put a sanitizer build in
    # place of ./grwhd.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES",
                        "BUILD", "CFLAGS", "WERROR")}
    r = subprocess.run(["make", "-s", "-C", REPO, "install",
                        "DESTDIR=" + dest, "PREFIX=/usr"],
                       capture_output=True, text=True, timeout=600, env=env)
    check(r.returncode == 0, "make install: %s" % r.stderr[-500:])
    for f in ("usr/bin/grwhd", "usr/share/man/man1/grwhd.1",
              "usr/share/grwhd/examples/handler.lua",
              "usr/share/grwhd/examples/router/routes.lua",
              "usr/share/doc/grwhd/lua.md",
              "usr/lib/systemd/system/grwhd.service"):
        check(os.path.isfile(os.path.join(dest, f)), "missing " + f)
    check(os.access(os.path.join(dest, "usr/bin/grwhd"), os.X_OK),
          "binary not executable")
    unit = open(os.path.join(dest, "usr/lib/systemd/system/grwhd.service"))
    text = unit.read()
    unit.close()
    check("ExecStart=/usr/bin/grwhd" in text and "ExecReload=" in text and
          "DynamicUser=yes" in text and "StateDirectory=grwhd" in text,
          "unit %r" % text[:300])
    if shutil.which("systemd-analyze"):
        copy = os.path.join(ctx.dir, "grwhd.service")
        with open(copy, "w") as f:
            f.write(text.replace("/usr/bin/grwhd",
                                 os.path.join(dest, "usr/bin/grwhd")))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", copy],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and not r.stderr.strip(),
              "systemd-analyze verify: %s" % r.stderr[-500:])


def test_user_drops_root(ctx):
    if os.geteuid() != 0:
        raise TestSkip("not root")
    try:
        import pwd
        pwd.getpwnam("nobody")
    except KeyError:
        raise TestSkip("no user nobody")
    work = os.path.join(ctx.dir, "u")
    os.mkdir(work)
    os.chmod(work, 0o777)
    # The run's folders are private (mkdtemp); nobody must reach work/.
    os.chmod(ctx.dir, 0o755)
    os.chmod(os.path.dirname(ctx.dir), 0o755)
    out = os.path.join(work, "out.txt")
    d = ctx.daemon(args=["--user", "nobody"], out=out,
                   spool=os.path.join(work, "spool.db"))
    expect_ok(d.post(event_with_id(fixture("contact_added.json"), "u-1")),
              "as nobody")
    d.wait_calls(1)
    with open("/proc/%d/status" % d.proc.pid) as f:
        uids = [l.split()[1:] for l in f if l.startswith("Uid:")][0]
    check(set(uids) == {"65534"}, "uids %r" % uids)
    check(os.stat(out).st_uid == 65534, "handler did not run as nobody")


# ---------------------------------------------------------------------------
# Found by trying grwhd as a new user would.

def test_os_exit_fails_the_event_not_the_daemon(ctx):
    text = """local on = {}
function on.default(ev, meta) os.exit(3) end
return on
"""
    r = feed_script(ctx, text, '{"type":"t"}')
    check(r.returncode == 1 and "os.exit is disabled" in r.stdout,
          "feed: rc %d %r" % (r.returncode, r.stdout[-300:]))
    script, d = scripted_daemon(ctx, text, args=["--max-attempts", "1"])
    expect_ok(d.post(fixture("contact_added.json")), "event calling os.exit")
    check(wait_for(lambda: "event is dead" in d.stderr(), 5),
          "no dead-letter line")
    check(d.alive(), "os.exit in a handler stopped the daemon")


def test_secret_in_a_mistyped_path_is_redacted(ctx):
    d = ctx.daemon()
    # In the path, as a bare query name, or with its "=" escaped.
    # ... in any case, as a name with a value, or in an absolute URL's
    # password.
    paths = ("/wh/secret=%s" % SECRET, "/wh/secret=%s/x" % SECRET,
             "/wh?%s" % SECRET, "/wh?secret%%3D%s" % SECRET,
             "/wh?x=1&%s=" % SECRET[:-1] + "%2B", "/wh/SECRET=%s" % SECRET,
             "/wh?%s=1" % SECRET, "http://u:%s@127.0.0.1/wh" % SECRET,
             "/wh?action=subscribe%%26secret%%3D%s" % SECRET)
    for path in paths:
        st, _, _ = d.request("POST", path, b"{}")
        check(st == 403, "%s: %d" % (path, st))
    st, _, _ = d.request("POST", "/wh/Secret=%s/x?secret=%s"
                         % (SECRET, SECRET), b"{}")
    check(st == 200, "secret in path and query: %d" % st)
    st, _, _ = d.request("GET", "/cb?action=open&%s=&secret=%s"
                         % (SECRET, SECRET))
    check(st == 200, "callback with the secret as a name too: %d" % st)
    d.wait_calls(2)
    check(wait_for(lambda: d.stderr().count("status=") >= len(paths) + 2, 3),
          "no access lines")
    check(SECRET not in d.stderr(), "the secret reached the log: %r"
          % [l for l in d.stderr().splitlines() if SECRET in l])
    check("secret=REDACTED/x" in d.stderr(), "path not kept around it")
    check(re.search(r'path="?/wh"? status=403', d.stderr()),
          "absolute URL not logged by its path")
    d.stop()
    db = sqlite3.connect(d.spool)
    stored = [j for (j,) in db.execute("SELECT json FROM events")]
    db.close()
    check(not any(SECRET in j for j in stored),
          "the secret reached the spool: %r" % stored)


def test_access_line_says_why_and_which_callback(ctx):
    d = ctx.daemon()
    st, _, _ = d.post(None, raw=b'{"type": tru}')
    check(st == 400, "bad JSON: %d" % st)
    check(wait_for(lambda: re.search(r'status=400 .*error="body is not '
                                     r'valid JSON', d.stderr()), 3),
          "400 access line without the reason: %r" % d.stderr()[-400:])
    target = "/cb?action=open&CONTACT_ID=x1&contact_email=a%%40b.c&secret=%s" \
        % SECRET
    expect_ok(d.request("GET", target), "legacy open")
    check(wait_for(lambda: "action=open" in d.stderr(), 3),
          "legacy action not in the access line")
    check("a@b.c" not in d.stderr(), "an e-mail reached the log")
    # Names match ignoring case, the secret's too (libmicrohttpd's rule):
    # this is a callback, and its secret must not reach the event.
    target = "/cb?ACTION=click&CONTACT_ID=x2&SECRET=%s" % SECRET
    expect_ok(d.request("GET", target), "legacy in capitals")
    rows = d.wait_calls(2)
    check(sorted(r["type"] for r in rows) == ["contact_clicked_message_link",
                                               "contact_opened_message"],
          "callback types %r" % [r["type"] for r in rows])
    check(wait_for(lambda: "ACTION=click" in d.stderr(), 3),
          "the action in capitals not in the access line")
    d.stop()
    db = sqlite3.connect(d.spool)
    stored = [j for (j,) in db.execute("SELECT json FROM events")]
    db.close()
    check(len(stored) == 2 and not any(SECRET in j for j in stored),
          "the secret reached the spool: %r" % stored)


def test_refusals_say_why_in_the_log(ctx):
    """Each refusal's access line gives its reason, never the secret."""
    d = ctx.daemon(args=["--path", "/hook", "--max-body", "1000"])
    cases = [
        (d.post({}, url=d.url(secret="nope"))[0], 403, "wrong secret"),
        (d.post({}, url=d.url(secret=None))[0], 403, "no secret parameter"),
        (d.post({}, url=d.url(path="/other"))[0], 404,
         "not the --path served"),
        (d.request("PUT", d.url(), b"{}")[0], 405, "not a POST"),
        (d.post(None, raw=b" " * 2000)[0], 413, "over --max-body"),
    ]
    for got, want, why in cases:
        check(got == want, "%s: status %d, want %d" % (why, got, want))
        check(wait_for(lambda: re.search(r'status=%d .*error="[^"]*%s'
                                         % (want, re.escape(why)),
                                         d.stderr()), 3),
              "no reason %r on the %d line: %r" % (why, want,
                                                   d.stderr()[-300:]))
    check("nope" not in d.stderr(), "the wrong secret reached the log")


def test_batch_larger_than_backlog_bound_is_taken_when_idle(ctx):
    d = ctx.daemon(args=["--max-backlog", "3"])
    expect_ok(d.post(fixture("batch.json")), "5 events, bound 3, idle")
    d.wait_calls(5)


def test_spool_retry_of_unknown_id_fails(ctx):
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(spool=spool)
    expect_ok(d.post(fixture("contact_added.json")), "one event")
    d.wait_calls(1)
    rc, out, err = grwhd_cli("spool", "--spool", spool, "retry", "999")
    check(rc == 1 and "not a dead event" in err, "retry 999: %d %r"
          % (rc, err))


def test_spool_retry_of_a_repeated_id_counts_it_once(ctx):
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(args=["--max-attempts", "1"], spool=spool,
                   env={"GRWHD_TEST_FAIL_TYPE": "contact_added"})
    expect_ok(d.post(fixture("contact_added.json")), "one event")
    check(wait_for(lambda: len(dead_letters(spool)) == 1, 5), "not dead")
    eid = str(dead_letters(spool)[0]["id"])
    rc, out, err = grwhd_cli("spool", "--spool", spool, "retry", eid, eid)
    check(rc == 0 and "re-queued 1 " in out, "retry %s %s: %d %r %r"
          % (eid, eid, rc, out, err))


def test_handler_blocked_in_c_is_reported(ctx):
    """A handler stuck in C (no Lua instructions) is named in the log."""
    script, d = scripted_daemon(ctx, """local on = {}
function on.default(ev, meta) os.execute("sleep 7") end
return on
""", args=["--handler-timeout", "0.5"], workers=1)
    expect_ok(d.post(fixture("contact_added.json")), "event")
    check(wait_for(lambda: "handler stuck past its time limit" in
                   d.stderr(), 9), "no warning for a stuck handler")


# ---------------------------------------------------------------------------
# Bounds on what a peer may send, and counts that must stay right.

def dead_letters(spool):
    """The spool's dead events, as `grwhd spool dead --json` lists them."""
    rc, out, _ = grwhd_cli("spool", "--spool", spool, "dead", "--json")
    return json.loads(out) if rc == 0 and out.strip() else []


def test_spool_retry_of_many_drains_fast(ctx):
    """Thousands of re-queued dead events run at the workers' pace.

    They are due at once, so the daemon reads them on as the queues make
    room instead of one poll's worth a second.
    """
    spool = os.path.join(ctx.dir, "spool.db")
    d = ctx.daemon(args=["--max-attempts", "1"], spool=spool, workers=2,
                   env={"GRWHD_TEST_FAIL_TYPE": "contact_moved"})
    base = fixture("contact_moved.json")
    for r in range(3):
        evs = [event_with_id(base, "rd-%d-%d" % (r, i)) for i in range(1000)]
        expect_ok(d.post(evs), "batch %d" % r)
    check(wait_for(lambda: len(dead_letters(spool)) == 3000, 30),
          "not all 3000 dead: %d" % len(dead_letters(spool)))
    d.stop()
    # The same spool, now with a handler that succeeds.
    d2 = ctx.daemon(spool=spool, workers=2)
    t0 = time.monotonic()
    rc, out, err = grwhd_cli("spool", "--spool", spool, "retry", "--all")
    check(rc == 0 and "re-queued 3000" in out, "retry: %d %r %r"
          % (rc, out, err))
    ok = wait_for(lambda: len([r for r in d2.calls()
                               if r["cid"].startswith("rd-")]) >= 3000, 30)
    took = time.monotonic() - t0
    check(ok, "re-queued events not all handled in 30 s")
    check(took < 8, "3000 re-queued events took %.1f s to run" % took)


def test_spool_retry_keeps_backlog_count(ctx):
    """Dead events re-queued by `spool retry` leave the backlog at 0.

    The daemon counted each death of a re-queued event but not its return,
    so every retry cycle took the gauge 2 further below zero, and a
    negative backlog let more than --max-backlog events in.
    """
    port = free_port()
    spool = os.path.join(ctx.dir, "spool.db")
    # Only contact_added fails (at once, before the sleep), so the bound
    # can be tried with slow contact_moved events afterwards.
    d = ctx.daemon(args=["--admin", "127.0.0.1:%d" % port,
                         "--max-attempts", "1", "--max-backlog", "3"],
                   spool=spool, workers=1,
                   env={"GRWHD_TEST_FAIL_TYPE": "contact_added",
                        "GRWHD_TEST_SLEEP": "0.4"})
    seen = []

    def dead_count():
        m = admin_get(port, "/metrics")[1]
        seen.append(metric(m, "grwhd_spool_backlog"))
        return metric(m, "grwhd_events_handled_total",
                      'type="contact_added",result="dead"')

    def died(times):
        # Counted dead once more each: the re-queued events really ran.
        return dead_count() == times and len(dead_letters(spool)) == 2

    for cid in ("rb-A", "rb-B"):
        expect_ok(d.post(event_with_id(fixture("contact_added.json"), cid)),
                  cid)
    check(wait_for(lambda: died(2), 5), "2 events not dead: %r, metric %r"
          % (dead_letters(spool), dead_count()))
    for cycle in range(1, 4):
        rc, out, err = grwhd_cli("spool", "--spool", spool, "retry", "--all")
        check(rc == 0 and "re-queued 2" in out, "retry %d: %d %r %r"
              % (cycle, rc, out, err))
        # The running daemon looks for re-queued events once a second.
        check(wait_for(lambda: died(2 + 2 * cycle), 5),
              "retry %d: not dead again: %r, counted dead %r"
              % (cycle, dead_letters(spool), dead_count()))
    dead_count()
    check(None not in seen, "no grwhd_spool_backlog in /metrics")
    check(min(seen) >= 0, "backlog gauge went down to %r (last %r)"
          % (min(seen), seen[-1]))
    check(seen[-1] == 0, "backlog %r after 3 retry cycles, want 0"
          % seen[-1])
    # The count behind the gauge also bounds the intake: a count below
    # zero would let in several more than 3 before the first 503.
    got = []
    for i in range(10):
        st, h, b = d.post(event_with_id(fixture("contact_moved.json"),
                                        "rb-%d" % i))
        got.append(st)
        if st == 503:
            break
        check(st == 200, "event %d: %d %r" % (i, st, b))
    check(503 in got and got.index(503) <= 4,
          "no 503 soon after the bound (3) after retries: %r" % got)


def seconds_until_cut(d, head, piece, gap=0.5, limit=4.5):
    """Sends head, then piece every gap seconds, never finishing.

    Returns the seconds from head until the server closed the connection,
    or None if it was still open after limit seconds.  An answer (such as
    a 408) followed by the close counts as the close.
    """
    s = d.tls_socket()
    try:
        t0 = time.monotonic()
        s.sendall(head)
        while True:
            left = t0 + limit - time.monotonic()
            if left <= 0:
                return None
            if readable(s, min(gap, left)):
                took = time.monotonic() - t0
                return took if closed_soon(s, 1.0) else None
            try:
                s.sendall(piece)
            except OSError:
                return time.monotonic() - t0
    finally:
        s.close()


def test_slow_headers_are_cut(ctx):
    """A request dribbled in is cut after about --conn-timeout in all.

    libmicrohttpd's timeout counts only idle time, so a peer sending a
    header line every half second held its connection for ever.
    """
    d = ctx.daemon(args=["--conn-timeout", "2"])
    cut = {}
    slow_head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 % d.url()).encode()
    body_head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\n"
                 "Content-Length: 1000\r\n\r\n" % d.url()).encode()

    def dribble(key, head, piece):
        try:
            cut[key] = seconds_until_cut(d, head, piece)
        except Exception as e:  # noqa: a thread must not die silently
            cut[key] = e

    ts = [threading.Thread(target=dribble,
                           args=("headers", slow_head, b"X-Slow: 1\r\n")),
          threading.Thread(target=dribble,
                           args=("body", body_head, b" " * 10))]
    for t in ts:
        t.start()
    try:
        time.sleep(1.0)
        ev = event_with_id(fixture("contact_added.json"), "slow-beside")
        t0 = time.monotonic()
        res = d.post(ev, conn=d.conn(timeout=5))
        took = time.monotonic() - t0
        expect_ok(res, "request beside two slow ones")
        check(took < 1.0, "request took %.2f s beside slow ones" % took)
    finally:
        for t in ts:
            t.join(10)
    check(not any(t.is_alive() for t in ts), "slow senders hung")
    for key in ("headers", "body"):
        check(not isinstance(cut[key], Exception), "%s sender: %r"
              % (key, cut[key]))
        check(cut[key] is not None, "slow %s still open after 4.5 s with "
              "--conn-timeout 2" % key)
    check(cut["headers"] >= 1.5, "slow headers cut after only %.2f s"
          % cut["headers"])
    check(wait_for(lambda: any("slow" in l and "127.0.0.1" in l
                               for l in d.stderr().splitlines()), 3),
          "no log line naming the slow peer: %r" % d.stderr()[-400:])
    # Headers, then silence: libmicrohttpd's idle timeout ends it first.
    before = d.stderr().count("aborted=")
    s = d.tls_socket(timeout=10)
    s.sendall(body_head)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:
        try:
            if not s.recv(1000):
                break
        except (OSError, ssl.SSLError):
            break
    s.close()
    check(wait_for(lambda: d.stderr().count("aborted=") > before, 3),
          "no access line for the silent client: %r" % d.stderr()[-400:])
    for line in d.stderr().splitlines():
        if "aborted=" in line:
            check("error=" in line, "an aborted request without a reason: "
                  "%r" % line)
    check(SECRET not in d.stderr(), "the secret appears in stderr")
    d.wait_calls(1)


def test_idle_keepalive_gets_full_time_for_next_request(ctx):
    """The deadline of a request starts at its request line.

    A keep-alive connection idle for most of --conn-timeout, then carrying
    a request whose body takes a while, must not be cut for the idle part.
    """
    d = ctx.daemon(args=["--conn-timeout", "3"])
    body = json.dumps(event_with_id(fixture("contact_added.json"),
                                    "ka-slow")).encode()
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (d.url(), len(body))).encode()
    s = d.tls_socket()
    try:
        first = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                 % d.url(extra="action=open&CONTACT_ID=ka")).encode()
        s.sendall(first)
        check(readable(s, 5), "no answer to the first request")
        st = read_response(s, "GET")[0]
        check(st == 200, "first request: %d" % st)
        time.sleep(2.5)         # idle, under --conn-timeout
        s.sendall(head)
        # 2.4 s for the body: within --conn-timeout of the request line,
        # but well past it (and the 1 s of grace) since the last answer.
        step = -(-len(body) // 6)
        for i in range(0, len(body), step):
            time.sleep(0.4)
            s.sendall(body[i:i + step])
        check(readable(s, 5), "no answer to the slow second request")
        st, h, b = read_response(s)
        expect_ok((st, h, b), "second request after an idle spell")
    finally:
        s.close()
    d.wait_calls(2)


def test_chunked_far_over_max_body_gets_413(ctx):
    """A chunked body far past --max-body still gets its 413.

    The excess used to be read for 1 MiB only, then the connection was
    dropped: the sender saw an empty reply and no reason.
    """
    d = ctx.daemon(args=["--max-body", "65536"])
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n" % d.url()).encode()
    piece = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 80 + [b"0\r\n\r\n"]
    try:
        st, h, b = send_then_read(d, head, chunks, want_close=True)
    except (OSError, http.client.HTTPException) as e:
        raise TestFailure("5 MiB chunked body: no answer (%s: %s)"
                          % (type(e).__name__, e))
    expect_json_error(st, h, b, 413, "5 MiB chunked body, --max-body 64K")
    check(d.alive(), "daemon died")


def test_too_many_events_in_one_request(ctx):
    """More than 1000 events in one body is 413; exactly 1000 all run."""
    d = ctx.daemon()

    def array(n):
        return b"[" + b",".join([b'{"type":"x"}'] * n) + b"]"

    st, h, b = d.post(None, raw=array(1001))
    j = expect_json_error(st, h, b, 413, "1001 events")
    check("1000" in str(j.get("error")), "413 does not name the bound: %r"
          % b[:200])
    # Each element has its own batch_index, so equal events are not
    # repeats of each other.
    expect_ok(d.post(None, raw=array(1000)), "1000 events")
    d.wait_calls(1000, timeout=30)
    time.sleep(0.3)
    rows = d.calls()
    check(len(rows) == 1000 and all(r["type"] == "x" for r in rows),
          "%d handler calls, want 1000 of type x" % len(rows))


def test_deep_nesting_up_to_128_accepted(ctx):
    """Nesting a real payload might have is taken; far deeper is a 400."""
    d = ctx.daemon()

    def nested(depth):
        # The event object is one level, each array one more.
        n = depth - 1
        return b'{"type":"deep","x":' + b"[" * n + b"]" * n + b"}"

    expect_ok(d.post(None, raw=nested(100)), "depth 100")
    st, h, b = d.post(None, raw=nested(200))
    expect_json_error(st, h, b, 400, "depth 200")
    d.wait_calls(1)
    time.sleep(0.3)
    rows = d.calls()
    check(len(rows) == 1 and rows[0]["type"] == "deep",
          "handler calls %r, want the depth 100 event once" % rows)


def test_identical_events_in_one_request_all_handled(ctx):
    """Equal events in one request are each real; a repeat request is not.

    The body digest used to merge equal events of the same request (two
    clicks in one second), and legacy callbacks, whose time is whole
    seconds, the same way.
    """
    d = ctx.daemon()

    def count(fn):
        return len([r for r in d.calls() if fn(r)])

    def twins():
        return count(lambda r: r["type"] == "twin")

    body = [{"type": "twin", "n": 1}, {"type": "twin", "n": 1}]
    expect_ok(d.post(body, headers={"X-Webhook-ID": None}), "twins")
    check(wait_for(lambda: twins() >= 2, 5),
          "identical events in one request: %d handler calls, want 2"
          % twins())
    check(wait_for(lambda: "msg=request" in d.stderr(), 3), "no access line")
    check("duplicates=" not in d.stderr(),
          "the first request counted duplicates: %r" % d.stderr()[-300:])
    expect_ok(d.post(body, headers={"X-Webhook-ID": None}), "twins again")
    check(wait_for(lambda: "duplicates=2" in d.stderr(), 3),
          "the repeated request's access line lacks duplicates=2: %r"
          % d.stderr()[-300:])

    # Back to back, so both carry the same time: two opens, both real.
    target = d.url(extra="action=open&CONTACT_ID=Q")
    for _ in range(2):
        expect_ok(d.request("GET", target), "legacy open")
    # With a delivery id, the second is a repeat.
    target = d.url(extra="action=open&CONTACT_ID=R")
    wid = str(uuid.uuid4())
    for _ in range(2):
        expect_ok(d.request("GET", target, headers={"X-Webhook-ID": wid}),
                  "legacy open with X-Webhook-ID")
    check(wait_for(lambda: count(lambda r: r["cid"] == "Q") >= 2, 5),
          "identical legacy callbacks: %d handled, want 2"
          % count(lambda r: r["cid"] == "Q"))
    d.wait_calls(5)
    time.sleep(0.5)
    check(twins() == 2, "the repeated request ran again: %d twin calls"
          % twins())
    n = count(lambda r: r["cid"] == "R")
    check(n == 1, "legacy callback repeated with one X-Webhook-ID ran %d"
          " times" % n)


def test_non_object_element_counted_from_1(ctx):
    """The 400 names the element as meta.batch_index would: from 1."""
    d = ctx.daemon()
    for raw, n in ((b'[{"type":"a"}, 5]', 2), (b"[5]", 1)):
        st, h, b = d.post(None, raw=raw)
        j = expect_json_error(st, h, b, 400, raw.decode())
        want = "element %d is not an object" % n
        check(want in str(j.get("error")), "%s: error %r, want %r"
              % (raw.decode(), j.get("error"), want))


TESTS = [
    test_http_table,
    test_secret_param_and_path,
    test_secret_file_two_lines,
    test_emptied_secret_file_keeps_old_secrets,
    test_many_reloads_still_take_a_new_secret,
    test_secret_env,
    test_legacy_callback,
    test_deep_nesting_is_refused_not_fatal,
    test_invalid_utf8_is_accepted,
    test_one_contact_in_order,
    test_failing_handler_does_not_block,
    test_backlog_bound_answers_503,
    test_fixture_types_reach_their_function,
    test_batch_fixture,
    test_batch_100,
    test_batch_over_100_accepted,
    test_keep_alive,
    test_expect_100_continue,
    test_kill9_after_ack,
    test_parallel_exactly_once,
    test_idle_connections_do_not_delay,
    test_no_secret_or_email_in_log,
    test_cli_check,
    test_cli_feed,
    test_cli_bad_option,
    test_garbage_does_not_stop_daemon,
    test_sigterm_exits_zero,
    test_secret_with_reserved_characters,
    test_peer_text_is_escaped_in_log,
    test_conn_timeout_closes_idle,
    test_large_batches_overflow_queues,
    test_sigterm_keeps_unhandled,
    test_sigterm_under_load,
    test_stderr_lines_are_logfmt,
    test_duplicate_delivery_handled_once,
    test_failed_handler_is_retried,
    test_dead_letters_listed_and_retried,
    test_identical_batch_twice_once,
    test_dedupe_window_zero_turns_it_off,
    test_dedupe_survives_restart,
    test_kill9_mid_handler_counts_attempt,
    test_full_disk_503_then_recovery,
    test_reload_on_rename_sighup_and_broken,
    test_reload_when_a_module_changes,
    test_loops_and_memory_hogs_are_stopped,
    test_json_round_trip_in_a_handler,
    test_http_request_against_a_local_server,
    test_http_timeout_bounded_by_handler_time,
    test_http_makes_no_request_once_handler_time_is_spent,
    test_http_request_checks_its_arguments,
    test_check_warns_and_new_writes_a_starter,
    test_feed_reports_each_outcome,
    test_examples_run,
    test_metrics_follow_requests_and_results,
    test_readyz_503_while_spool_cannot_write,
    test_tls_reload_keeps_old_connections,
    test_json_log_lines_parse,
    test_script_log_fields_keep_the_daemons_names,
    test_print_writes_log_lines,
    test_options_from_environment_and_config_file,
    test_make_install_lays_out_files,
    test_user_drops_root,
    test_os_exit_fails_the_event_not_the_daemon,
    test_secret_in_a_mistyped_path_is_redacted,
    test_access_line_says_why_and_which_callback,
    test_refusals_say_why_in_the_log,
    test_serve_warns_about_handler_names_and_unhandled_types,
    test_script_log_with_many_fields_is_cut_and_says_so,
    test_batch_larger_than_backlog_bound_is_taken_when_idle,
    test_spool_retry_of_unknown_id_fails,
    test_spool_retry_of_a_repeated_id_counts_it_once,
    test_handler_blocked_in_c_is_reported,
    test_spool_retry_keeps_backlog_count,
    test_spool_retry_of_many_drains_fast,
    test_slow_headers_are_cut,
    test_idle_keepalive_gets_full_time_for_next_request,
    test_chunked_far_over_max_body_gets_413,
    test_too_many_events_in_one_request,
    test_deep_nesting_up_to_128_accepted,
    test_identical_events_in_one_request_all_handled,
    test_non_object_element_counted_from_1,
]


# ---------------------------------------------------------------------------
# Runner

class Ctx:
    def __init__(self, dir_):
        self.dir = dir_
        self.daemons = []
        self.n_daemons = 0

    def daemon(self, **kw):
        return Daemon(self, **kw)

    def finish(self):
        """Stops every daemon; returns problems seen in their life."""
        problems = []
        for d in self.daemons:
            died = d.proc.poll()
            log = d.stderr()
            if died is not None and not d.killed and not d.stopped:
                # A sanitizer report below says more than the log's tail.
                tail = "" if any(m in log for m in SANITIZER_MARKS) \
                    else ": " + log[-400:].strip()
                problems.append("daemon exited by itself (rc %s)%s"
                                % (died, tail))
            try:
                d.stop()
            except TestFailure as e:
                problems.append(str(e))
            log = d.stderr()
            for mark in SANITIZER_MARKS:
                i = log.find(mark)
                if i >= 0:
                    # From the start of the report's line: the kind of
                    # error and the first frames are what a reader needs.
                    i = log.rfind("\n", 0, i) + 1
                    problems.append("sanitizer report: %s" % log[i:i + 700])
                    break
        return problems


def run_one(fn, base):
    name = fn.__name__[len("test_"):]
    dir_ = tempfile.mkdtemp(prefix=name[:20] + ".", dir=base)
    ctx = Ctx(dir_)
    t0 = time.monotonic()
    err = None
    try:
        fn(ctx)
    except TestSkip as e:
        ctx.finish()
        shutil.rmtree(dir_, ignore_errors=True)
        print("skip %s: %s" % (name, e), flush=True)
        return None
    except TestFailure as e:
        err = str(e)
    except Exception as e:  # a test bug or an unexpected daemon answer
        err = "%s: %s" % (type(e).__name__, e)
        if VERBOSE:
            traceback.print_exc()
    problems = ctx.finish()
    if err is None and problems:
        err = "; ".join(problems)
    elif problems:
        err += " [also: %s]" % "; ".join(problems)
    took = time.monotonic() - t0
    if err is None:
        print("ok %s (%.1fs)" % (name, took) if VERBOSE else "ok " + name,
              flush=True)
        shutil.rmtree(dir_, ignore_errors=True)
        return True
    err = err.replace("\n", " | ")
    print("FAIL %s: %s" % (name, err), flush=True)
    if VERBOSE:
        print("  (files kept in %s)" % dir_, flush=True)
    return False


def main(argv):
    global VERBOSE
    pattern = None
    i = 1
    while i < len(argv):
        if argv[i] == "-k" and i + 1 < len(argv):
            pattern = argv[i + 1]
            i += 2
        elif argv[i] == "-v":
            VERBOSE = True
            i += 1
        else:
            print("usage: run.py [-k SUBSTRING] [-v]", file=sys.stderr)
            return 2
    if not os.access(BIN, os.X_OK):
        print("no executable %s (build it with make, or set GRWHD_BIN)"
              % BIN, file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="grwhd-e2e.")
    make_cert(base)
    passed = failed = skipped = 0
    for fn in TESTS:
        if pattern and pattern not in fn.__name__:
            continue
        res = run_one(fn, base)
        if res is None:
            skipped += 1
        elif res:
            passed += 1
        else:
            failed += 1
    if not VERBOSE or failed == 0:
        shutil.rmtree(base, ignore_errors=True)
    print("%d passed, %d failed%s" % (passed, failed,
                                      ", %d skipped" % skipped
                                      if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
