// The console on a standalone node: the services list and one service, followed live.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Api, startStandalone, openBrowser, eventually, markDocument, notReloaded, screenshot, fitsWidth,
} from './kit.mjs';

let node;
let api;
let browser;

before(async () => {
  node = await startStandalone('ui-standalone');
  api = new Api(node.url);
  browser = await openBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (node) await node.stop();
});

const rowOf = (page, dataInfoId) => page.locator(`#services-table tr[data-id=${JSON.stringify(dataInfoId)}]`);
const idOf = (dataId) => `${dataId}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP`;

test('a publish appears in the list and on the service page without a reload; a removal disappears', async () => {
  const page = await browser.page();
  await page.goto(`${node.url}/ui/`);
  await page.locator('#services-summary').filter({ hasText: /services?/ }).waitFor();
  await markDocument(page);

  const session = await api.session('ui-test-client');
  const first = await api.publish(session, {
    dataId: 'com.example.Echo', zone: 'zone-a', registerId: 'echo-a-1', data: ['10.0.0.1:8080'],
  });
  await api.subscribe(session, { dataId: 'com.example.Echo' });

  const row = rowOf(page, first.dataInfoId);
  await row.waitFor();
  await eventually('publisher and subscriber counts', async () =>
    (await row.locator('td').nth(3).textContent()) === '1' && (await row.locator('td').nth(4).textContent()) === '1');
  assert.ok(await notReloaded(page), 'the list updated in place');

  // Open the service with the keyboard.
  await row.getByRole('link', { name: 'com.example.Echo' }).focus();
  await page.keyboard.press('Enter');
  await page.locator('#view-service:not([hidden])').waitFor();
  const pub = page.locator('tr[data-register-id="echo-a-1"]');
  await pub.waitFor();
  assert.match(await pub.textContent(), /echo-a-1.*ui-test-client.*10\.0\.0\.1:8080/s);
  await page.locator('#service-live.live').waitFor();

  // A second publisher in another zone and a new version of the first appear live.
  await api.publish(session, { dataId: 'com.example.Echo', zone: 'zone-b', registerId: 'echo-b-1', data: ['10.0.1.1:8080'] });
  await api.publish(session, { dataId: 'com.example.Echo', zone: 'zone-a', registerId: 'echo-a-1', data: ['10.0.0.1:9090'] });
  const zoneB = page.locator('section.zone[data-zone="zone-b"]');
  await zoneB.locator('tr[data-register-id="echo-b-1"]').waitFor();
  await eventually('version 2 of echo-a-1', async () => {
    const cells = await page.locator('section.zone[data-zone="zone-a"] tr[data-register-id="echo-a-1"] td').allTextContents();
    return cells[2] === '2' && cells[4].includes('10.0.0.1:9090') && /^\d+s$/.test(cells[3]);
  });
  await screenshot(page, 'service-1280');

  await api.unpublish(session, 'echo-a-1');
  await page.locator('tr[data-register-id="echo-a-1"]').waitFor({ state: 'detached' });
  await page.locator('section.zone[data-zone="zone-a"]').waitFor({ state: 'detached' });
  assert.equal(await zoneB.locator('tr').count(), 2, 'header row and echo-b-1 remain');
  const version = Number(await page.locator('#datum-version').textContent());
  const data = await api.call('GET', '/api/v1/data?dataId=com.example.Echo');
  assert.equal(version, data.version, 'the page shows the datum version of the API');
  assert.ok(await notReloaded(page), 'followed without a reload');
  assert.deepEqual(page.problems, []);
  await page.close();
});

test('caller-controlled names are shown as text, never run as markup', async () => {
  const page = await browser.page();
  const session = await api.session('<b>client</b>');
  const evil = '<img src=x onerror="window.__pwned=1">';
  await api.publish(session, { dataId: evil, registerId: 'evil-1', data: ['<script>window.__pwned=2</script>'] });
  await page.goto(`${node.url}/ui/#/services?prefix=${encodeURIComponent('<img')}`);
  const row = rowOf(page, idOf(evil));
  await row.waitFor();
  assert.equal(await row.locator('a').textContent(), evil);
  await row.locator('a').click();
  await page.locator('tr[data-register-id="evil-1"]').waitFor();
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await page.locator('#zones img, #zones script, #zones b').count(), 0);
  await page.close();
});

test('readable at 390 px: no horizontal page scroll on any view', async () => {
  const phone = await openBrowser({ width: 390, height: 844 });
  try {
    const page = await phone.page();
    await page.goto(`${node.url}/ui/#/services?prefix=com.example.`);
    await page.locator('#services-table tr[data-id^="com.example.Echo#@#"]').waitFor();
    assert.ok(await fitsWidth(page), 'services fit 390 px');
    await screenshot(page, 'services-390');
    await page.goto(`${node.url}/ui/#/service?dataId=com.example.Echo`);
    await page.locator('tr[data-register-id="echo-b-1"]').waitFor();
    assert.ok(await fitsWidth(page), 'service fits 390 px');
    await screenshot(page, 'service-390');
    await page.goto(`${node.url}/ui/#/cluster`);
    await page.locator('#this-node', { hasText: 'ui-standalone' }).waitFor();
    assert.ok(await fitsWidth(page), 'cluster fits 390 px');
    await page.goto(`${node.url}/ui/#/push`);
    await page.locator('#push-state', { hasText: 'Pushing' }).waitFor();
    assert.ok(await fitsWidth(page), 'push switch fits 390 px');
    await screenshot(page, 'push-390');
    assert.deepEqual(phone.offsite, [], 'nothing loaded from outside');
  } finally {
    await phone.close();
  }
});

test('the console loads nothing from outside this node', async () => {
  assert.deepEqual(browser.offsite, []);
});
