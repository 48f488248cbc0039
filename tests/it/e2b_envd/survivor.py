"""`start`: a process that must outlive a pause and a file beside it, then `sbx.pause()`:
`is_running()` is False and envd is out of reach (502 "was not found"). `check PID`:
`Sandbox.connect` resumes it; the process is still listed, can be attached to and killed, and
the file is intact."""

import sys

from e2b import CommandExitException, Sandbox

import sdk

if sys.argv[1] == "start":
    sbx = sdk.sandbox()
    sbx.files.write("/home/user/before-pause.txt", "kept across the pause")
    h = sbx.commands.run("while true; do echo alive; sleep 1; done", background=True)
    assert sbx.is_running()
    assert sbx.pause() is not False
    assert sbx.is_running() is False, "a paused sandbox is not running"
    assert Sandbox.get_info(sdk.SANDBOX_ID).state.value == "paused"
    print(h.pid)
else:
    pid = int(sys.argv[2])
    sbx = Sandbox.connect(sdk.SANDBOX_ID)  # resumes it
    assert sbx.is_running()
    assert sbx.files.read("/home/user/before-pause.txt") == "kept across the pause"
    assert pid in [p.pid for p in sbx.commands.list()]
    h = sbx.commands.connect(pid)
    assert sbx.commands.kill(pid)
    try:
        h.wait()
        raise AssertionError("a killed process exited normally")
    except CommandExitException as e:
        assert e.exit_code == -1, e
    print("survivor ok")
