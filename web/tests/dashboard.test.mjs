// The dashboard in a real Chromium against a real sandboxctl server with a real agent.
//
// Run by tests/it/web.rs (cargo test), which starts the server and agent and sets:
//   SANDBOXCTL_URL          the server, e.g. http://127.0.0.1:40123
//   SANDBOXCTL_ADMIN_EMAIL  the platform admin (first account), SANDBOXCTL_ADMIN_PASSWORD its password
//   SANDBOXCTL_AGENT_HOST   the id of the host whose agent runs (regular host, online)
//   SANDBOXCTL_CLOSED_URL   a second, fresh server started with --signup closed --bootstrap-requires-token,
//   SANDBOXCTL_CLOSED_BOOTSTRAP  and its bootstrap token
//   SCREENSHOT_DIR          where the page screenshots go (default ../../target/screenshots)
//   CHROMIUM                the browser (default /usr/bin/chromium)
// By hand: node --test web/tests/ with those set.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = need('SANDBOXCTL_URL').replace(/\/$/, '');
const ADMIN_EMAIL = need('SANDBOXCTL_ADMIN_EMAIL');
const ADMIN_PASSWORD = need('SANDBOXCTL_ADMIN_PASSWORD');
const AGENT_HOST = need('SANDBOXCTL_AGENT_HOST');
const CLOSED = need('SANDBOXCTL_CLOSED_URL').replace(/\/$/, '');
const CLOSED_BOOTSTRAP = need('SANDBOXCTL_CLOSED_BOOTSTRAP');
const SHOTS = resolve(process.env.SCREENSHOT_DIR ?? join(here, '..', '..', 'target', 'screenshots'));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PASSWORD = 'correct horse battery';
const RUN = Date.now().toString(36);
const ADA = { name: 'Ada Lovelace', email: `ada-${RUN}@example.com` };
const GRACE = { name: 'Grace Hopper', email: `grace-${RUN}@example.com` };

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this through cargo test (tests/it/web.rs), or set it by hand`);
  return v;
}

/** Runs the steps in order; after the first failure the rest are skipped, not piled on. */
function stepper(t) {
  let failed = null;
  return async (name, fn) => {
    await t.test(name, { skip: failed ? `an earlier step failed (${failed})` : false }, async () => {
      const started = Date.now();
      try {
        await fn();
      } catch (err) {
        failed = name;
        await shot(`FAILED-${name.replace(/\W+/g, '-')}`).catch(() => {});
        throw err;
      } finally {
        timings.push(`${name}: ${Date.now() - started} ms`);
      }
    });
  };
}

let context;
let page;
const timings = [];
const problems = [];

/** A screenshot of the viewport; `quiet` first clears the toasts (so they hide nothing). */
async function shot(name, { quiet = false } = {}) {
  if (quiet) await page.evaluate(() => document.querySelector('.toasts')?.replaceChildren());
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

const sidebar = () => page.locator('#sidebar');
const main = () => page.locator('main');
const dialog = () => page.locator('dialog[open]');
const row = (text) => page.locator('tbody tr', { hasText: text });

async function go(label) {
  await sidebar().getByRole('link', { name: label, exact: true }).click();
  await page.getByRole('heading', { level: 1 }).first().waitFor();
}

/** A token of a new session for `email`, signed in from here (not the browser). */
async function apiLogin(email, password) {
  const r = await fetch(`${BASE}/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, password }) });
  assert.equal(r.status, 200, `login as ${email}`);
  return (await r.json()).token;
}

/** The status GET /v1/me answers `token` with. */
async function meStatus(token) {
  return (await fetch(`${BASE}/v1/me`, { headers: { authorization: `Bearer ${token}` } })).status;
}

/** Accepts an invite link through the REST API as the admin (the browser keeps its own session). */
async function adminAccepts(link) {
  const json = { 'content-type': 'application/json' };
  const login = await fetch(`${BASE}/v1/auth/login`, { method: 'POST', headers: json, body: JSON.stringify({ email: ADMIN_EMAIL, password: ADMIN_PASSWORD }) });
  assert.equal(login.status, 200);
  const { token } = await login.json();
  const invite = new URL(link).hash.replace(/^#invite=/, '');
  const r = await fetch(`${BASE}/v1/invites/accept`, { method: 'POST', headers: { ...json, authorization: `Bearer ${token}` }, body: JSON.stringify({ token: invite }) });
  assert.equal(r.status, 200, await r.text());
}

/** Makes an invite link on the team page for `role`; returns the link shown. */
async function makeInvite(role) {
  await page.getByLabel('Role', { exact: true }).selectOption(role);
  await page.getByRole('button', { name: 'Create invite link', exact: true }).click();
  const link = page.getByRole('textbox', { name: 'Invite link' });
  await link.waitFor();
  await page.waitForFunction((prev) => document.querySelector('input[aria-label="Invite link"]')?.value !== prev, makeInvite.last ?? '');
  makeInvite.last = await link.inputValue();
  assert.match(makeInvite.last, new RegExp(`^${BASE}/#invite=sbi_`));
  return makeInvite.last;
}

async function signIn(email, password) {
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
}

test('the dashboard in a real browser', { timeout: 240_000 }, async (t) => {
  mkdirSync(SHOTS, { recursive: true });
  for (const f of readdirSync(SHOTS)) if (f.startsWith('FAILED-')) rmSync(join(SHOTS, f));
  const profile = mkdtempSync(join(tmpdir(), 'sandboxctl-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-quic'],
    viewport: { width: 1280, height: 800 },
    baseURL: BASE,
  });
  t.after(async () => {
    await context?.close();
    rmSync(profile, { recursive: true, force: true });
    console.log(`step timings:\n  ${timings.join('\n  ')}`);
  });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  // Script errors and CSP refusals are bugs; failed requests the app handles (401, 409) are not.
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && !/Failed to load resource/.test(m.text()) && problems.push(`console: ${m.text()}`));
  page.on('requestfailed', (r) => !/ERR_ABORTED/.test(r.failure()?.errorText ?? '') && problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('request', (r) => !r.url().startsWith(BASE) && !r.url().startsWith(CLOSED) && !/^(data|blob):/.test(r.url()) && problems.push(`external request: ${r.url()}`));
  // Tokens never travel in URLs (the one-time download tickets are the exception).
  page.on('request', (r) => /access_token=|oauth_token=|eyJ/.test(r.url()) && problems.push(`token in a URL: ${r.url()}`));
  page.on('websocket', (ws) => /token=|eyJ/.test(ws.url()) && problems.push(`token in a WebSocket URL: ${ws.url()}`));

  const step = stepper(t);
  let keyValue;
  let sandboxId;
  let pendingHost;

  await step('the app loads and asks to sign in; a wrong password is refused readably', async () => {
    await page.goto('/');
    await page.waitForURL('**/login');
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await shot('login');
    await signIn('nobody@example.com', 'not the password');
    await main().getByRole('alert').getByText('Wrong email or password.').waitFor();
  });

  await step('sign up: the sidebar shows the name, not the email', async () => {
    await page.getByRole('link', { name: 'Create an account' }).click();
    await page.waitForURL('**/signup');
    await page.getByLabel('Name').fill(ADA.name);
    await page.getByLabel('Email').fill(ADA.email);
    await page.getByLabel('Password').fill('short');
    await page.getByRole('button', { name: 'Create account', exact: true }).click();
    await page.getByText('The password must be at least 8 characters.').waitFor();
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Create account', exact: true }).click();
    await page.waitForURL('**/sandboxes');
    await sidebar().locator('.user-name').getByText(ADA.name, { exact: true }).waitFor();
    assert.ok(!(await sidebar().innerText()).includes(ADA.email), 'the sidebar shows the email');
    await sidebar().getByRole('link', { name: 'Hosts' }).waitFor(); // owner of the personal team
  });

  await step('the session survives a reload', async () => {
    await page.reload();
    await sidebar().locator('.user-name').getByText(ADA.name).waitFor();
    assert.match(page.url(), /\/sandboxes$/);
  });

  await step('the account page: sessions, signing one out, and the password', async () => {
    const elsewhere = await apiLogin(ADA.email, PASSWORD);
    await go('Account');
    const sessions = page.getByRole('table', { name: 'Sessions' });
    await sessions.locator('tbody tr').nth(1).waitFor();
    assert.equal(await sessions.locator('tbody tr').count(), 2);
    await sessions.locator('tbody tr', { hasText: 'this session' }).getByText(/Chrome/).waitFor();
    const other = sessions.locator('tbody tr', { hasNotText: 'this session' });
    await shot('account', { quiet: true });
    await other.getByRole('button', { name: /^Sign out/ }).click();
    await dialog().getByRole('button', { name: 'Sign out', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await page.locator('.toast', { hasText: 'Signed out that session.' }).waitFor();
    await sessions.locator('tbody tr').nth(1).waitFor({ state: 'detached' });
    assert.equal(await meStatus(elsewhere), 401, 'the session signed out from the list still works');
    // The password: a wrong current one is said so; the change signs every other session out.
    const third = await apiLogin(ADA.email, PASSWORD);
    await page.getByLabel('Current password').fill('not my password');
    await page.getByLabel('New password').fill(`${PASSWORD} 2`);
    await page.getByRole('button', { name: 'Change password', exact: true }).click();
    await main().getByRole('alert').getByText('That is not your current password.').waitFor();
    assert.equal(await meStatus(third), 200);
    await page.getByLabel('Current password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Change password', exact: true }).click();
    await page.locator('.toast', { hasText: 'Password changed. 1 other session was signed out.' }).waitFor();
    assert.equal(await meStatus(third), 401, 'a session outlived the password change');
    await sidebar().locator('.user-name').getByText(ADA.name).waitFor();
    const mine = await page.evaluate(() => localStorage.getItem('sandboxctl.token'));
    assert.equal(await meStatus(mine), 200);
    // Back to the old password for the later steps (this session stays).
    const back = await fetch(`${BASE}/v1/auth/password`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${mine}` },
      body: JSON.stringify({ current_password: `${PASSWORD} 2`, new_password: PASSWORD }),
    });
    assert.equal(back.status, 200, await back.text());
  });

  await step('a link with a token or an error in its fragment signs nobody in or out', async () => {
    // Someone else's valid token in the old hand-off fragment (login CSRF) is ignored.
    const admins = await apiLogin(ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.goto(`/sandboxes#oauth_token=${admins}`);
    await sidebar().locator('.user-name').getByText(ADA.name).waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem('sandboxctl.token')) === admins, false);
    assert.ok(!page.url().includes(admins), 'the token stays in the address bar');
    // An error does not log out; "done" without this browser's hand-off cookie signs nobody in.
    // (Other paths each time: a change of fragment alone does not load the page again.)
    await page.goto('/templates#oauth_error=oauth_failed');
    await page.locator('.toast', { hasText: 'Signing in with GitHub did not work' }).waitFor();
    await sidebar().locator('.user-name').getByText(ADA.name).waitFor();
    await page.goto('/keys#oauth=done');
    await page.locator('.toast', { hasText: 'Signing in with GitHub did not work' }).waitFor();
    await sidebar().locator('.user-name').getByText(ADA.name).waitFor();
    // (The one token that showed up in a URL above was put there by this test.)
    problems.splice(0, problems.length, ...problems.filter((p) => !p.includes(admins)));
  });

  await step('an API key is shown once, with a copy button', async () => {
    await go('API keys');
    await page.getByLabel('Name').fill('ci');
    await page.getByRole('button', { name: 'Create key', exact: true }).click();
    const shown = page.getByRole('textbox', { name: 'API key' });
    await shown.waitFor();
    keyValue = await shown.inputValue();
    assert.match(keyValue, /^sk_/);
    await page.getByRole('button', { name: 'Copy', exact: true }).click();
    await page.getByRole('button', { name: 'Copied', exact: true }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), keyValue);
    await row('ci').getByText(`${keyValue.slice(0, 10)}…`).waitFor();
    await shot('keys');
    await page.getByRole('button', { name: 'I have copied it', exact: true }).click();
    await page.reload();
    await row('ci').waitFor();
    assert.ok(!(await page.content()).includes(keyValue), 'the key is shown again');
  });

  await step('team page: separate Name and Email columns; an invite link adds a member, another is revoked', async () => {
    await go('Team');
    const headers = await main().locator('table thead th').allInnerTexts();
    assert.deepEqual(headers.slice(0, 3).map((x) => x.trim()), ['Name', 'Email', 'Role']);
    const me = row(ADA.email);
    assert.equal((await me.locator('td').nth(0).innerText()).replace(' (you)', '').trim(), ADA.name);
    assert.equal((await me.locator('td').nth(1).innerText()).trim(), ADA.email);
    await page.getByText('No pending invites').waitFor();
    const link = await makeInvite('member');
    await page.getByRole('button', { name: 'Copy', exact: true }).click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), link);
    await page.getByRole('table', { name: 'Pending invites' }).getByText('member', { exact: true }).waitFor();
    await shot('team-invite');
    // Someone accepts it: they are a member, and the invite is no longer pending.
    await adminAccepts(link);
    await page.reload();
    await row(ADMIN_EMAIL).waitFor();
    assert.equal((await row(ADMIN_EMAIL).locator('td').nth(0).innerText()).trim(), 'Admin');
    await page.getByText('No pending invites').waitFor();
    // Another one is revoked before anyone uses it.
    await makeInvite('admin');
    const pendingInvites = page.getByRole('table', { name: 'Pending invites' });
    await pendingInvites.getByRole('button', { name: /^Revoke the admin invite/ }).click();
    await dialog().getByRole('button', { name: 'Revoke invite', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await page.getByText('No pending invites').waitFor();
    await shot('team');
  });

  await step('create a second team, then switch between teams', async () => {
    await sidebar().getByRole('button', { name: 'Create team', exact: true }).click();
    await dialog().getByLabel('Team name').fill(`Research ${RUN}`);
    await dialog().getByRole('button', { name: 'Create team', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await page.getByRole('heading', { level: 1, name: `Research ${RUN}` }).waitFor();
    const select = sidebar().getByLabel('Team');
    assert.equal(await select.locator('option:checked').innerText(), `Research ${RUN}`);
    // An invite for an admin, accepted: the member list shows the role.
    await adminAccepts(await makeInvite('admin'));
    await page.reload();
    await row(ADMIN_EMAIL).getByRole('combobox').waitFor();
    assert.equal(await row(ADMIN_EMAIL).getByRole('combobox').inputValue(), 'admin');
    // Keys belong to a team: the new one has none; switching back shows "ci" again.
    await go('API keys');
    await page.getByText('No API keys').waitFor();
    const personal = (await select.locator('option').allInnerTexts()).find((n) => !n.startsWith('Research'));
    await select.selectOption({ label: personal });
    await row('ci').waitFor();
    assert.equal(await select.locator('option:checked').innerText(), personal);
  });

  await step('delete teams (typed confirmation); with no team left, creating sandboxes is explained away', async () => {
    const select = sidebar().getByLabel('Team');
    const personal = await select.locator('option:checked').innerText();
    await select.selectOption({ label: `Research ${RUN}` });
    await row('ci').waitFor({ state: 'detached' });
    for (const name of [`Research ${RUN}`, personal]) {
      await go('Team');
      await page.getByRole('heading', { level: 1, name }).waitFor();
      await page.getByRole('button', { name: 'Delete team', exact: true }).click();
      const del = dialog().getByRole('button', { name: 'Delete team', exact: true });
      assert.equal(await del.isDisabled(), true);
      await dialog().getByLabel(/Type .* to confirm/).fill(name);
      await del.click();
      await dialog().waitFor({ state: 'detached' });
    }
    await select.locator('option:checked', { hasText: 'No active team' }).waitFor({ state: 'attached' });
    await sidebar().getByText('No team', { exact: true }).waitFor();
    await go('Sandboxes');
    const create = page.getByRole('button', { name: 'New sandbox', exact: true });
    assert.equal(await create.isDisabled(), true);
    assert.match(await create.evaluate((b) => document.getElementById(b.getAttribute('aria-describedby'))?.textContent ?? ''), /no active team/);
    assert.equal(await sidebar().getByRole('link', { name: 'Hosts' }).count(), 0);
    await shot('no-team');
  });

  await step('log out, log in as someone else: nothing of the previous user shows', async () => {
    const before = await page.evaluate(() => localStorage.getItem('sandboxctl.token'));
    await sidebar().getByRole('button', { name: 'Log out', exact: true }).click();
    await page.waitForURL('**/login');
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    assert.equal(await meStatus(before), 401, 'the server did not end the session');
    await signIn(ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.waitForURL('**/sandboxes');
    await sidebar().locator('.user-name').getByText('Admin', { exact: true }).waitFor();
    assert.equal(await sidebar().locator('.user-name').innerText(), 'Admin');
    // Admin is a member of Ada's teams now, but the active team is Admin's own.
    assert.ok(!(await sidebar().getByLabel('Team').locator('option:checked').innerText()).includes(ADA.name));
    await go('API keys');
    await page.getByText('No API keys').waitFor();
    assert.ok(!(await page.content()).includes(keyValue.slice(0, 10)));
  });

  await step('an invite link signs a new person up into the team; a signed-in user joins with one', async () => {
    await go('Team');
    const teamName = (await page.getByRole('heading', { level: 1 }).innerText()).trim();
    const forGrace = await makeInvite('member');
    const forAda = await makeInvite('admin');
    await sidebar().getByRole('button', { name: 'Log out', exact: true }).click();
    await page.waitForURL('**/login');
    // Signed out, the link opens the sign-up page with the invite in it (and out of the address bar).
    await page.goto(forGrace);
    await page.waitForURL('**/signup');
    assert.ok(!page.url().includes('invite='), 'the invite stays in the address bar');
    await page.getByText('You join the team that invited you.').waitFor();
    assert.equal(await page.getByLabel('Invite link or token').inputValue(), new URL(forGrace).hash.replace('#invite=', ''));
    await page.getByLabel('Name').fill(GRACE.name);
    await page.getByLabel('Email').fill(GRACE.email);
    await page.getByLabel('Password').fill(PASSWORD);
    await shot('signup-invite');
    await page.getByRole('button', { name: 'Create account', exact: true }).click();
    await page.waitForURL('**/sandboxes');
    assert.equal(await sidebar().getByLabel('Team').locator('option:checked').innerText(), teamName);
    // Ada, signed in (her teams are gone), opens the other link: she is asked, and joins as admin.
    await sidebar().getByRole('button', { name: 'Log out', exact: true }).click();
    await page.waitForURL('**/login');
    await signIn(ADA.email, PASSWORD);
    await page.waitForURL('**/sandboxes');
    await page.goto(forAda);
    await dialog().getByRole('button', { name: 'Join team', exact: true }).click();
    await page.getByText(`You joined ${teamName} as an admin.`).waitFor();
    assert.equal(await sidebar().getByLabel('Team').locator('option:checked').innerText(), teamName);
    // A used link says so.
    await page.goto(forGrace);
    await dialog().getByRole('button', { name: 'Join team', exact: true }).click();
    await dialog().getByText('This invite was already used; ask for a new one.').waitFor();
    await dialog().getByRole('button', { name: 'Cancel', exact: true }).click();
    await sidebar().getByRole('button', { name: 'Log out', exact: true }).click();
    await page.waitForURL('**/login');
    await signIn(ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.waitForURL('**/sandboxes');
  });

  await step('a fresh server: its admin signs up with the bootstrap link; then it takes no signups and says so', async () => {
    await page.goto(`${CLOSED}/signup`);
    await page.getByText('This server has no account yet: the first one becomes its platform admin.').waitFor();
    await page.getByLabel('Name').fill('Operator');
    await page.getByLabel('Email').fill('operator@example.com');
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Create account', exact: true }).click();
    await main().getByRole('alert').getByText(/bootstrap token/).waitFor();
    // The link the server printed fills the token in.
    await page.goto(`${CLOSED}/#bootstrap=${CLOSED_BOOTSTRAP}`);
    await page.waitForURL('**/signup');
    assert.equal(await page.getByLabel('Bootstrap token').inputValue(), CLOSED_BOOTSTRAP);
    await page.getByLabel('Name').fill('Operator');
    await page.getByLabel('Email').fill('operator@example.com');
    await page.getByLabel('Password').fill(PASSWORD);
    await shot('signup-bootstrap');
    await page.getByRole('button', { name: 'Create account', exact: true }).click();
    await page.waitForURL('**/sandboxes');
    await sidebar().getByRole('link', { name: 'Hosts' }).waitFor(); // the platform admin
    await sidebar().getByRole('button', { name: 'Log out', exact: true }).click();
    await page.goto(`${CLOSED}/signup`);
    await page.getByText('This server does not take new accounts.').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Create account', exact: true }).isVisible(), false);
    await shot('signup-closed');
    await page.goto('/sandboxes');
    await sidebar().locator('.user-name').getByText('Admin', { exact: true }).waitFor();
  });

  await step('create a sandbox (with progress) and see it running', async () => {
    await go('Sandboxes');
    await page.getByRole('button', { name: 'New sandbox', exact: true }).first().click();
    await dialog().getByLabel('Environment').fill('GREETING=hello\n1BAD=x');
    await dialog().getByRole('button', { name: 'Create sandbox', exact: true }).click();
    await dialog().getByText('Environment, line 2').waitFor();
    await dialog().getByLabel('Environment').fill('GREETING=hello');
    await dialog().getByLabel('Metadata').fill('purpose=browser-test');
    await dialog().getByRole('button', { name: 'Create sandbox', exact: true }).click();
    // The button counts the seconds while the VM boots (unless it was quicker than a look).
    await Promise.race([dialog().getByRole('button', { name: /Starting… \d+s/ }).waitFor(), dialog().waitFor({ state: 'detached', timeout: 120_000 })]);
    await dialog().waitFor({ state: 'detached', timeout: 120_000 });
    const r = page.locator('tbody tr', { hasText: 'running' }).first();
    await r.waitFor();
    sandboxId = (await r.locator('td').first().innerText()).trim();
    assert.match(sandboxId, /^sbx-[a-z0-9]+$/);
    assert.ok((await r.innerText()).includes('minimal'));
    await page.getByLabel('Search sandboxes').fill('browser-test');
    await row(sandboxId).waitFor();
    await page.getByLabel('Search sandboxes').fill('no-such-thing');
    await page.getByText('Nothing matches').waitFor();
    await page.getByLabel('Search sandboxes').fill('');
    await row(sandboxId).waitFor();
    await shot('sandboxes');
  });

  await step('run a command in the sandbox and see its output', async () => {
    await page.getByRole('link', { name: sandboxId }).click();
    await page.waitForURL(`**/sandboxes/${sandboxId}`);
    await page.getByRole('heading', { level: 1, name: new RegExp(sandboxId) }).waitFor();
    await page.getByRole('tab', { name: 'Run command' }).click();
    const cmd = page.getByLabel('Command', { exact: true });
    await cmd.fill(`sh -c 'echo "$GREETING from $(uname -s)"'`);
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    const result = page.locator('.exec-result').first();
    await result.getByText('exit 0', { exact: true }).waitFor({ timeout: 60_000 });
    assert.equal(await result.getByLabel('stdout').innerText(), 'hello from Linux\n');
    await cmd.fill(`sh -c 'echo oops >&2; exit 3'`);
    await cmd.press('Enter');
    await page.locator('.exec-result').first().getByText('exit 3', { exact: true }).waitFor({ timeout: 60_000 });
    assert.equal(await page.locator('.exec-result').first().getByLabel('stderr').innerText(), 'oops\n');
    await shot('sandbox');
  });

  await step('the terminal: a shell on a PTY over the WebSocket', async () => {
    await page.getByRole('tab', { name: 'Terminal' }).click();
    await page.getByRole('button', { name: 'Connect', exact: true }).click();
    await page.getByRole('status').filter({ hasText: 'Connected: /bin/sh' }).waitFor({ timeout: 60_000 });
    const screen = page.locator('.term-screen');
    await screen.locator('.xterm-rows').waitFor();
    // Wait for the prompt, so that what we type is not echoed before it.
    await page.waitForFunction(() => /[#$] *$/m.test(document.querySelector('.xterm-rows')?.textContent ?? ''), null, { timeout: 30_000 });
    await page.keyboard.type('echo term-$((6*7))');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('.xterm-rows')?.textContent.includes('term-42'), null, { timeout: 30_000 });
    // The emulator's rows as a person sees them: the command, then its output on its own line.
    const rows = await screen.locator('.xterm-rows > div').allInnerTexts();
    assert.ok(rows.some((r) => r.trim() === 'term-42'), `no row with just term-42 in:\n${rows.join('\n')}`);
    await screen.scrollIntoViewIfNeeded();
    await shot('sandbox-terminal', { quiet: true });
    // Something for the console log (next step).
    await page.keyboard.type(`echo console-${RUN} > /dev/console`);
    await page.keyboard.press('Enter');
    // The terminal takes Tab; Esc then Tab leaves it (keyboard users are not trapped).
    assert.ok(await screen.evaluate((el) => el.contains(document.activeElement)), 'the terminal does not have the focus');
    await page.keyboard.press('Escape');
    await page.keyboard.press('Tab');
    assert.ok(await screen.evaluate((el) => !el.contains(document.activeElement)), 'Esc, Tab did not leave the terminal');
  });

  await step('the console log shows what the guest printed', async () => {
    await page.getByRole('tab', { name: 'Console log' }).click();
    const log = page.getByRole('tabpanel', { name: 'Console log' }).locator('pre');
    await log.waitFor();
    // Written a moment ago: refresh until it is there.
    for (let i = 0; i < 20 && !(await log.innerText()).includes(`console-${RUN}`); i++) {
      await page.getByRole('button', { name: 'Refresh', exact: true }).click();
      await page.getByRole('button', { name: 'Refresh', exact: true }).waitFor();
      await page.waitForTimeout(250);
    }
    assert.ok((await log.innerText()).includes(`console-${RUN}`), 'the console log misses the line written to /dev/console');
  });

  await step('usage: CPU and memory charts draw the samples and refresh', async () => {
    const usage = page.locator('[data-panel="usage"]');
    await usage.getByRole('heading', { name: 'Usage' }).waitFor();
    // The agent samples every second and the card refreshes every few: wait for lines of points.
    const drawn = (min) => [...document.querySelectorAll('[data-panel="usage"] svg.chart')].every((s) => Number(s.dataset.points) >= min && s.querySelector('polyline'));
    await page.waitForFunction(drawn, 2, { timeout: 60_000 });
    const before = Number(await usage.locator('[data-chart="cpu"] svg').getAttribute('data-points'));
    for (const kind of ['cpu', 'memory']) {
      const points = (await usage.locator(`[data-chart="${kind}"] polyline`).last().getAttribute('points')).trim().split(/\s+/);
      assert.ok(points.length >= 2, `${kind}: ${points}`);
      assert.ok(points.every((p) => /^[\d.]+,[\d.]+$/.test(p)), `${kind}: ${points}`);
    }
    assert.match(await usage.locator('[data-chart="cpu"] .chart-value').innerText(), /^\d+%$/);
    assert.match(await usage.locator('[data-chart="memory"] .chart-value').innerText(), /MiB/);
    assert.match(await usage.innerText(), /Disk: .+ used of .+/);
    // It refreshes by itself: more points a moment later.
    await page.waitForFunction(drawn, before + 1, { timeout: 60_000 });
    await usage.scrollIntoViewIfNeeded();
    await shot('sandbox-usage', { quiet: true });
  });

  await step('files: upload a file and see it listed; folders; download; delete', async () => {
    // The tabs work with the keyboard (arrows, Home, End).
    const tab = (name) => page.getByRole('tab', { name });
    await tab('Console log').focus();
    await page.keyboard.press('Home');
    assert.equal(await tab('Terminal').getAttribute('aria-selected'), 'true');
    await page.keyboard.press('ArrowRight');
    assert.equal(await tab('Files').getAttribute('aria-selected'), 'true');
    assert.ok(await tab('Files').evaluate((el) => el === document.activeElement));
    const path = page.getByRole('textbox', { name: 'Folder path' });
    await page.waitForFunction(() => document.querySelector('input[name=path]')?.value === '/root');
    const name = `notes-${RUN}.txt`;
    const content = `uploaded from the dashboard ${RUN}\n`;
    await page.locator('.files-panel input[type=file]').setInputFiles({ name, mimeType: 'text/plain', buffer: Buffer.from(content) });
    const fileRow = row(name);
    await fileRow.waitFor();
    assert.match(await fileRow.innerText(), new RegExp(`${content.length} B`));
    // Downloading asks for a short-lived link and lets the browser fetch it (no blob in the page).
    const download = page.waitForEvent('download');
    await fileRow.getByRole('button', { name: `Download ${name}` }).click();
    const file = await download;
    assert.equal(file.suggestedFilename(), name);
    assert.match(file.url(), /\/files\/download\?ticket=/);
    assert.equal(readFileSync(await file.path(), 'utf8'), content);
    // A new folder, into it, and back up.
    await page.getByRole('button', { name: 'New folder', exact: true }).click();
    await dialog().getByLabel('Folder name').fill('docs');
    await dialog().getByRole('button', { name: 'Create folder', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await page.getByRole('button', { name: 'Open folder docs' }).click();
    await page.waitForFunction(() => document.querySelector('input[name=path]')?.value === '/root/docs');
    await page.getByText('This folder is empty').waitFor();
    await page.getByRole('navigation', { name: 'Current folder' }).getByRole('button', { name: 'root', exact: true }).click();
    await fileRow.waitFor();
    await page.locator('.files-panel').scrollIntoViewIfNeeded();
    await shot('files', { quiet: true });
    // Typing a path goes there; a wrong one says so and stays.
    await path.fill('/no/such/dir');
    await path.press('Enter');
    await page.getByRole('alert').getByText('There is no folder /no/such/dir').waitFor();
    assert.equal(await path.inputValue(), '/no/such/dir');
    await row('docs').getByRole('button', { name: 'Delete docs' }).click();
    await dialog().getByRole('button', { name: 'Delete folder', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await row('docs').waitFor({ state: 'detached' });
    await fileRow.waitFor();
  });

  await step('extend the idle timeout: the countdown restarts', async () => {
    const details = page.locator('[data-panel=details]');
    await details.getByLabel('Idle timeout').selectOption({ label: '1 hour' });
    await details.getByRole('button', { name: 'Extend timeout', exact: true }).click();
    await details.getByText(/Times out/).waitFor();
    await details.locator('.countdown', { hasText: /^in (59m|1h)/ }).waitFor();
  });

  await step('network policy: close the internet, allow one network; a bad CIDR is refused readably', async () => {
    const details = page.locator('[data-panel=details]');
    await details.getByText('internet open').waitFor();
    await details.getByText('Change the network policy').click();
    const form = details.getByRole('form', { name: 'Network policy' });
    await form.getByLabel(/Also allow/).fill('not-a-network');
    await form.getByRole('button', { name: 'Save network policy' }).click();
    await form.getByText(/network\.allow_out/i).waitFor();
    await form.getByLabel(/Internet/).uncheck();
    await form.getByLabel(/Also allow/).fill('10.99.0.0/16');
    await form.getByRole('button', { name: 'Save network policy' }).click();
    await details.getByText('internet closed; allows 10.99.0.0/16').waitFor();
  });

  await step('snapshot the sandbox; the same name again asks before replacing', async () => {
    const snap = `snap-${RUN}`;
    for (const again of [false, true]) {
      await page.getByRole('button', { name: `Snapshot ${sandboxId}` }).click();
      await dialog().getByLabel('Template name').fill(snap);
      await dialog().getByRole('button', { name: 'Take snapshot', exact: true }).click();
      if (again) {
        await dialog().getByText(`already has a template named ${snap}`).waitFor({ timeout: 120_000 });
        await dialog().getByRole('button', { name: 'Replace template', exact: true }).click();
      } else {
        // The badge says what is going on while it lasts (unless it was quicker than a look).
        await Promise.race([page.locator('h1 .badge', { hasText: 'snapshotting…' }).waitFor(), dialog().waitFor({ state: 'detached', timeout: 120_000 })]);
      }
      await dialog().waitFor({ state: 'detached', timeout: 120_000 });
      await page.locator('.toast', { hasText: `Snapshot ${snap} saved` }).first().waitFor();
    }
    await page.locator('h1 .badge', { hasText: 'running' }).waitFor();
  });

  await step('pause, then resume, from the page: the status follows', async () => {
    await page.getByRole('button', { name: `Pause ${sandboxId}` }).click();
    await page.locator('h1 .badge', { hasText: 'paused' }).waitFor({ timeout: 120_000 });
    // The open terminal says why its shell ended.
    await page.waitForFunction(() => /sandbox is paus/.test(document.querySelector('.term-status')?.textContent ?? ''), null, { timeout: 30_000 });
    // Paused: no commands, files or terminal; resume is offered.
    await page.getByRole('tab', { name: 'Files' }).click();
    await page.getByText('Files can be browsed while the sandbox runs; it is paused.').waitFor();
    await page.goto('/sandboxes');
    await row(sandboxId).getByText('paused', { exact: true }).waitFor();
    await row(sandboxId).getByRole('button', { name: `Resume ${sandboxId}` }).click();
    await row(sandboxId).getByText('running', { exact: true }).waitFor({ timeout: 120_000 });
    // Back in: the file uploaded before the pause is still there.
    await page.getByRole('link', { name: sandboxId }).click();
    await page.getByRole('tab', { name: 'Files' }).click();
    await row(`notes-${RUN}.txt`).waitFor({ timeout: 30_000 });
  });

  await step('templates: the base template and the snapshot; launch presets the dialog; delete', async () => {
    await go('Templates');
    const snap = `snap-${RUN}`;
    await row('minimal').getByText(/on 1 host/).waitFor();
    const snapRow = row(snap);
    await snapRow.waitFor();
    assert.ok((await snapRow.innerText()).includes(sandboxId), 'the snapshot row does not name its sandbox');
    await page.getByRole('button', { name: 'Build debian', exact: true }).waitFor(); // a platform admin
    await shot('templates', { quiet: true });
    await snapRow.getByRole('button', { name: `Launch a sandbox from ${snap}` }).click();
    assert.equal(await dialog().getByLabel('Template').inputValue(), snap);
    await dialog().getByRole('button', { name: 'Cancel', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await snapRow.getByRole('button', { name: `Delete ${snap}` }).click();
    await dialog().getByRole('button', { name: 'Delete snapshot', exact: true }).click();
    await dialog().waitFor({ state: 'detached', timeout: 60_000 });
    await snapRow.waitFor({ state: 'detached' });
    await page.getByText('No snapshots yet').waitFor();
  });

  await step('hosts: the agent is online; a new host shows its register command', async () => {
    await go('Hosts');
    const agent = row(AGENT_HOST);
    await agent.getByText('online').waitFor();
    assert.match(await agent.innerText(), /KVM|TCG/);
    // Utilisation from its heartbeats: the running sandbox's vCPU and memory, and free disk.
    assert.equal(await agent.locator('meter').count(), 2);
    assert.match(await agent.innerText(), /[1-9]\d* \/ \d+ vCPU/);
    assert.match(await agent.innerText(), /\d+ GB free/);
    await page.getByRole('button', { name: 'Add host', exact: true }).first().click();
    await dialog().getByLabel('Name (optional)').fill('spare');
    await dialog().getByRole('button', { name: 'Create host', exact: true }).click();
    const command = dialog().getByLabel('Register command');
    await command.waitFor();
    const text = await command.inputValue();
    assert.match(text, new RegExp(`^sandboxctl agent register --server ${BASE.replace(/[.]/g, '\\.')} --token hrt_\\S+`));
    await dialog().getByRole('button', { name: 'Copy', exact: true }).click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), text);
    await shot('hosts-register');
    await dialog().getByRole('button', { name: 'Done', exact: true }).click();
    const spare = row('spare');
    await spare.getByText('pending').waitFor();
    pendingHost = (await spare.locator('.mono').first().innerText()).trim();
    await shot('hosts');
  });

  await step('deleting the host that runs the sandbox previews it and needs force', async () => {
    await row(AGENT_HOST).getByRole('button', { name: /^Delete/ }).click();
    const list = dialog().getByRole('list', { name: 'Affected sandboxes' });
    await list.getByText(sandboxId).waitFor();
    const del = dialog().getByRole('button', { name: 'Delete host', exact: true });
    assert.equal(await del.isDisabled(), true);
    await dialog().getByLabel(/force/).check();
    assert.equal(await del.isEnabled(), true);
    await shot('hosts-delete-preview');
    await dialog().getByRole('button', { name: 'Cancel', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await row(AGENT_HOST).getByText('online').waitFor();
  });

  await step('a plain delete that meets sandboxes gets the 409 and its ids', async () => {
    // The preview said "none" but a sandbox exists by the time of the delete: the server's 409
    // (host_has_sandboxes, with the ids) is shown and force is offered.
    await page.route(`**/v1/hosts/${AGENT_HOST}/delete-preview`, (r) => r.fulfill({ json: { host_id: AGENT_HOST, sandbox_ids: [] } }));
    await row(AGENT_HOST).getByRole('button', { name: /^Delete/ }).click();
    await dialog().getByText('No sandboxes run on this host').waitFor();
    await dialog().getByRole('button', { name: 'Delete host', exact: true }).click();
    await dialog().getByRole('alert').getByText(/still runs \d+ sandbox/).waitFor();
    await dialog().getByRole('list', { name: 'Affected sandboxes' }).getByText(sandboxId).waitFor();
    await page.unroute(`**/v1/hosts/${AGENT_HOST}/delete-preview`);
    await dialog().getByRole('button', { name: 'Cancel', exact: true }).click();
    await row(AGENT_HOST).getByText('online').waitFor();
  });

  await step('delete the pending host', async () => {
    await row(pendingHost).getByRole('button', { name: /^Delete/ }).click();
    await dialog().getByText('No sandboxes run on this host').waitFor();
    await dialog().getByRole('button', { name: 'Delete host', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await row(pendingHost).waitFor({ state: 'detached' });
  });

  await step('phone width: the sidebar becomes a menu', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto('/sandboxes');
    await row(sandboxId).waitFor();
    const box = await sidebar().boundingBox();
    assert.ok(box.x + box.width <= 0, 'the sidebar is on screen at phone width');
    await shot('sandboxes-phone');
    await page.getByRole('button', { name: 'Menu', exact: true }).click();
    await sidebar().getByRole('link', { name: 'Team' }).click();
    await page.getByRole('heading', { level: 1 }).waitFor();
    await page.waitForFunction(() => document.getElementById('sidebar').getBoundingClientRect().right <= 0);
    await shot('team-phone');
    await page.goto(`/sandboxes/${sandboxId}#files`);
    await row(`notes-${RUN}.txt`).waitFor({ timeout: 30_000 });
    assert.equal(await page.evaluate(() => document.documentElement.scrollWidth), 390, 'the sandbox page scrolls sideways at phone width');
    await shot('sandbox-phone');
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await step('tag and drain the agent host', async () => {
    await go('Hosts');
    await row(AGENT_HOST).getByRole('button', { name: /^Tags/ }).click();
    await dialog().getByLabel('Tags').fill('zone=test, browser');
    await dialog().getByRole('button', { name: 'Save tags', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await row(AGENT_HOST).getByText('zone=test', { exact: true }).waitFor();
    await row(AGENT_HOST).getByRole('button', { name: /^Drain/ }).click();
    await dialog().getByRole('button', { name: 'Drain host', exact: true }).click();
    await dialog().waitFor({ state: 'detached' });
    await row(AGENT_HOST).getByText('draining').waitFor();
  });

  await step('force-delete the agent host: its sandbox is destroyed', async () => {
    await go('Hosts');
    await row(AGENT_HOST).getByRole('button', { name: /^Delete/ }).click();
    await dialog().getByRole('list', { name: 'Affected sandboxes' }).getByText(sandboxId).waitFor();
    await dialog().getByLabel(/force/).check();
    await dialog().getByRole('button', { name: 'Delete host', exact: true }).click();
    await dialog().waitFor({ state: 'detached', timeout: 60_000 });
    await row(AGENT_HOST).waitFor({ state: 'detached' });
    await go('Sandboxes');
    await page.getByText('No sandboxes yet').or(page.getByText('Nothing matches')).waitFor();
    await page.getByLabel('Show ended').check();
    await row(sandboxId).getByText('stopped').waitFor();
  });

  await step('an expired session goes back to the login page with a message', async () => {
    await page.evaluate(() => localStorage.setItem('sandboxctl.token', 'eyJhbGciOiJIUzI1NiJ9.e30.bad'));
    await page.goto('/sandboxes');
    await page.waitForURL('**/login');
    await page.getByText('Your session has expired. Please sign in again.').waitFor();
    await signIn(ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.waitForURL('**/sandboxes');
  });

  await step('no script errors, CSP refusals or external requests', async () => {
    assert.deepEqual(problems, []);
  });
});
