"""Before a pause: a process that must still run after the resume. After: it is there."""

import sys

import sdk

sbx = sdk.sandbox()
if sys.argv[1] == "start":
    h = sbx.commands.run("while true; do sleep 1; done", background=True, tag="survivor")
    print(h.pid)
else:
    procs = [p for p in sbx.commands.list() if p.tag == "survivor"]
    assert len(procs) == 1, procs
    assert sbx.commands.kill(procs[0].pid)
    print("survivor ok")
