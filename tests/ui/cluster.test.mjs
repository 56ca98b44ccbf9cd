// The console on a cluster of real processes: 3 data nodes and 2 session nodes on loopback.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Api, startNode, membersFile, openBrowser, eventually, markDocument, notReloaded, screenshot } from './kit.mjs';

let members;
let data = [];
let sessions = [];
let browser;

before(async () => {
  members = membersFile();
  const common = ['--members-file', members.path, '--session-lease-ms', '3000', '--anti-entropy-ms', '500', '--reconcile-ms', '500'];
  data = await Promise.all([1, 2, 3].map((i) =>
    startNode(`ui-data-${i}`, ['--role', 'data', '--data-addr', '127.0.0.1:0', '--node-name', `d${i}`, ...common])));
  members.write({ epoch: 1, members: data.map((d) => d.data) });
  sessions = await Promise.all([1, 2].map((i) =>
    startNode(`ui-session-${i}`, ['--role', 'session', '--http-addr', '127.0.0.1:0', '--node-name', `s${i}`, ...common])));
  browser = await openBrowser();
});

after(async () => {
  if (browser) await browser.close();
  await Promise.all([...sessions, ...data].map((n) => n.stop()));
  if (members) members.remove();
});

test('the cluster page: roles, epoch, data nodes with state, sync and ring share, session nodes', async () => {
  const [s1, s2] = sessions;
  // Both session nodes serve the console.
  for (const s of sessions) {
    const res = await fetch(`${s.url}/ui/`);
    assert.equal(res.status, 200);
  }
  const page = await browser.page();
  await page.goto(`${s1.url}/ui/#/cluster`);
  await page.locator('#this-node', { hasText: 's1' }).waitFor();
  assert.equal(await page.locator('#this-roles').textContent(), 'session');
  await page.locator('#this-epoch', { hasText: /^1$/ }).waitFor();
  await markDocument(page);

  const rows = page.locator('#data-nodes tbody tr');
  await eventually('three active, synced data nodes', async () => {
    if ((await rows.count()) !== 3) return false;
    for (const d of data) {
      const cells = await page.locator(`#data-nodes tr[data-address="${d.data}"] td`).allTextContents();
      if (cells[1] !== 'active' || cells[2] !== 'synced') return false;
    }
    return true;
  }, 30000);
  const shares = await page.locator('#data-nodes tbody tr td:nth-child(4)').allTextContents();
  const sum = shares.map((s) => Number(s.replace('%', ''))).reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(sum - 100) < 0.5, `ring shares add up to 100%: ${shares}`);
  for (const s of shares) assert.ok(Number(s.replace('%', '')) > 15, `each node has a fair share: ${shares}`);

  // Both session nodes hold leases on the data nodes: both are listed.
  await page.locator('#session-nodes tr[data-name="s1"]').waitFor();
  await page.locator('#session-nodes tr[data-name="s2"]').waitFor();
  await screenshot(page, 'cluster-1280');

  // A publish through s2 shows in the data nodes' counts seen from s1.
  const api2 = new Api(s2.url);
  const session = await api2.session('cluster-ui');
  await api2.publish(session, { dataId: 'com.example.Clustered', data: ['10.2.0.1:80'] });
  await eventually('publisher counted on its owners', async () => {
    const counts = await page.locator('#data-nodes tbody tr td:nth-child(6)').allTextContents();
    return counts.filter((c) => c === '1').length === 3; // RF 3 on 3 nodes: every node holds it
  }, 30000);

  // A new epoch marks a node leaving: the page follows without a reload.
  const leaving = data[2].data;
  members.write({ epoch: 2, members: [data[0].data, data[1].data], leaving: [leaving] });
  await page.locator('#this-epoch', { hasText: /^2$/ }).waitFor({ timeout: 30000 });
  await page.locator(`#data-nodes tr[data-address="${leaving}"] td:nth-child(2)`, { hasText: 'leaving' }).waitFor({ timeout: 30000 });
  const leavingShare = await page.locator(`#data-nodes tr[data-address="${leaving}"] td:nth-child(4)`).textContent();
  assert.equal(leavingShare, '0.0%', 'a leaving node is out of the ring');
  assert.ok(await notReloaded(page));
  await screenshot(page, 'cluster-leaving-1280');
  assert.deepEqual(page.problems, []);
  assert.deepEqual(browser.offsite, []);
  await page.close();
});

test('a session node without a data layer says it is unavailable (503), not a blank page', async () => {
  const lonely = membersFile(); // never written: no membership
  const node = await startNode('ui-session-alone', ['--role', 'session', '--http-addr', '127.0.0.1:0', '--node-name', 'alone', '--members-file', lonely.path]);
  try {
    const page = await browser.page();
    await page.goto(`${node.url}/ui/`);
    await page.locator('#banner', { hasText: 'Unavailable: the node cannot reach its data layer or has no membership yet' }).waitFor();
    await screenshot(page, 'services-unavailable');
    await page.goto(`${node.url}/ui/#/cluster`);
    await page.locator('#this-ready', { hasText: 'no' }).waitFor();
    await page.close();
  } finally {
    await node.stop();
    lonely.remove();
  }
});
