"""One create→first-command measurement through the SDK: Sandbox.create(TEMPLATE), then
commands.run("echo hi"); prints the milliseconds between (after the SDK is imported), and the
two parts, then kills the sandbox outside the measurement."""

import sys
import time

from e2b import Sandbox

t0 = time.perf_counter()
sbx = Sandbox.create(sys.argv[1], timeout=300)
t1 = time.perf_counter()
r = sbx.commands.run("echo hi")
t2 = time.perf_counter()
assert r.stdout == "hi\n", r
sbx.kill()
# total, then create and the first command apart
print(f"{(t2 - t0) * 1000:.0f} {(t1 - t0) * 1000:.0f} {(t2 - t1) * 1000:.0f}")
