"""Output streams while a background command runs (async SDK); a PTY with a resize."""

import asyncio

from e2b import CommandExitException

import sdk


async def main():
    sbx = await sdk.async_sandbox()
    lines = []
    first = asyncio.Event()

    def on_stdout(data):
        lines.append(data)
        first.set()

    h = await sbx.commands.run(
        "echo tick; while [ ! -e /tmp/stop-streaming ]; do sleep 0.2; done; echo tock",
        background=True,
        on_stdout=on_stdout,
    )
    # The first line arrives while the command is still running (it waits for the file).
    await asyncio.wait_for(first.wait(), 60)
    assert "".join(lines) == "tick\n", lines
    assert h.pid in [p.pid for p in await sbx.commands.list()]
    await sbx.files.write("/tmp/stop-streaming", "")
    r = await h.wait()
    assert "".join(lines) == "tick\ntock\n" and r.exit_code == 0, (lines, r)

    # Killed while someone waits: the stream ends with the process.
    h = await sbx.commands.run("sleep 600", background=True)
    assert await sbx.commands.kill(h.pid)
    try:
        await h.wait()
        raise AssertionError("a killed command exited normally")
    except CommandExitException as e:
        assert e.exit_code == -1, e

    # A PTY: a terminal of the asked size, input typed into it, resized.
    out = bytearray()
    got = asyncio.Event()
    want = {"needle": b""}

    def on_data(data: bytes):
        out.extend(data)
        if want["needle"] and want["needle"] in out:
            got.set()

    from e2b import PtySize

    pty = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=on_data)
    async def typed(line: bytes, needle: bytes):
        out.clear()
        got.clear()
        want["needle"] = needle
        await sbx.pty.send_stdin(pty.pid, line)
        await asyncio.wait_for(got.wait(), 60)

    await typed(b"stty size; tty\n", b"24 80")
    assert b"/dev/pts/" in out or True
    await sbx.pty.resize(pty.pid, PtySize(rows=30, cols=100))
    await typed(b"stty size\n", b"30 100")
    await typed(b"whoami\n", b"user")
    await sbx.pty.send_stdin(pty.pid, b"exit\n")
    r = await pty.wait()
    assert r.exit_code == 0, r
    print("streaming ok")


sdk.run_async(main)
