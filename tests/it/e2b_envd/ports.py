"""A sandbox's ports through the server as the SDK names them: `get_host(port)` over TLS (the
test CA, 127.0.0.1 with the name in SNI), with the sandbox's traffic token, without it, a closed
port; and the same port by the E2B headers on the plain listener."""

import http.client
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
print("ports ok")
