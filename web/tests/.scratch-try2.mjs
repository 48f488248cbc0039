import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
const BASE = 'http://127.0.0.1:18080';
const ID = process.argv[2];
const ctx = await chromium.launchPersistentContext(mkdtempSync('/tmp/me/prof-'), { executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'], viewport: { width: 1280, height: 800 }, baseURL: BASE, acceptDownloads: true });
const page = ctx.pages()[0];
page.setDefaultTimeout(15000);
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => (m.type() === 'error' || m.type() === 'warning') && problems.push(`console ${m.type()}: ${m.text()}`));
page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
const t0 = Date.now();
const log = (m) => console.log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${m}`);
const dialog = () => page.locator('dialog[open]');
try {
  await page.goto('/login');
  await page.getByLabel('Email').fill('admin@example.com');
  await page.getByLabel('Password').fill('correct horse battery');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL('**/sandboxes');
  await page.goto(`/sandboxes/${ID}`);
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.getByText('Connected: /bin/sh').waitFor({ timeout: 30000 });
  await page.keyboard.type('echo log-mark-1 > /dev/console');
  await page.keyboard.press('Enter');
  log('terminal');
  // files
  await page.getByRole('tab', { name: 'Files' }).click();
  await page.getByRole('textbox', { name: 'Folder path' }).waitFor();
  await page.waitForFunction(() => document.querySelector('input[name=path]')?.value === '/root');
  await page.locator('input[type=file]').setInputFiles({ name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from('hello from the browser\n') });
  await page.locator('tbody tr', { hasText: 'hello.txt' }).waitFor();
  const dl = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download hello.txt' }).click();
  const d = await dl;
  log('downloaded ' + d.suggestedFilename() + ' ' + (await (await import('node:fs')).promises.readFile(await d.path(), 'utf8')).trim());
  await page.getByRole('button', { name: 'New folder' }).click();
  await dialog().getByLabel('Folder name').fill('docs');
  await dialog().getByRole('button', { name: 'Create folder' }).click();
  await page.getByRole('button', { name: 'Open folder docs' }).click();
  await page.waitForFunction(() => document.querySelector('input[name=path]')?.value === '/root/docs');
  await page.getByText('This folder is empty').waitFor();
  await page.getByRole('button', { name: 'Up one folder' }).click();
  await page.locator('tbody tr', { hasText: 'hello.txt' }).waitFor();
  await page.screenshot({ path: '/tmp/me/shots/files.png' });
  log('files');
  // logs
  await page.getByRole('tab', { name: 'Console log' }).click();
  await page.getByLabel('Console log', { exact: true }).getByText('log-mark-1').waitFor();
  await page.screenshot({ path: '/tmp/me/shots/logs.png' });
  log('logs');
  // snapshot
  await page.getByRole('button', { name: `Snapshot ${ID}` }).click();
  await dialog().getByLabel('Template name').fill(process.argv[3] ?? 'snap-dev');
  await dialog().getByRole('button', { name: 'Take snapshot' }).click();
  await page.screenshot({ path: '/tmp/me/shots/snapshotting.png' });
  const r = await Promise.race([dialog().waitFor({ state: 'detached', timeout: 120000 }).then(() => 'done'), dialog().getByText('already has a template').waitFor({ timeout: 120000 }).then(() => 'exists')]);
  log('snapshot ' + r);
  if (r === 'exists') {
    await page.screenshot({ path: '/tmp/me/shots/snapshot-409.png' });
    await dialog().getByRole('button', { name: 'Replace template' }).click();
    await dialog().waitFor({ state: 'detached', timeout: 120000 });
    log('replaced');
  }
  await page.getByRole('tab', { name: 'Terminal' }).click();
  await page.screenshot({ path: '/tmp/me/shots/after-snapshot.png' });
  // pause / resume
  await page.getByRole('button', { name: `Pause ${ID}` }).click();
  await page.locator('h1 .badge', { hasText: 'pausing' }).waitFor();
  await page.screenshot({ path: '/tmp/me/shots/pausing.png' });
  await page.locator('h1 .badge', { hasText: 'paused' }).waitFor({ timeout: 120000 });
  log('paused');
  await page.screenshot({ path: '/tmp/me/shots/paused.png' });
  await page.getByRole('button', { name: `Resume ${ID}` }).click();
  await page.locator('h1 .badge', { hasText: 'running' }).waitFor({ timeout: 120000 });
  log('resumed');
  await page.getByRole('button', { name: /Connect|Reconnect/ }).click();
  await page.getByText('Connected: /bin/sh').waitFor({ timeout: 30000 });
  await page.keyboard.type('cat /root/hello.txt');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('.xterm-rows')?.textContent.includes('hello from the browser'));
  log('terminal after resume');
  await page.screenshot({ path: '/tmp/me/shots/resumed.png' });
  await page.locator('#sidebar').getByRole('link', { name: 'Templates', exact: true }).click();
  await page.locator('tbody tr', { hasText: 'snap-dev' }).waitFor();
  await page.screenshot({ path: '/tmp/me/shots/templates.png' });
  log('templates');
} catch (e) {
  console.log('FAILED', e.message);
  await page.screenshot({ path: '/tmp/me/shots/fail.png' });
} finally {
  console.log(problems.join('\n'));
  await ctx.close();
}
