// A person's walk through linking in a real, headless Chromium, for tests/integration/browser_linking.rs:
// open the "Connect Databricks" link from the private prompt, press "Continue to
// Databricks", sign in on oidc-provider's development login page, confirm its consent
// page, and end on the bot's result page. Only loopback is reachable: anything else the
// pages ask for is refused and listed.
//
// Environment: LINK_URL (the link from the prompt), LOGIN (the account to sign in as),
// SCREENSHOT (where to save a PNG of the last page), CHROMIUM (default /usr/bin/chromium).
// Prints one JSON object on stdout; exits 1 if a step could not be done.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const { LINK_URL: linkUrl, LOGIN: login, SCREENSHOT: screenshot } = process.env;
if (!linkUrl || !login || !screenshot) throw new Error('LINK_URL, LOGIN and SCREENSHOT are required');
const botOrigin = new URL(linkUrl).origin;
const STEP_TIMEOUT = 15_000;

const report = {
  ok: false,
  landing: null,
  claimSetCookie: null,
  // Main-frame documents in order: origin and path, and the names (not values) of the query.
  navigations: [],
  final: null,
  botCookiesLeft: [],
  consoleErrors: [],
  blockedRequests: [],
};

// A fresh profile: no cookies, cache or history from anything before.
const userDataDir = await mkdtemp(join(tmpdir(), 'browser-walkthrough-'));
let context;
let page;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Without these Chromium's background connections fail (and wait) on a closed network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1024, height: 700 },
  });
  await context.route('**/*', (route) => {
    const { protocol, hostname } = new URL(route.request().url());
    const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(hostname);
    if (loopback || protocol === 'data:') return route.continue();
    let from = '';
    try { from = route.request().frame().url().split('?')[0]; } catch { /* not from a page */ }
    report.blockedRequests.push({ url: route.request().url(), from });
    return route.abort('blockedbyclient');
  });
  page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('console', (message) => {
    if (message.type() === 'error') report.consoleErrors.push(`${page.url().split('?')[0]}: ${message.text()}`);
  });
  page.on('pageerror', (error) => report.consoleErrors.push(`${page.url().split('?')[0]}: ${error.message}`));
  page.on('framenavigated', (frame) => {
    if (frame !== page.mainFrame()) return;
    const url = new URL(frame.url());
    report.navigations.push({ url: url.origin + url.pathname, query: [...url.searchParams.keys()] });
  });
  page.on('response', async (response) => {
    const request = response.request();
    if (request.method() === 'POST' && request.url().startsWith(`${botOrigin}/link/`)) {
      report.claimSetCookie = await response.headerValue('set-cookie');
    }
  });

  // 1. The link from the prompt: a page naming who is linked to what, with a button.
  const landing = await page.goto(linkUrl);
  report.landing = {
    status: landing.status(),
    title: await page.title(),
    text: await page.locator('body').innerText(),
    csp: await landing.headerValue('content-security-policy'),
  };
  const proceed = page.getByRole('button', { name: 'Continue to Databricks' });

  // 2. Continue: a POST that sends the browser on to the workspace's sign-in.
  await proceed.click();
  const loginField = page.locator('input[name="login"]');
  await loginField.waitFor();

  // 3. oidc-provider's development login page (any password), then its consent page.
  await loginField.fill(login);
  await page.locator('input[name="password"]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  await page.locator('input[name="prompt"][value="consent"]').waitFor({ state: 'attached' });
  await page.getByRole('button', { name: 'Continue' }).click();

  // 4. Back at the bot: the callback answers with a redirect to its clean result page.
  await page.waitForURL(`${botOrigin}/link/result`, { waitUntil: 'load' });
  const finalUrl = page.url();
  report.final = {
    url: finalUrl,
    title: await page.title(),
    text: await page.locator('body').innerText(),
    hasCodeOrState: finalUrl.includes('code=') || finalUrl.includes('state='),
  };
  report.botCookiesLeft = (await context.cookies(botOrigin)).map((c) => c.name);
  report.ok = true;
} catch (error) {
  report.error = String(error?.stack ?? error);
  if (page) {
    report.final = { url: page.url(), title: await page.title().catch(() => ''), text: await page.locator('body').innerText().catch(() => '') };
  }
} finally {
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  if (context) await context.close().catch(() => {});
  await rm(userDataDir, { recursive: true, force: true });
}

process.stdout.write(JSON.stringify(report) + '\n');
process.exitCode = report.ok ? 0 : 1;
