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
try {
  await page.goto('/login');
  await page.getByLabel('Email').fill('admin@example.com');
  await page.getByLabel('Password').fill('correct horse battery');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL('**/sandboxes');
  await page.locator('tbody tr').first().waitFor();
  await page.screenshot({ path: '/tmp/me/shots/list.png' });
  await page.goto('/templates');
  await page.locator('tbody tr', { hasText: 'minimal' }).waitFor();
  await page.screenshot({ path: '/tmp/me/shots/templates.png' });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: '/tmp/me/shots/templates-phone.png', fullPage: true });
  await page.goto('/sandboxes');
  await page.locator('tbody tr').first().waitFor();
  await page.screenshot({ path: '/tmp/me/shots/list-phone.png', fullPage: true });
  await page.goto(`/sandboxes/${ID}`);
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.getByText('Connected: /bin/sh').waitFor({ timeout: 30000 });
  await page.keyboard.type('ls -la /');
  await page.keyboard.press('Enter');
  await page.waitForTimeout(500);
  await page.screenshot({ path: '/tmp/me/shots/sandbox-phone.png', fullPage: true });
  await page.getByRole('tab', { name: 'Files' }).click();
  await page.locator('tbody tr').first().waitFor();
  await page.screenshot({ path: '/tmp/me/shots/files-phone.png', fullPage: true });
  console.log('cols', await page.evaluate(() => document.documentElement.scrollWidth));
} catch (e) {
  console.log('FAILED', e.message);
  await page.screenshot({ path: '/tmp/me/shots/fail.png' });
} finally {
  console.log(problems.join('\n'));
  await ctx.close();
}
