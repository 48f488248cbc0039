"""commands.run output, exit codes, env vars, users, stdin, list, connect, kill."""

import time

from e2b import CommandExitException
from e2b.exceptions import AuthenticationException, SandboxException

import sdk

import http.client
import json
import struct
import urllib.parse


def envelope(msg):
    b = json.dumps(msg).encode()
    return b"\0" + struct.pack(">I", len(b)) + b


def read_envelope(resp):
    flags, n = struct.unpack(">BI", resp.read(5))
    return flags, json.loads(resp.read(n))


def unary(method, msg, token=sdk.TOKEN):
    u = urllib.parse.urlparse(sdk.URL)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", f"/process.Process/{method}", body=json.dumps(msg),
                 headers={**sdk.HEADERS, "Content-Type": "application/json",
                          "X-Access-Token": token})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"null")

sbx = sdk.sandbox()

r = sbx.commands.run("echo hi; echo oops >&2")
assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 0), r

e = sdk.expect_raises(CommandExitException, sbx.commands.run, "echo partial; exit 3")
assert e.exit_code == 3 and e.stdout == "partial\n", e

# The sandbox's env (from create, via Init) and the call's own.
r = sbx.commands.run("echo $SANDBOX_GREETING/$CALL_VAR", envs={"CALL_VAR": "from-call"})
assert r.stdout == "hello from create/from-call\n", r

# No user named: the sandbox's `user`, in its home. Root when asked.
r = sbx.commands.run("whoami; pwd; echo $HOME")
assert r.stdout == "user\n/home/user\n/home/user\n", r
r = sbx.commands.run("whoami; pwd", user="root")
assert r.stdout == "root\n/root\n", r
r = sbx.commands.run("pwd", cwd="/tmp")
assert r.stdout == "/tmp\n", r
sdk.expect_raises(
    (AuthenticationException, SandboxException), sbx.commands.run, "true", user="nobody-here"
)

# stdin: sent, then closed (cat ends at end of input).
h = sbx.commands.run("cat; echo done", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "line one\n")
sbx.commands.send_stdin(h.pid, "line two\n")
sbx.commands.close_stdin(h.pid)
r = h.wait()
assert r.stdout == "line one\nline two\ndone\n", r

# A background command is listed, can be attached to from another handle, and killed.
h = sbx.commands.run("echo started; sleep 600", background=True)
listed = {p.pid: p for p in sbx.commands.list()}
assert h.pid in listed, listed
assert listed[h.pid].args == ["-l", "-c", "echo started; sleep 600"], listed[h.pid]
assert listed[h.pid].cwd == "/home/user", listed[h.pid]
other = sbx.commands.connect(h.pid)
assert other.pid == h.pid
assert sbx.commands.kill(h.pid) is True
e = sdk.expect_raises(CommandExitException, other.wait)
assert e.exit_code == -1 and "killed" in (e.error or ""), e
assert sbx.commands.kill(h.pid) is False
assert h.pid not in {p.pid for p in sbx.commands.list()}

# On the wire (the SDK has no tags): a tagged Start, found and signalled by its tag; the
# stream carries start, end and the end-stream envelope.
u = urllib.parse.urlparse(sdk.URL)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
conn.request("POST", "/process.Process/Start",
             body=envelope({"process": {"cmd": "/bin/sleep", "args": ["600"]},
                            "tag": "sleeper", "stdin": False}),
             headers={**sdk.HEADERS, "Content-Type": "application/connect+json"})
resp = conn.getresponse()
assert resp.status == 200 and resp.getheader("Content-Type") == "application/connect+json"
flags, msg = read_envelope(resp)
pid = msg["event"]["start"]["pid"]
tagged = [p for p in sbx.commands.list() if p.tag == "sleeper"]
assert [p.pid for p in tagged] == [pid], tagged
status, body = unary("SendSignal", {"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGTERM"})
assert (status, body) == (200, {}), (status, body)
flags, msg = read_envelope(resp)
assert (flags, msg) == (0, {"event": {"end": {"exitCode": -1, "status": "signal: terminated",
                                              "error": "signal: terminated"}}}), msg
assert read_envelope(resp) == (2, {})
status, body = unary("SendSignal", {"process": {"pid": pid}, "signal": 9})
assert status == 404 and body["code"] == "not_found", (status, body)
status, body = unary("SendSignal", {"process": {"pid": 1}, "signal": "SIGHUP"})
assert status == 400 and body["code"] == "invalid_argument" and "signal" in body["message"], body

# A command's timeout ends it.
t = time.monotonic()
sdk.expect_raises(Exception, sbx.commands.run, "sleep 30", timeout=2)
assert time.monotonic() - t < 25
deadline = time.monotonic() + 20
while [p for p in sbx.commands.list() if p.args == ["-l", "-c", "sleep 30"]]:
    assert time.monotonic() < deadline, "the timed-out command still runs"
    time.sleep(0.2)

# Without the sandbox's access token, envd refuses.
bad = sdk.sandbox(token="not-the-token")
sdk.expect_raises((AuthenticationException, SandboxException), bad.commands.run, "true")
print("commands ok")
