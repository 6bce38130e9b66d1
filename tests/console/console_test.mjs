// The web console in a real browser: headless Chromium (Debian's) driven by playwright-core.
// tests/console.rs starts the daemon, creates the tokens and runs this with:
//   PSBROKER_URL, ADMIN_TOKEN, SCOPED_TOKEN, SCOPED_TENANT, SCOPED_BATCH, OTHER_TENANT,
//   CHROMIUM (executable), NODE_MODULES (where playwright-core is installed), SHOTS (a folder).
// It prints one JSON line {problems: [...], observed: {...}} and exits 1 if anything is wrong.

import { createRequire } from 'node:module';
import path from 'node:path';

const env = process.env;
const { chromium } = createRequire(path.join(env.NODE_MODULES, 'noop.js'))('playwright-core');
const base = env.PSBROKER_URL;
const problems = [];
const observed = {};

function check(ok, message) {
  if (!ok) problems.push(message);
  return ok;
}

async function within(ms, what, probe) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function api(token, method, route, body) {
  const resp = await fetch(base + route, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return resp.json();
}

const browser = await chromium.launch({
  executablePath: env.CHROMIUM,
  headless: true,
  // As this machine needs: no sandbox as root, and no background traffic to the closed network.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const requested = [];
  page.on('request', (r) => requested.push(r.url()));
  let refusalExpected = false; // the browser logs the 401 of a wrong token as an error
  page.on('console', (m) => {
    if (m.type() === 'error' && !(refusalExpected && m.text().includes('401'))) problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Which request failed, beside the browser's bare "Failed to load resource" line.
  page.on('response', (r) => {
    if (r.status() === 404) problems.push(`404 for ${new URL(r.url()).pathname}`);
  });
  const shot = (name) => page.screenshot({ path: path.join(env.SHOTS, `console-${name}.png`) });
  // Signs in with `secret` (typed, then Enter); every sign-in starts on Pools. Returns the tenants
  // listed there once at least `tenants` are.
  const signIn = async (secret, tenants) => {
    await page.getByLabel('API token').fill(secret);
    await page.keyboard.press('Enter');
    await page.locator('#app').waitFor({ state: 'visible' });
    check(await page.getByRole('tab', { name: /Pools/ }).getAttribute('aria-selected') === 'true', 'a sign-in starts on Pools');
    await within(5000, 'the pools', () => page.locator('#tenants-table tbody tr').count().then((n) => n >= tenants));
    return page.locator('#tenants-table tbody tr td:first-child').allTextContents();
  };

  // ---- The page and its headers.
  const first = await page.goto(`${base}/console`);
  const headers = first.headers();
  check(first.status() === 200, `GET /console answered ${first.status()}`);
  check((headers['content-security-policy'] || '').includes("script-src 'self'"), `no strict CSP: ${headers['content-security-policy']}`);
  check(headers['x-content-type-options'] === 'nosniff', 'no X-Content-Type-Options: nosniff');

  // ---- A wrong token is refused; the admin token signs in (with the keyboard alone).
  check(await page.getByLabel('API token').evaluate((e) => e === document.activeElement), 'the token field has the focus at first');
  refusalExpected = true;
  await page.keyboard.type('psb_not-a-real-token');
  await page.keyboard.press('Enter');
  await within(5000, 'the refusal', () => page.locator('#login-error').textContent().then((t) => t.includes('not valid')));
  refusalExpected = false;
  const adminTenants = await signIn(env.ADMIN_TOKEN, 4);
  observed.admin_tenants = adminTenants;
  check(adminTenants.includes(env.OTHER_TENANT) && adminTenants.includes(env.SCOPED_TENANT), `the admin sees every tenant: ${adminTenants}`);

  // ---- A batch submitted now: the pools fill up; then it is watched from the Batches view
  // (key 3) until done.
  const items = [];
  for (let i = 0; i < 36; i++) items.push({ tenant: i % 2 ? env.OTHER_TENANT : env.SCOPED_TENANT, cmdlet: 'Get-Mailbox', parameters: { ResultSize: 1 } });
  for (let i = 0; i < 4; i++) items.push({ tenant: env.OTHER_TENANT, cmdlet: 'Get-Nonexistent', parameters: {} });
  const batch = await api(env.ADMIN_TOKEN, 'POST', '/v1/batches', { items });
  check(batch.total === 40, `batch accepted: ${JSON.stringify(batch)}`);
  await within(10000, 'busy sessions in the pools', async () => {
    await page.keyboard.press('r');
    await page.waitForTimeout(200);
    const busy = await page.locator('#admins-table tbody tr td:nth-child(4)').allTextContents();
    return busy.reduce((n, b) => n + Number(b), 0) >= 3;
  });
  await shot('pools');
  await page.keyboard.press('3');
  check(await page.getByRole('tab', { name: /Batches/ }).getAttribute('aria-selected') === 'true', 'key 3 opens Batches');
  const open = page.locator(`[data-batch="${batch.id}"]`);
  await within(10000, 'the new batch in the list', () => open.count());
  await open.focus();
  await page.keyboard.press('Enter');
  const bar = page.locator('#batch-progress [role="progressbar"]');
  await bar.waitFor();
  const seen = [];
  await within(60000, 'the batch to finish', async () => {
    await page.keyboard.press('r'); // refresh now, rather than at the next 2 s tick
    await page.waitForTimeout(200);
    const now = Number(await bar.getAttribute('aria-valuenow'));
    const max = Number(await bar.getAttribute('aria-valuemax'));
    if (seen[seen.length - 1] !== now) seen.push(now);
    if (seen.length === 2) await shot('batch-running');
    return now === max;
  });
  observed.progress = seen;
  check(seen.length >= 2 && seen[0] < 40, `the progress bar moved while the batch ran: ${seen}`);
  await within(5000, 'the done badge', () => page.locator('#batch-title .badge').textContent().then((t) => t === 'done'));

  // Items filtered by status, then by code.
  await page.selectOption('#item-status', 'failed');
  await within(5000, 'failed items only', async () => {
    const statuses = await page.locator('#items-table tbody tr td:nth-child(4)').allTextContents();
    return statuses.length === 4 && statuses.every((s) => s === 'failed');
  });
  await within(5000, 'the code filter to offer unknown_cmdlet', () => page.locator('#item-code option[value="unknown_cmdlet"]').count());
  await page.selectOption('#item-code', 'unknown_cmdlet');
  await page.selectOption('#item-status', '');
  await within(5000, 'the unknown_cmdlet items', async () => {
    const codes = await page.locator('#items-table tbody tr td:nth-child(5)').allTextContents();
    return codes.length === 4 && codes.every((c) => c === 'unknown_cmdlet');
  });
  const message = await page.locator('#items-table tbody tr td:nth-child(6)').first().textContent();
  check(message.includes('is not recognized'), `the service's message is shown: ${message}`);
  await shot('batch');
  await page.keyboard.press('Escape');
  await within(5000, 'the list again', () => page.locator('#batch-list').isVisible());

  // ---- Failures grouped by code (key 4), filtered.
  await page.keyboard.press('4');
  await within(5000, 'failure groups', () => page.locator('#failure-groups article').count());
  await page.keyboard.press('/');
  check(await page.locator('#failure-filter').evaluate((e) => e === document.activeElement), '/ focuses the filter');
  await shot('failures');
  await page.keyboard.type('not recognized');
  await within(5000, 'only the matching group', async () => {
    const codes = await page.locator('#failure-groups article').evaluateAll((a) => a.map((e) => e.dataset.code));
    return codes.length === 1 && codes[0] === 'unknown_cmdlet';
  });
  const group = await page.locator('#failure-groups article').textContent();
  observed.failure_group = group.replace(/\s+/g, ' ').slice(0, 300);
  check(/\d+ ×/.test(group) && group.includes('Get-Nonexistent'), `the group counts and quotes the service: ${group}`);
  await page.keyboard.press('Escape');

  // ---- The audit log (key 5) filtered by outcome.
  await page.keyboard.press('5');
  await page.locator('#audit-filters input[name="outcome"]').fill('unknown_cmdlet');
  await page.locator('#audit-filters input[name="outcome"]').press('Enter');
  await within(5000, 'audit entries with that outcome', async () => {
    const outcomes = await page.locator('#audit-table tbody tr td:nth-child(6)').allTextContents();
    return outcomes.length >= 4 && outcomes.every((o) => o.includes('unknown_cmdlet'));
  });
  await shot('audit');

  // ---- The token: in this tab's sessionStorage only, never in a URL, no cookie.
  const stored = await page.evaluate(() => ({ session: sessionStorage.length, local: localStorage.length, cookie: document.cookie }));
  check(stored.session === 1 && stored.local === 0 && stored.cookie === '', `token storage: ${JSON.stringify(stored)}`);
  check(!requested.some((u) => u.includes(env.ADMIN_TOKEN)), 'the token appeared in a request URL');
  check(!page.url().includes('psb_'), `the token is in the page's URL: ${page.url()}`);

  // ---- Help with ? (Escape first leaves the filter field, where ? is just a character).
  await page.keyboard.press('Escape');
  await page.keyboard.press('?');
  check(await page.locator('#help').evaluate((d) => d.open), '? opens the shortcuts');
  await page.keyboard.press('Escape');
  check(!(await page.locator('#help').evaluate((d) => d.open)), 'Escape closes them');

  // ---- Sign out, sign in with the scoped token: its tenants only, its batches only.
  await page.getByRole('button', { name: 'Sign out' }).click();
  check(await page.evaluate(() => sessionStorage.length) === 0, 'signing out forgets the token');
  const scopedTenants = await signIn(env.SCOPED_TOKEN, 1);
  observed.scoped_tenants = scopedTenants;
  check(scopedTenants.length === 1 && scopedTenants[0] === env.SCOPED_TENANT, `the scoped token sees only its tenant: ${scopedTenants}`);
  check((await page.locator('#whoami').textContent()).includes('operator'), 'who is signed in, with the role');
  await shot('scoped');
  await page.keyboard.press('3');
  await within(5000, 'the scoped batches', () => page.locator('#batches-table [data-batch]').count());
  const scopedBatches = await page.locator('#batches-table [data-batch]').evaluateAll((b) => b.map((e) => e.dataset.batch));
  observed.scoped_batches = scopedBatches;
  check(scopedBatches.length === 1 && scopedBatches[0] === env.SCOPED_BATCH, `the scoped token sees only its batch: ${scopedBatches}`);
  await page.keyboard.press('4');
  await within(5000, 'the scoped failures', () => page.locator('#failure-count').textContent().then((t) => t.length > 0));
  const scopedCodes = await page.locator('#failure-groups article').evaluateAll((a) => a.map((e) => e.dataset.code));
  check(!scopedCodes.includes('unknown_cmdlet'), `the admin's failures are not shown to the scoped token: ${scopedCodes}`);
} catch (e) {
  problems.push(`${e.name}: ${e.message}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ problems, observed }));
process.exit(problems.length ? 1 : 0);
