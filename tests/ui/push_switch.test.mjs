// The push switch and the token: asked once, kept for the tab only; refused without it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Api, startStandalone, openBrowser, screenshot } from './kit.mjs';

const TOKEN = 'ui-test-token-3f9c';
let node;
let api;
let browser;

before(async () => {
  node = await startStandalone('ui-token', ['--token', TOKEN]);
  api = new Api(node.url, TOKEN);
  browser = await openBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (node) await node.stop();
});

async function answerToken(page, value) {
  const dialog = page.locator('#token-dialog[open]');
  await dialog.waitFor();
  await page.locator('#token-input').fill(value);
  await page.locator('#token-input').press('Enter');
}

test('without the token: the page says what is missing and the switch is refused', async () => {
  const page = await browser.page();
  await page.goto(`${node.url}/ui/#/push`);
  await page.locator('#token-dialog[open]').waitFor();
  await page.keyboard.press('Escape');
  const banner = page.locator('#banner');
  await banner.filter({ hasText: 'Unauthorized: this registry requires a token' }).waitFor();
  assert.ok(await page.locator('#push-toggle').isDisabled(), 'no state known: nothing to toggle');
  await screenshot(page, 'push-unauthorized');

  // A wrong token is refused, and asked again.
  await banner.getByRole('button', { name: 'Enter token' }).click();
  await answerToken(page, 'wrong-token');
  await page.locator('#token-reason', { hasText: 'The token was refused' }).waitFor();
  await page.keyboard.press('Escape');
  await banner.filter({ hasText: 'Unauthorized' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
  assert.equal((await api.push()).stopPush, false, 'nothing changed');
  await page.close();
});

test('with the token: asked once, toggling asks for confirmation, kept for the tab only', async () => {
  const page = await browser.page();
  await page.goto(`${node.url}/ui/#/push`);
  await answerToken(page, TOKEN);
  await page.locator('#push-state', { hasText: 'Pushing' }).waitFor();
  assert.equal(await page.locator('#banner').isHidden(), true);

  // Keyboard only: the confirmation's default is Cancel.
  await page.locator('#push-toggle').focus();
  await page.keyboard.press('Enter');
  await page.locator('#confirm-dialog[open]').waitFor();
  await page.keyboard.press('Enter');
  await page.locator('#confirm-dialog[open]').waitFor({ state: 'detached' });
  assert.equal((await api.push()).stopPush, false, 'cancelled: still pushing');

  await page.locator('#push-toggle').click();
  await page.locator('#confirm-dialog[open]').waitFor();
  await page.getByRole('button', { name: 'Stop pushes' }).last().click();
  await page.locator('#push-state', { hasText: 'Stopped' }).waitFor();
  assert.equal((await api.push()).stopPush, true, 'stopped through the API');
  await screenshot(page, 'push-stopped-1280');

  // Reloading the tab keeps the token; a new tab asks again.
  await page.reload();
  await page.locator('#push-state', { hasText: 'Stopped' }).waitFor();
  assert.equal(await page.locator('#token-dialog[open]').count(), 0, 'not asked again in this tab');
  const other = await browser.page();
  await other.goto(`${node.url}/ui/#/push`);
  await other.locator('#token-dialog[open]').waitFor();
  await other.close();

  await page.locator('#push-toggle', { hasText: 'Resume pushes' }).click();
  await page.locator('#confirm-ok').click();
  await page.locator('#push-state', { hasText: 'Pushing' }).waitFor();
  assert.equal((await api.push()).stopPush, false, 'resumed through the API');

  // The delay, with confirmation too.
  await page.locator('#push-delay').fill('120');
  await page.getByRole('button', { name: 'Set delay' }).click();
  await page.locator('#confirm-ok').click();
  await page.locator('#push-delay-value', { hasText: '120 ms' }).waitFor();
  assert.equal((await api.push()).pushDelayMillis, 120);

  // The token can be forgotten: the next call asks again.
  await page.getByRole('button', { name: 'Forget token' }).click();
  await page.locator('#token-dialog[open]').waitFor();
  assert.deepEqual(page.problems, []);
  await page.close();
});

test('the services list behind a token asks for it and then lists', async () => {
  const session = await api.session('tok');
  await api.publish(session, { dataId: 'com.example.Secured', data: ['10.1.1.1:1'] });
  const page = await browser.page();
  await page.goto(`${node.url}/ui/`);
  await answerToken(page, TOKEN);
  await page.locator('#services-table tr[data-id^="com.example.Secured#@#"]').waitFor();
  await page.close();
});
