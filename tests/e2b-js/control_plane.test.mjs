// The JS E2B SDK (e2b@2.51.0) against a sandboxctl server: run by tests/it/e2b/mod.rs with
// E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY and E2B_DOMAIN naming the test's own server.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, SandboxNotFoundError } from 'e2b'

const TEMPLATE = process.env.E2B_TEST_TEMPLATE ?? 'minimal'

test('create, get, list with filters and pages, kill', async () => {
  const a = await Sandbox.create(TEMPLATE, {
    metadata: { suite: 'js', tag: 'a', 'odd key': 'a&b=c' },
    timeoutMs: 120_000,
  })
  const b = await Sandbox.create(TEMPLATE, { metadata: { suite: 'js', tag: 'b' } })
  try {
    const info = await a.getInfo()
    assert.equal(info.sandboxId, a.sandboxId)
    assert.equal(info.state, 'running')
    assert.equal(info.metadata['odd key'], 'a&b=c')
    const left = info.endAt.getTime() - Date.now()
    assert.ok(left > 60_000 && left <= 121_000, `endAt ${info.endAt.toISOString()}`)

    const pages = []
    const paginator = Sandbox.list({ query: { metadata: { suite: 'js' } }, limit: 1 })
    while (paginator.hasNext) {
      pages.push(await paginator.nextItems())
    }
    // One per page, each once, newest start first (start times are whole seconds: two
    // sandboxes started in the same second come in id order).
    assert.deepEqual(pages.map((p) => p.length), [1, 1])
    const seen = pages.map((p) => p[0])
    assert.deepEqual(seen.map((s) => s.sandboxId).sort(), [a.sandboxId, b.sandboxId].sort())
    assert.ok(seen[0].startedAt.getTime() >= seen[1].startedAt.getTime(), 'newest first')

    const odd = await Sandbox.list({ query: { metadata: { 'odd key': 'a&b=c' } } }).nextItems()
    assert.deepEqual(odd.map((s) => s.sandboxId), [a.sandboxId])
    const paused = await Sandbox.list({ query: { state: ['paused'] } }).nextItems()
    assert.deepEqual(paused, [])
  } finally {
    assert.equal(await Sandbox.kill(a.sandboxId), true)
    assert.equal(await Sandbox.kill(b.sandboxId), true)
  }
  assert.equal(await Sandbox.kill(a.sandboxId), false)
  await assert.rejects(Sandbox.getInfo(a.sandboxId), SandboxNotFoundError)
})
