"""One create→first-command measurement through the SDK: Sandbox.create(TEMPLATE), then
commands.run("echo hi"); prints the milliseconds between (after the SDK is imported), then kills
the sandbox outside the measurement."""

import sys
import time

from e2b import Sandbox

t0 = time.perf_counter()
sbx = Sandbox.create(sys.argv[1], timeout=300)
r = sbx.commands.run("echo hi")
ms = (time.perf_counter() - t0) * 1000
assert r.stdout == "hi\n", r
sbx.kill()
print(f"{ms:.0f}")
