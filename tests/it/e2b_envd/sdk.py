"""Connects the official E2B SDK to one sandbox's envd, the way Sandbox.create() does with the
control plane's answer: envdVersion 0.5.7 and the sandbox's access token (X-Access-Token).

The Rust test (tests/it/e2b_envd/mod.rs) sets ENVD_URL, ENVD_TOKEN and SANDBOX_ID."""

import os

from packaging.version import Version

from e2b import AsyncSandbox, Sandbox
from e2b.connection_config import ConnectionConfig

URL = os.environ["ENVD_URL"]
TOKEN = os.environ["ENVD_TOKEN"]
SANDBOX_ID = os.environ["SANDBOX_ID"]
# What the E2B front-end reports (proto::e2b::ENVD_VERSION).
VERSION = Version(os.environ.get("ENVD_VERSION", "0.5.7"))


def _opts(token=TOKEN):
    headers = {"E2b-Sandbox-Id": SANDBOX_ID, "E2b-Sandbox-Port": "49983"}
    if token is not None:
        headers["X-Access-Token"] = token
    return dict(
        sandbox_id=SANDBOX_ID,
        sandbox_domain=None,
        envd_version=VERSION,
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=ConnectionConfig(
            api_key="unused", sandbox_url=URL, extra_sandbox_headers=headers
        ),
    )


def sandbox(token=TOKEN) -> Sandbox:
    return Sandbox(**_opts(token))


def async_sandbox(token=TOKEN) -> AsyncSandbox:
    return AsyncSandbox(**_opts(token))


def expect_raises(kind, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except kind as e:
        return e
    raise AssertionError(f"{fn.__name__} did not raise {kind.__name__}")
