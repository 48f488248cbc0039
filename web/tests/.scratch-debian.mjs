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
  await page.getByRole('button', { name: 'Launch a sandbox from debian' }).click();
  await dialog().getByRole('button', { name: 'Create sandbox' }).click();
  await page.waitForURL('**/sandboxes/sbx_*', { timeout: 180000 });
  log('launched ' + page.url());
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.getByText('Connected: /bin/sh').waitFor({ timeout: 30000 });
  await page.waitForTimeout(1000);
  await page.keyboard.type('python3 -c "print(6*7)"; stty size; echo $TERM; ls --color=auto /');
  await page.keyboard.press('Enter');
  await page.waitForTimeout(2000);
  await page.locator('.term-screen').scrollIntoViewIfNeeded();
  await page.screenshot({ path: '/tmp/me/shots/debian-term.png' });
  log(await page.locator('.xterm-rows').innerText());
  // resize: narrower viewport → stty size changes
  await page.setViewportSize({ width: 900, height: 700 });
  await page.waitForTimeout(800);
  await page.keyboard.type('stty size');
  await page.keyboard.press('Enter');
  await page.waitForTimeout(1000);
  log((await page.locator('.xterm-rows').innerText()).split('\n').slice(-4).join('|'));
  await page.keyboard.type('exit');
  await page.keyboard.press('Enter');
  await page.getByText(/The shell exited with code 0/).waitFor();
  log('exit ok');
  await page.screenshot({ path: '/tmp/me/shots/debian-exit.png' });
} catch (e) {
  console.log('FAILED', e.message);
  await page.screenshot({ path: '/tmp/me/shots/fail.png' });
} finally {
  console.log(problems.join('\n'));
  await ctx.close();
}
