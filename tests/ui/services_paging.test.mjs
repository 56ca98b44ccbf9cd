// The services list at scale: search, sort and pages over the paging extension of
// GET /api/v1/services, up to 100,000 services.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Api, startStandalone, openBrowser, eventually, screenshot, fitsWidth } from './kit.mjs';

let node;
let api;
let browser;

before(async () => {
  node = await startStandalone('ui-paging');
  api = new Api(node.url);
  browser = await openBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (node) await node.stop();
});

const idOf = (dataId) => `${dataId}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP`;

test('search by prefix, sort by counts, page through services', async () => {
  const page = await browser.page();
  const session = await api.session('paging');
  const ids = Array.from({ length: 120 }, (_, i) => `org.paging.S${String(i).padStart(3, '0')}`);
  await api.publishMany(session, ids);
  // S007 gets three publishers: first when sorted by publishers.
  for (const n of [2, 3]) await api.publish(session, { dataId: 'org.paging.S007', registerId: `extra-${n}`, data: ['x'] });

  await page.goto(`${node.url}/ui/`);
  await page.locator('#prefix').waitFor();
  // "/" focuses the search box.
  await page.locator('body').press('/');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'prefix');
  await page.keyboard.type('org.paging.');
  await page.locator('#services-summary', { hasText: '120 services starting with “org.paging.”' }).waitFor();
  await page.locator('#page-label', { hasText: '1–50 of 120' }).waitFor();
  assert.equal(await page.locator('#services-table tbody tr').count(), 50);
  assert.equal(await page.locator('#services-table tbody tr').first().getAttribute('data-id'), idOf('org.paging.S000'));

  await page.getByRole('button', { name: 'Next' }).click();
  await page.locator('#page-label', { hasText: '51–100 of 120' }).waitFor();
  assert.equal(await page.locator('#services-table tbody tr').first().getAttribute('data-id'), idOf('org.paging.S050'));
  await page.getByRole('button', { name: 'Next' }).click();
  await page.locator('#page-label', { hasText: '101–120 of 120' }).waitFor();
  assert.ok(await page.getByRole('button', { name: 'Next' }).isDisabled());

  await page.getByRole('button', { name: 'Publishers' }).click();
  await page.locator('#page-label', { hasText: '1–50 of 120' }).waitFor();
  await eventually('S007 first by publishers', async () =>
    (await page.locator('#services-table tbody tr').first().getAttribute('data-id')) === idOf('org.paging.S007'));
  assert.equal(await page.locator('#services-table th[aria-sort="descending"]').textContent(), 'Publishers');

  await page.getByRole('button', { name: 'Service' }).click();
  await eventually('sorted by name again', async () =>
    (await page.locator('#services-table th[aria-sort="ascending"]').textContent()) === 'Service');
  await page.getByRole('button', { name: 'Service' }).click();
  await eventually('by name, descending', async () =>
    (await page.locator('#services-table tbody tr').first().getAttribute('data-id')) === idOf('org.paging.S119'));
  await screenshot(page, 'services-1280');
  assert.ok(await fitsWidth(page));
  assert.deepEqual(page.problems, []);
  await page.close();
});


test('100,000 services: counted, sorted and paged', async () => {
  const n = 100_000;
  const ids = Array.from({ length: n }, (_, i) => `net.scale.S${String(i).padStart(6, '0')}`);
  // Ten sessions of 10,000 publishers each, 1,000 per request.
  await Promise.all(Array.from({ length: 10 }, async (_, s) => {
    const session = await api.session(`scale-${s}`);
    await api.publishMany(session, ids.slice(s * 10_000, (s + 1) * 10_000));
  }));
  const page = await browser.page();
  await page.goto(`${node.url}/ui/#/services?prefix=net.scale.`);
  await page.locator('#services-summary', { hasText: '100,000 services starting with “net.scale.”' }).waitFor();
  await page.locator('#page-label', { hasText: '1–50 of 100,000' }).waitFor();
  await page.locator('#page-size').selectOption('500');
  await page.locator('#page-label', { hasText: '1–500 of 100,000' }).waitFor();
  await page.getByRole('button', { name: 'Service' }).click();
  await eventually('the last service first', async () =>
    (await page.locator('#services-table tbody tr').first().getAttribute('data-id')) === idOf('net.scale.S099999'));
  const started = Date.now();
  await page.getByRole('button', { name: 'Next' }).click();
  await page.locator('#page-label', { hasText: '501–1,000 of 100,000' }).waitFor();
  assert.equal(await page.locator('#services-table tbody tr').first().getAttribute('data-id'), idOf('net.scale.S099499'));
  console.log(`# next page of 100,000 services shown in ${Date.now() - started} ms`);
  assert.deepEqual(page.problems, []);
  await page.close();
});
