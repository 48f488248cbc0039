import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
const BASE = 'http://127.0.0.1:18080';
const ctx = await chromium.launchPersistentContext(mkdtempSync('/tmp/me/prof-'), { executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'], viewport: { width: 1280, height: 800 }, baseURL: BASE });
const page = ctx.pages()[0];
page.setDefaultTimeout(15000);
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => (m.type() === 'error' || m.type() === 'warning') && problems.push(`console ${m.type()}: ${m.text()}`));
const dialog = () => page.locator('dialog[open]');
const t0 = Date.now();
const log = (m) => console.log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${m}`);
try {
  await page.goto('/login');
  await page.getByLabel('Email').fill('admin@example.com');
  await page.getByLabel('Password').fill('correct horse battery');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL('**/sandboxes');
  await page.goto('/templates');
  await page.getByRole('button', { name: 'Launch a sandbox from base-snap' }).click();
  await page.screenshot({ path: '/tmp/me/shots/launch-dialog.png' });
  await dialog().getByRole('button', { name: 'Create sandbox' }).click();
  await page.waitForURL('**/sandboxes/sbx_*', { timeout: 120000 });
  log('launched ' + page.url());
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.getByText('Connected: /bin/sh').waitFor({ timeout: 30000 });
  log('connected');
  if (process.argv[2] === 'build') {
    await page.goto('/templates');
    await page.getByRole('button', { name: 'Build debian' }).click();
    await page.getByRole('heading', { name: 'Building debian' }).waitFor();
    for (let i = 0; i < 6; i++) {
      await page.waitForTimeout(10000);
      log(await page.locator('.build-list').innerText());
      await page.screenshot({ path: `/tmp/me/shots/build-${i}.png` });
    }
  }
} catch (e) {
  console.log('FAILED', e.message);
  await page.screenshot({ path: '/tmp/me/shots/fail.png' });
} finally {
  console.log(problems.join('\n'));
  await ctx.close();
}
