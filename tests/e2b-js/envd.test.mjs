// The JS E2B SDK (e2b@2.51.0) driving envd in a sandbox through the sandboxctl server: run by
// tests/it/e2b/mod.rs with SANDBOX_ID naming a running sandbox of the key's team (with a `user`
// and bash), E2B_API_URL/E2B_SANDBOX_URL the server and E2B_DOMAIN a test domain.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError } from 'e2b'

test('connect, run commands, write and read files', async () => {
  const sbx = await Sandbox.connect(process.env.SANDBOX_ID)
  assert.ok(await sbx.isRunning())

  const r = await sbx.commands.run('echo hi from js; whoami; echo oops >&2')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'hi from js\nuser\n')
  assert.equal(r.stderr, 'oops\n')
  await assert.rejects(sbx.commands.run('exit 7'), (e) => e instanceof CommandExitError && e.exitCode === 7)

  const lines = []
  const h = await sbx.commands.run('echo one; sleep 1; echo two', {
    background: true,
    onStdout: (d) => lines.push(d),
  })
  const done = await h.wait()
  assert.equal(done.exitCode, 0)
  assert.deepEqual(lines.join(''), 'one\ntwo\n')

  const info = await sbx.files.write('js/notes.txt', 'written by js')
  assert.equal(info.path, '/home/user/js/notes.txt')
  assert.equal(await sbx.files.read('/home/user/js/notes.txt'), 'written by js')
  const entries = await sbx.files.list('/home/user/js')
  assert.deepEqual(entries.map((e) => [e.name, e.owner, e.permissions]), [['notes.txt', 'user', '-rw-r--r--']])
  assert.equal(await sbx.files.exists('/home/user/js/missing'), false)
})
