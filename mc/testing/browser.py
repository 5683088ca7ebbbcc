"""A real browser as a participant: headless Chromium joins over WebTransport.

The MC's clients are browsers, so the end-to-end proof is Chromium itself
speaking the signalling contract: its QUIC, HTTP/3 and WebTransport stack, not
ours. Three parts:

- :data:`PAGE_HTML`, a participant page whose JavaScript opens the
  WebTransport session (pinning the self-signed certificate with
  ``serverCertificateHashes``), opens one bidirectional stream, writes a
  hand-encoded ``JoinRequest`` frame, reads ``ServerMessage`` frames and
  performs actions (mute, leave, ...);
- :class:`PageServer`, a stdlib HTTP server on 127.0.0.1 that serves the page,
  collects the events it posts and hands it commands;
- :class:`BrowserParticipant` and :func:`run_page`, which run headless
  Chromium on the page and always kill it and remove its profile.

The page reports every frame it receives with its raw payload (``b64``), so a
test decodes it fully with :func:`decode` rather than trusting the page's
partial JavaScript decoder, which only names the message (``kind``) and a few
fields for display.

Actions (strings, performed in order after the join's first answer):
``mute`` (audio), ``mute:video``, ``mute:audio,video``, ``unmute`` (both off),
``wait:<ms>``, ``wait_for:<kind>`` (the n-th ``wait_for`` of a kind waits for
the n-th message of that kind), ``send:<base64 ClientMessage>`` (framed),
``raw:<base64 bytes>`` (unframed), ``fin`` (finish the stream), ``reset``
(abort the stream), ``leave`` (close the WebTransport session).

Killing Chromium without ``leave`` or ``fin`` looks to the server like a lost
connection (its QUIC idle timeout), as a crashed browser would.
"""

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mc.proto import signaling_pb2

CHROMIUM = os.environ.get("MC_TEST_CHROMIUM", "/usr/bin/chromium")
STOP_TIMEOUT = 5.0
# How long the page's GET /command waits for a command before answering "none".
COMMAND_POLL = 1.0

CHROMIUM_FLAGS = (
    "--headless",
    # As root Chromium refuses to start with its sandbox.
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    # No network but loopback here: keep Chromium from reaching Google hosts.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    # console.log lines go to the log file, for the failure message.
    "--enable-logging=stderr",
    "--v=0",
)

PAGE_HTML = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>mc participant</title></head>
<body><h1>mc participant</h1><pre id="log"></pre>
<script>
"use strict";
const P = new URLSearchParams(location.hash.slice(1));
const t0 = performance.now();
const enc = new TextEncoder(), dec = new TextDecoder();
const KINDS = {1: "join_response", 2: "participant_joined", 3: "participant_left",
  4: "stream_published", 5: "stream_assignments", 6: "stream_quality_update", 7: "error",
  8: "participant_mute_update", 9: "unmute_request", 10: "unmute_response",
  11: "redirect_to_mc"};
const counts = {};          // kind -> messages received
const awaited = {};         // kind -> wait_for actions performed
let closed = false, leaving = false, wakeups = [];
let posting = Promise.resolve();

function wake() { const w = wakeups; wakeups = []; w.forEach(f => f()); }
function changed(ms) {      // resolves on the next event, or after ms
  return new Promise(r => { wakeups.push(r); setTimeout(r, ms); });
}
async function until(pred, ms) {
  const deadline = performance.now() + ms;
  while (!pred()) {
    const left = deadline - performance.now();
    if (left <= 0) return false;
    await changed(left);
  }
  return true;
}

function report(type, data) {
  const ev = Object.assign({type: type, t: Math.round(performance.now() - t0)}, data || {});
  document.getElementById("log").textContent += JSON.stringify(ev) + "\n";
  console.log("mc-page " + JSON.stringify(ev));
  posting = posting.then(() => fetch("/event", {method: "POST", body: JSON.stringify(ev),
    headers: {"content-type": "application/json"}})).catch(() => {});
  wake();
  return posting;
}

// protobuf wire format, only what the page needs
function varint(n) {
  const out = [];
  while (n > 127) { out.push((n % 128) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return out;
}
function lenField(field, bytes) {
  return [...varint(field * 8 + 2), ...varint(bytes.length), ...bytes];
}
function strField(field, s) { return s ? lenField(field, enc.encode(s)) : []; }
function boolField(field, b) { return b ? [...varint(field * 8), 1] : []; }
function frame(payload) {
  const b = new Uint8Array(4 + payload.length);
  new DataView(b.buffer).setUint32(0, payload.length);
  b.set(payload, 4);
  return b;
}
function joinRequest() {
  const jr = [...strField(1, P.get("meeting") || ""), ...strField(2, P.get("token") || ""),
    ...strField(3, P.get("name") || ""), ...strField(5, P.get("correlation") || ""),
    ...strField(6, P.get("binding") || "")];
  return Uint8Array.from(lenField(1, jr));                  // ClientMessage.join_request
}
function muteRequest(audio, video) {
  return Uint8Array.from(lenField(7, [...boolField(1, audio), ...boolField(2, video)]));
}
function readVarint(b, pos) {
  let v = 0n, shift = 0n;
  for (;;) {
    if (pos >= b.length) throw new Error("truncated varint");
    const byte = b[pos++];
    v |= BigInt(byte & 127) << shift;
    if (!(byte & 128)) return [v, pos];
    shift += 7n;
  }
}
function fields(b) {        // [[field, wiretype, value]]
  const out = [];
  let pos = 0, key, v;
  while (pos < b.length) {
    [key, pos] = readVarint(b, pos);
    const f = Number(key >> 3n), wt = Number(key & 7n);
    if (wt === 0) { [v, pos] = readVarint(b, pos); out.push([f, wt, v]); }
    else if (wt === 2) {
      [v, pos] = readVarint(b, pos);
      const end = pos + Number(v);
      if (end > b.length) throw new Error("truncated field " + f);
      out.push([f, wt, b.subarray(pos, end)]);
      pos = end;
    } else if (wt === 1) pos += 8;
    else if (wt === 5) pos += 4;
    else throw new Error("wire type " + wt);
  }
  return out;
}
function summarize(payload) {
  for (const [f, wt, v] of fields(payload)) {
    if (!KINDS[f] || wt !== 2) continue;
    const inner = fields(v), s = {kind: KINDS[f]};
    const str = n => { const x = inner.find(e => e[0] === n && e[1] === 2);
                       return x ? dec.decode(x[2]) : ""; };
    const num = n => { const x = inner.find(e => e[0] === n && e[1] === 0);
                       return x ? Number(x[2]) : 0; };
    if (f === 1) { s.participant_id = str(1); s.user_id = String(num(2)); }
    else if (f === 3 || f === 8) s.participant_id = str(1);
    else if (f === 7) { s.code = num(1); s.message = str(2); }
    else if (f === 11) { s.new_mc_endpoint = str(1); s.meeting_id = str(2); s.reason = str(3); }
    return s;
  }
  return {kind: "unknown"};
}
function b64(bytes) {
  let s = "";
  bytes.forEach(c => { s += String.fromCharCode(c); });
  return btoa(s);
}
function unb64(s) { return Uint8Array.from(atob(s), c => c.charCodeAt(0)); }
function unhex(h) { return new Uint8Array(h.match(/../g).map(x => parseInt(x, 16))); }

async function readFrames(reader) {
  let buf = new Uint8Array(0);
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) { report("stream_end", {pending_bytes: buf.length}); return; }
      const nb = new Uint8Array(buf.length + value.length);
      nb.set(buf); nb.set(value, buf.length); buf = nb;
      while (buf.length >= 4) {
        const n = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
        if (buf.length < 4 + n) break;
        const payload = buf.slice(4, 4 + n);
        buf = buf.slice(4 + n);
        let s;
        try { s = summarize(payload); } catch (e) { s = {kind: "undecodable", detail: String(e)}; }
        counts[s.kind] = (counts[s.kind] || 0) + 1;
        report("message", Object.assign(s, {b64: b64(payload)}));
      }
    }
  } catch (e) {
    // After our own close the read fails by design: not an error.
    if (leaving) report("stream_end", {after_leave: true, pending_bytes: buf.length});
    else report("stream_error", {error: String(e)});
  }
}

let wt, writer;
async function perform(action) {
  const i = action.indexOf(":");
  const name = i < 0 ? action : action.slice(0, i), arg = i < 0 ? "" : action.slice(i + 1);
  report("action", {action: action});
  try {
    if (name === "mute" || name === "unmute") {
      const what = name === "unmute" ? [] : (arg || "audio").split(",");
      await writer.write(frame(muteRequest(what.includes("audio"), what.includes("video"))));
    } else if (name === "send") await writer.write(frame(unb64(arg)));
    else if (name === "raw") await writer.write(unb64(arg));
    else if (name === "wait") await until(() => closed, Number(arg));
    else if (name === "wait_for") {
      awaited[arg] = (awaited[arg] || 0) + 1;
      const n = awaited[arg];
      if (!await until(() => (counts[arg] || 0) >= n || closed, Number(P.get("timeout")))) {
        report("action_failed", {action: action, error: "timed out"});
      } else if ((counts[arg] || 0) < n) {
        report("action_failed", {action: action, error: "session closed first"});
      }
    } else if (name === "fin") await writer.close();
    else if (name === "reset") await writer.abort("reset by the page");
    else if (name === "leave") { leaving = true; wt.close({closeCode: 0, reason: "leaving"}); }
    else report("action_failed", {action: action, error: "unknown action"});
  } catch (e) {
    report("action_failed", {action: action, error: String(e)});
  }
}

async function commands() {
  while (!closed) {
    let cmd = {};
    try { cmd = await (await fetch("/command")).json(); } catch (e) { return; }
    if (cmd.action === "done") return;
    if (cmd.action) await perform(cmd.action);
  }
}

async function main() {
  const timeout = Number(P.get("timeout"));
  try {
    wt = new WebTransport(P.get("url"), {serverCertificateHashes:
      [{algorithm: "sha-256", value: unhex(P.get("hash"))}]});
  } catch (e) { report("error", {stage: "construct", error: String(e)}); return; }
  wt.closed.then(
    info => report("closed", {clean: true, code: info.closeCode, reason: info.reason}),
    e => report("closed", {clean: false, error: String(e)})).then(() => { closed = true; wake(); });
  try { await wt.ready; } catch (e) { report("error", {stage: "ready", error: String(e)}); return; }
  report("ready", {origin: location.origin});
  const stream = await wt.createBidirectionalStream();
  writer = stream.writable.getWriter();
  readFrames(stream.readable.getReader());
  await writer.write(frame(joinRequest()));
  report("sent", {kind: "join_request"});
  // Actions start from the join's answer (join_response, error or redirect).
  await until(() => Object.keys(counts).length > 0 || closed, timeout);
  for (const a of JSON.parse(P.get("actions") || "[]")) await perform(a);
  if (P.get("control") === "1") await commands();
  await until(() => closed, Number(P.get("hold")));
}

main().catch(e => report("error", {stage: "main", error: String(e)}))
  .then(() => report("done", {closed: closed}));
</script></body></html>
"""


class PageServer:
    """Serves :data:`PAGE_HTML` at ``/`` on 127.0.0.1, collects the events the
    page POSTs to ``/event`` and hands it queued commands at ``/command``.

    One per browser, so events never mix between participants.
    """

    def __init__(self, port=0):
        self.port = port
        self.events = []
        self._commands = []
        self._cond = threading.Condition()
        self._httpd = None
        self._thread = None

    @property
    def origin(self):
        """What the browser sends as ``origin`` (for allowed-origin checks)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", ctype="application/json"):
                self.send_response(code)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                if path == "/":
                    self._send(200, PAGE_HTML.encode(), "text/html; charset=utf-8")
                elif path == "/command":
                    self._send(200, json.dumps(owner._next_command()).encode())
                else:
                    self._send(404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if urllib.parse.urlsplit(self.path).path != "/event":
                    self._send(404)
                    return
                with owner._cond:
                    owner.events.append(json.loads(body))
                    owner._cond.notify_all()
                self._send(204)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name="mc-page-server", daemon=True)
        self._thread.start()
        return self

    def close(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(STOP_TIMEOUT)
            self._httpd = None

    def page_url(self, **params):
        """The page's URL; parameters go in the fragment, which never reaches
        an HTTP server or its logs (the join token is a credential)."""
        return f"{self.origin}/#{urllib.parse.urlencode(params)}"

    def command(self, action):
        with self._cond:
            self._commands.append(action)
            self._cond.notify_all()

    def _next_command(self):
        deadline = time.monotonic() + COMMAND_POLL
        with self._cond:
            while not self._commands:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {}
                self._cond.wait(left)
            return {"action": self._commands.pop(0)}

    def wait(self, predicate, timeout, what):
        """Wait until ``predicate(events)`` returns something truthy and return
        it; TimeoutError after ``timeout`` seconds. Re-checks every 0.2 s even
        without events, so a predicate may also watch the browser process."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.events)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(left, 0.2))


def _kill_group(proc):
    """TERM then KILL Chromium's process group (its own session: the browser,
    renderer, GPU and utility processes), each with a deadline."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue
    raise RuntimeError(f"chromium (pid {proc.pid}) survived SIGKILL for {STOP_TIMEOUT}s")


def decode(event):
    """The ``ServerMessage`` a ``message`` event carries, parsed with the
    MC's generated module."""
    return signaling_pb2.ServerMessage.FromString(base64.b64decode(event["b64"]))


def _hex(cert_sha256):
    if isinstance(cert_sha256, bytes):
        cert_sha256 = cert_sha256.hex()
    if len(cert_sha256) != 64:
        raise ValueError("cert_sha256 must be 32 bytes (or 64 hex digits)")
    return cert_sha256


class BrowserParticipant:
    """Headless Chromium on the participant page, joining ``wt_url``.

    Use it as a context manager; :meth:`close` always kills Chromium's whole
    process group and removes its profile. ``actions`` run after the join's
    answer; with ``control`` (the default) the page then takes further
    actions from :meth:`perform` until the session closes or :meth:`close`.
    ``hold`` seconds: how long the page keeps reading after its last action
    before it reports ``done`` (it reports at once when the session closes).
    ``step_timeout`` bounds each wait inside the page. ``page_port``: serve
    the page on this port (default: any free one), so that its origin
    (``http://127.0.0.1:<port>``) can be configured in the server beforehand.
    """

    def __init__(self, wt_url, cert_sha256, meeting_id, token, name, *, actions=(),
                 control=True, correlation_id="", binding_token="", hold=0.5,
                 step_timeout=15.0, page_port=0, chromium=CHROMIUM):
        self.page = PageServer(page_port)
        self._params = {
            "url": wt_url, "hash": _hex(cert_sha256), "meeting": meeting_id,
            "token": token, "name": name, "correlation": correlation_id,
            "binding": binding_token, "actions": json.dumps(list(actions)),
            "control": "1" if control else "0", "hold": str(int(hold * 1000)),
            "timeout": str(int(step_timeout * 1000)),
        }
        self._chromium = chromium
        self._proc = None
        self._profile = None
        self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def origin(self):
        return self.page.origin

    @property
    def events(self):
        with self.page._cond:
            return list(self.page.events)

    def start(self):
        try:
            self.page.start()
            self._profile = tempfile.mkdtemp(prefix="mc-chromium-")
            self._log = open(os.path.join(self._profile, "chromium.log"), "wb")  # noqa: SIM115
            cmd = [self._chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                   self.page.page_url(**self._params)]
            # A session of its own: close() kills the renderer and GPU children too.
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        """Kill Chromium (TERM, then KILL after :data:`STOP_TIMEOUT`), stop the
        page server, remove the profile. Safe to call twice."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                _kill_group(proc)
        finally:
            self.page.close()
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._profile is not None:
                shutil.rmtree(self._profile, ignore_errors=True)
                self._profile = None

    def log_tail(self, limit=4000):
        """The end of Chromium's output (console lines included), for failures."""
        if self._profile is None:
            return ""
        self._log.flush()
        with open(os.path.join(self._profile, "chromium.log"), "rb") as f:
            return f.read()[-limit:].decode(errors="replace")

    def _wait(self, predicate, timeout, what):
        def check(events):
            value = predicate(events)
            if value:
                return value
            if self._proc is not None and self._proc.poll() is not None:
                return ("exited", self._proc.returncode)
            return None

        try:
            value = self.page.wait(check, timeout, what)
        except TimeoutError as e:
            raise TimeoutError(
                f"{e}; events: {self.events}; chromium: ...{self.log_tail()}") from None
        if isinstance(value, tuple) and value and value[0] == "exited":
            raise RuntimeError(f"chromium exited ({value[1]}) before {what}: {self.log_tail()}")
        return value

    def messages(self, kind=None):
        """The ``message`` events so far, of ``kind`` if given."""
        return [e for e in self.events
                if e["type"] == "message" and (kind is None or e["kind"] == kind)]

    def wait_for(self, kind, count=1, timeout=15.0):
        """The ``count``-th message of ``kind`` (a ``ServerMessage`` oneof
        name, e.g. ``join_response``), as an event dict; ``decode(event)``
        parses it."""
        def found(events):
            hits = [e for e in events if e["type"] == "message" and e["kind"] == kind]
            return hits[count - 1] if len(hits) >= count else None

        return self._wait(found, timeout, f"{kind} #{count}")

    def wait_event(self, type_, timeout=15.0):
        """The first event of ``type_`` (``ready``, ``closed``, ``stream_end``,
        ``error``, ``done``, ...)."""
        return self._wait(lambda evs: next((e for e in evs if e["type"] == type_), None),
                          timeout, f"a {type_} event")

    def perform(self, action):
        """Queue an action for the page (``control`` mode); see the module doc."""
        self.page.command(action)

    def mute(self, audio=True, video=False):
        what = ",".join(w for w, on in (("audio", audio), ("video", video)) if on)
        self.perform(f"mute:{what}" if what else "unmute")

    def leave(self):
        """Close the WebTransport session: leaving on purpose."""
        self.perform("leave")

    def finish(self):
        """End the page's command loop; it then holds and reports ``done``."""
        self.perform("done")

    def result(self, timeout=15.0):
        """Wait for the page's ``done`` and summarize: ``events``, ``messages``,
        ``kinds`` (message kinds in order), ``participant_id`` (of the first
        join_response, else None), ``closed`` (the ``closed`` event or None),
        ``errors`` (``error``/``action_failed``/``stream_error`` events).
        With ``control`` the page is done once the session closes or after
        :meth:`finish`."""
        self.wait_event("done", timeout)
        return summarize(self.events)


def summarize(events):
    """The result dict of :meth:`BrowserParticipant.result` from ``events``."""
    messages = [e for e in events if e["type"] == "message"]
    joins = [m for m in messages if m["kind"] == "join_response"]
    return {
        "events": events,
        "messages": messages,
        "kinds": [m["kind"] for m in messages],
        "participant_id": joins[0]["participant_id"] if joins else None,
        "closed": next((e for e in events if e["type"] == "closed"), None),
        "errors": [e for e in events
                   if e["type"] in ("error", "action_failed", "stream_error")],
    }


def run_page(wt_url, cert_sha256, meeting_id, token, name, actions=(), timeout=30.0, **kw):
    """One browser joins, performs ``actions``, reads until the session closes
    or ``hold`` (default 0.5 s) passes, and is killed; returns
    :meth:`BrowserParticipant.result`. ``timeout`` bounds the whole run."""
    kw.setdefault("step_timeout", min(15.0, timeout))
    with BrowserParticipant(wt_url, cert_sha256, meeting_id, token, name, actions=actions,
                            control=False, **kw) as browser:
        return browser.result(timeout)
