"""The E2B Python SDK (e2b==2.63.0) against a sandboxctl server: control-plane steps.

Run by tests/it/e2b/mod.rs as `python control_plane.py STEP [ARGS...]` with E2B_API_URL,
E2B_SANDBOX_URL, E2B_API_KEY and E2B_DOMAIN pointing at the test's server. Each step asserts what
the SDK shows and prints one JSON line with what the Rust side checks next.
"""

import json
import sys
from datetime import datetime, timedelta, timezone

from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import InvalidArgumentException, SandboxException, SandboxNotFoundException

TEMPLATE = "minimal"


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


def create(tag, auto_pause="no"):
    lifecycle = {"on_timeout": "pause"} if auto_pause == "pause" else None
    sbx = Sandbox.create(
        TEMPLATE,
        timeout=600,
        metadata={"suite": "e2b", "tag": tag, "odd key": "a&b=c"},
        envs={"GREETING": "hello"},
        lifecycle=lifecycle,
    )
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.state == SandboxState.RUNNING, info.state
    assert info.metadata["tag"] == tag and info.metadata["odd key"] == "a&b=c", info.metadata
    assert info.template_id == TEMPLATE, info.template_id
    left = (info.end_at - datetime.now(timezone.utc)).total_seconds()
    assert 500 < left <= 610, left
    out(id=sbx.sandbox_id, end_at=info.end_at.isoformat(), started_at=info.started_at.isoformat())


def page_through(query, limit):
    """Every page of Sandbox.list, as lists of ids."""
    pages = []
    paginator = Sandbox.list(query=query, limit=limit)
    while paginator.has_next:
        pages.append([s.sandbox_id for s in paginator.next_items()])
    return pages


def list_filters(a, b):
    both = SandboxQuery(metadata={"suite": "e2b"})
    pages = page_through(both, 1)
    assert len(pages) == 2 and all(len(p) == 1 for p in pages), pages
    assert sorted(p[0] for p in pages) == sorted([a, b]), pages
    # Newest first by default: b was created after a.
    assert pages == [[b], [a]], pages
    only_a = page_through(SandboxQuery(metadata={"tag": "a", "odd key": "a&b=c"}), None)
    assert only_a == [[a]], only_a
    nobody = page_through(SandboxQuery(metadata={"tag": "a", "suite": "other"}), None)
    assert nobody == [[]], nobody
    paused = page_through(SandboxQuery(state=[SandboxState.PAUSED]), None)
    assert paused == [[]], paused
    running = page_through(SandboxQuery(state=[SandboxState.RUNNING], template=TEMPLATE), 10)
    assert sorted(running[0]) == sorted([a, b]), running
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    none_later = page_through(SandboxQuery(started_after=later), None)
    assert none_later == [[]], none_later
    out(pages=pages)


def timeouts(a):
    sbx = Sandbox.connect(a)
    sbx.set_timeout(60)
    left = (sbx.get_info().end_at - datetime.now(timezone.utc)).total_seconds()
    assert 40 < left <= 61, f"set_timeout shortens: {left}"
    Sandbox.connect(a, timeout=3600)
    left = (Sandbox.get_info(a).end_at - datetime.now(timezone.utc)).total_seconds()
    assert 3500 < left <= 3601, f"connect extends: {left}"
    Sandbox.connect(a, timeout=10)
    left = (Sandbox.get_info(a).end_at - datetime.now(timezone.utc)).total_seconds()
    assert left > 3500, f"connect never shortens: {left}"
    out(left=left)


def pause_resume(a):
    sbx = Sandbox.connect(a)
    assert sbx.pause() is True
    assert Sandbox.get_info(a).state == SandboxState.PAUSED
    assert sbx.pause() is False, "pausing a paused sandbox answers 409 -> False"
    paused = page_through(SandboxQuery(state=[SandboxState.PAUSED]), None)
    assert paused == [[a]], paused
    resumed = Sandbox.connect(a, timeout=900)
    assert resumed.sandbox_id == a
    info = Sandbox.get_info(a)
    assert info.state == SandboxState.RUNNING, info.state
    out(state=str(info.state))


def snapshots(a):
    sbx = Sandbox.connect(a)
    snap = sbx.create_snapshot()
    assert snap.snapshot_id, snap
    named = sbx.create_snapshot(name="e2b-named")
    assert named.snapshot_id == "e2b-named", named
    listed = []
    paginator = Sandbox.list_snapshots(limit=1)
    while paginator.has_next:
        listed.extend(s.snapshot_id for s in paginator.next_items())
    assert sorted(listed) == sorted([snap.snapshot_id, "e2b-named"]), listed
    mine = Sandbox.list_snapshots(sandbox_id=a).next_items()
    assert len(mine) == 2, mine
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    out(kept="e2b-named")


def deadline(a, b):
    Sandbox.connect(a).set_timeout(5)
    Sandbox.connect(b).set_timeout(5)
    out(ok=True)


def after_deadline(killed, paused):
    try:
        Sandbox.get_info(killed)
        raise AssertionError("a sandbox past its deadline is gone")
    except SandboxNotFoundException:
        pass
    assert Sandbox.get_info(paused).state == SandboxState.PAUSED
    resumed = Sandbox.connect(paused)
    info = Sandbox.get_info(paused)
    assert info.state == SandboxState.RUNNING
    left = (info.end_at - datetime.now(timezone.utc)).total_seconds()
    # The Rust side moved the server's clock: what the server says is its own now + 300 s.
    out(id=resumed.sandbox_id, end_at=info.end_at.isoformat())


def refused(a):
    for kw, field in [
        ({"lifecycle": {"on_timeout": {"action": "pause", "mode": "filesystem"}}}, "autoPauseMemory"),
        ({"network": {"allow_out": ["example.com"]}}, "network.allowOut"),
    ]:
        try:
            Sandbox.create(TEMPLATE, **kw)
            raise AssertionError(f"{kw} was accepted")
        except (SandboxException, InvalidArgumentException) as e:
            assert field in str(e), (field, str(e))
    out(ok=True)


def kill(a):
    assert Sandbox.kill(a) is True
    assert Sandbox.kill(a) is False
    try:
        Sandbox.connect(a)
        raise AssertionError("connect to a killed sandbox")
    except SandboxNotFoundException:
        pass
    out(ok=True)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
