"""The official E2B SDK connected to one sandbox through the test's sandboxctl server, the way a
user's code is: E2B_API_URL and E2B_SANDBOX_URL are the server's loopback URL, E2B_DOMAIN a test
domain, and `Sandbox.connect(SANDBOX_ID)` answers the sandbox's envdVersion, access token and
domain. Requests the SDK builds as URLs (`download_url()`, `get_host()`) go to the server's TLS
listener on 127.0.0.1 with the host name in SNI and `Host` (no DNS), trusting the test's CA.

The Rust test (tests/it/e2b_envd/mod.rs) sets SANDBOX_ID, TLS_PORT and TEST_CA."""

import http.client
import os
import socket
import ssl
import urllib.parse

from e2b import AsyncSandbox, Sandbox
from e2b.connection_config import ConnectionConfig

URL = os.environ["E2B_SANDBOX_URL"]
DOMAIN = os.environ["E2B_DOMAIN"]
SANDBOX_ID = os.environ["SANDBOX_ID"]
TLS_PORT = int(os.environ["TLS_PORT"])
CA = ssl.create_default_context(cafile=os.environ["TEST_CA"])

_first = Sandbox.connect(SANDBOX_ID)
TOKEN = _first._envd_access_token
VERSION = _first._envd_version
assert TOKEN, "connect answers the sandbox's envdAccessToken"
assert _first.traffic_access_token == TOKEN, "and the same token for its ports"
# Every envd request the SDK sends for this sandbox names it: header routing needs nothing else.
HEADERS = {"E2b-Sandbox-Id": SANDBOX_ID, "E2b-Sandbox-Port": "49983", "X-Access-Token": TOKEN}


def sandbox(token=TOKEN) -> Sandbox:
    if token == TOKEN:
        return Sandbox.connect(SANDBOX_ID)
    # The same sandbox with a wrong token (what connect would answer, but not the token).
    return Sandbox(
        sandbox_id=SANDBOX_ID,
        sandbox_domain=DOMAIN,
        envd_version=VERSION,
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=ConnectionConfig(
            extra_sandbox_headers={"E2b-Sandbox-Id": SANDBOX_ID, "E2b-Sandbox-Port": "49983",
                                   "X-Access-Token": token}
        ),
    )


async def async_sandbox() -> AsyncSandbox:
    return await AsyncSandbox.connect(SANDBOX_ID)


def by_host(host, method, path, body=None, headers=None):
    """One HTTPS request to `host` (a `{port}-{id}.{domain}` name) at the server's TLS listener
    on 127.0.0.1: (status, headers, body)."""
    conn = http.client.HTTPSConnection(host, TLS_PORT, context=CA, timeout=60)
    conn._create_connection = lambda addr, *a, **k: socket.create_connection(
        ("127.0.0.1", addr[1]), *a, **k)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def fetch(url, method="GET", body=None, headers=None):
    """A URL the SDK built for envd (`download_url()`, `upload_url()`: the sandbox URL, which
    names no sandbox) sent to envd's host name `49983-{id}.{domain}` instead: (status, body)."""
    u = urllib.parse.urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    status, _, data = by_host(f"49983-{SANDBOX_ID}.{DOMAIN}", method, path, body, headers)
    return status, data


def expect_raises(kind, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except kind as e:
        return e
    raise AssertionError(f"{fn.__name__} did not raise {kind.__name__}")


def run_async(main) -> None:
    """Runs the async script `main` and leaves without the interpreter's teardown: everything was
    checked inside `main`, and on a loaded machine the teardown of the SDK's async transports has
    aborted (SIGABRT) after the script's last line."""
    import asyncio
    import sys

    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)
