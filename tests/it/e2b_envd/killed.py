"""A command running while its sandbox is killed ends with the SDK's not-running error (the
open stream is cut, the SDK's health probe gets 502 "was not found"), not a hang. Ends the
sandbox."""

import threading
import time

from e2b import Sandbox
from e2b.exceptions import SandboxNotRunningException

import sdk

sbx = sdk.sandbox()
h = sbx.commands.run("echo started; sleep 600", background=True, timeout=0)
threading.Timer(2.0, lambda: Sandbox.kill(sdk.SANDBOX_ID)).start()
t = time.monotonic()
try:
    h.wait()
    raise AssertionError("a command in a killed sandbox ended normally")
except SandboxNotRunningException as e:
    print("killed:", e)
assert time.monotonic() - t < 120
assert sbx.is_running() is False
print("killed ok")
