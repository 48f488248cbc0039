"""A sandbox's ports through the server as the SDK names them: `get_host(port)` over TLS (the
test CA, 127.0.0.1 with the name in SNI), with the sandbox's traffic token, without it, a closed
port; and the same port by the E2B headers on the plain listener."""

import base64
import hashlib
import http.client
import socket
import time
import urllib.parse

import sdk

sbx = sdk.sandbox()
sbx.files.write("/tmp/www/index.html", "hello from port 8000")
sbx.commands.run("httpd -p 8000 -h /tmp/www", user="root")

host = sbx.get_host(8000)
assert host == f"8000-{sdk.SANDBOX_ID}.{sdk.DOMAIN}", host
token = {"E2B-Traffic-Access-Token": sbx.traffic_access_token}

deadline = time.monotonic() + 30
while True:
    status, _, body = sdk.by_host(host, "GET", "/index.html", headers=token)
    if status == 200 or time.monotonic() > deadline:
        break
    time.sleep(0.3)
assert (status, body) == (200, b"hello from port 8000"), (status, body)

# Private by default: no token is 401; a wrong one 403.
status, _, body = sdk.by_host(host, "GET", "/index.html")
assert status == 401 and b"private" in body, (status, body)
status, _, _ = sdk.by_host(host, "GET", "/index.html", headers={"X-Access-Token": "nope"})
assert status == 403, status

# Nothing listens on 8009: E2B's "port is not open".
status, _, body = sdk.by_host(sbx.get_host(8009), "GET", "/", headers=token)
assert status == 502 and b"port is not open" in body, (status, body)

# The same port by the headers, on the server's plain-HTTP listener (E2B_SANDBOX_URL).
u = urllib.parse.urlparse(sdk.URL)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
conn.request("GET", "/index.html", headers={"E2b-Sandbox-Id": sdk.SANDBOX_ID,
                                            "E2b-Sandbox-Port": "8000", **token})
resp = conn.getresponse()
assert (resp.status, resp.read()) == (200, b"hello from port 8000")
# A WebSocket through a port, by host name over TLS: the handshake, then bytes both ways. The
# app answers the upgrade and echoes every byte after it.
WS = r"""#!/bin/sh
key=
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in
    [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(printf '%s' "${line#*:}" | tr -d ' ') ;;
  esac
done
accept=$(printf '%s' "${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
exec cat
"""
sbx.files.write("/tmp/ws.sh", WS, user="root")
sbx.commands.run("chmod 755 /tmp/ws.sh && setsid sh -c 'nc -ll -p 8002 -e /tmp/ws.sh "
                 "</dev/null >/dev/null 2>&1 &'", user="root")
key = base64.b64encode(b"sandboxctl-e2b-ws").decode()
want = base64.b64encode(hashlib.sha1(
    (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
ws_host = sbx.get_host(8002)
deadline = time.monotonic() + 30
while True:
    raw = socket.create_connection(("127.0.0.1", sdk.TLS_PORT), timeout=60)
    tls = sdk.CA.wrap_socket(raw, server_hostname=ws_host)
    tls.sendall((f"GET /chat HTTP/1.1\r\nHost: {ws_host}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n"
                 f"E2B-Traffic-Access-Token: {sbx.traffic_access_token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = tls.recv(1)
        if not got:
            break
        head += got
    if head.startswith(b"HTTP/1.1 101") or time.monotonic() > deadline:
        break
    tls.close()
    time.sleep(0.3)
assert head.startswith(b"HTTP/1.1 101"), head
fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
fields = {k.lower(): v for k, v in fields.items()}
assert fields.get("sec-websocket-accept") == want, head
mask = bytes([0x37, 0xFA, 0x21, 0x3D])
text = b"hello over a websocket"
frame = bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
tls.sendall(frame)
echoed = b""
while len(echoed) < len(frame):
    echoed += tls.recv(len(frame) - len(echoed))
assert echoed == frame, echoed
tls.close()
print("ports ok")
