"""WatchDir (the async SDK's streaming watch)."""

import asyncio

from e2b import FilesystemEventType

import sdk


async def main():
    sbx = await sdk.async_sandbox()
    await sbx.files.make_dir("/tmp/watched-async")
    events = []
    done = asyncio.Event()

    def on_event(e):
        events.append((e.name, e.type))
        if ("sub/f.txt", FilesystemEventType.WRITE) in events:
            done.set()

    h = await sbx.files.watch_dir("/tmp/watched-async", on_event, recursive=True)
    await sbx.files.make_dir("/tmp/watched-async/sub")
    # Give the watcher a moment to add the new directory, then write into it until seen.
    for _ in range(100):
        await sbx.files.write("/tmp/watched-async/sub/f.txt", "x")
        try:
            await asyncio.wait_for(done.wait(), 0.5)
            break
        except asyncio.TimeoutError:
            pass
    assert ("sub", FilesystemEventType.CREATE) in events, events
    assert ("sub/f.txt", FilesystemEventType.WRITE) in events, events
    await h.stop()
    print("watch ok")


sdk.run_async(main)
