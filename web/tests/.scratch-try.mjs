import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
const BASE = 'http://127.0.0.1:18080';
const ID = process.argv[2];
const ctx = await chromium.launchPersistentContext(mkdtempSync('/tmp/me/prof-'), { executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'], viewport: { width: 1280, height: 800 }, baseURL: BASE });
const page = ctx.pages()[0];
page.setDefaultTimeout(15000);
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => (m.type() === 'error' || m.type() === 'warning') && problems.push(`console ${m.type()}: ${m.text()}`));
page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
try {
  await page.goto('/login');
  await page.getByLabel('Email').fill('admin@example.com');
  await page.getByLabel('Password').fill('correct horse battery');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL('**/sandboxes');
  await page.goto(`/sandboxes/${ID}`);
  await page.getByRole('tab', { name: 'Terminal' }).waitFor();
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.getByText('Connected: /bin/sh').waitFor({ timeout: 30000 });
  await page.keyboard.type('echo term-$((6*7))');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('.xterm-rows')?.textContent.includes('term-42'), null, { timeout: 20000 });
  await page.screenshot({ path: '/tmp/me/shots/term.png' });
  console.log('rows:', (await page.locator('.xterm-rows').innerText()).slice(0, 500));
} catch (e) {
  console.log('FAILED', e.message);
  await page.screenshot({ path: '/tmp/me/shots/fail.png' });
} finally {
  console.log(problems.join('\n'));
  await ctx.close();
}
