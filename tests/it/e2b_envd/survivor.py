"""Before a pause: start a process that must outlive it (prints its pid). After the resume
(argument: that pid): it is still listed, can be attached to, and killed."""

import sys

from e2b import CommandExitException

import sdk

sbx = sdk.sandbox()
if sys.argv[1] == "start":
    h = sbx.commands.run("while true; do echo alive; sleep 1; done", background=True)
    print(h.pid)
else:
    pid = int(sys.argv[2])
    assert pid in [p.pid for p in sbx.commands.list()]
    h = sbx.commands.connect(pid)
    assert sbx.commands.kill(pid)
    try:
        h.wait()
        raise AssertionError("a killed process exited normally")
    except CommandExitException as e:
        assert e.exit_code == -1, e
    print("survivor ok")
