// The registry console: a few views over the public HTTP API (API.md and the README's
// extensions), with no framework and no build step. Everything the API returns is
// caller-controlled text: it only ever reaches the page as textContent, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'registry.console.token';
  const SERVICES_REFRESH_MS = 3000;
  const CLUSTER_REFRESH_MS = 3000;
  const PUSH_REFRESH_MS = 5000;
  const WAIT = '30s';

  // === DOM helpers ===

  const $ = (sel) => document.querySelector(sel);

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fact(dl, term, value, attrs) {
    dl.append(el('dt', {}, term), el('dd', attrs || {}, value));
  }

  const fmt = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '—');

  function age(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(new DOMException('aborted', 'AbortError'));
      const t = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => {
        clearTimeout(t);
        reject(new DOMException('aborted', 'AbortError'));
      }, { once: true });
    });
  }

  const isAbort = (e) => e && e.name === 'AbortError';

  // === The token: asked once, kept for this tab only ===

  let tokenPrompt = null; // the open prompt, shared by every request that got a 401
  let tokenDeclined = false; // cancelled: stop asking until the user asks to enter one

  const storedToken = () => sessionStorage.getItem(TOKEN_KEY);

  function showForget() {
    $('#forget-token').hidden = !storedToken();
  }

  function askToken(reason) {
    if (tokenPrompt) return tokenPrompt;
    const dialog = $('#token-dialog');
    $('#token-reason').textContent =
      reason || 'This registry requires a bearer token. It is kept for this tab only.';
    $('#token-input').value = '';
    tokenPrompt = new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        const value = $('#token-input').value.trim();
        tokenPrompt = null;
        if (dialog.returnValue === 'ok' && value) {
          sessionStorage.setItem(TOKEN_KEY, value);
          tokenDeclined = false;
          resolve(true);
        } else {
          tokenDeclined = true;
          resolve(false);
        }
        showForget();
      }, { once: true });
    });
    dialog.returnValue = '';
    dialog.showModal();
    return tokenPrompt;
  }

  // === The API ===

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** What an API error means for the person looking at the page. */
  function explain(e) {
    switch (e.status) {
      case 0: return `Cannot reach the registry node (${e.message}). Retrying…`;
      case 401: return 'Unauthorized: this registry requires a token, and the request had none or a wrong one.';
      case 403: return `Forbidden: your token is valid but lacks the right for this (${e.message}).`;
      case 429: return `Busy: a limit of the node is reached (${e.message}). Retrying…`;
      case 503: return `Unavailable: the node cannot reach its data layer or has no membership yet (${e.message}). Retrying…`;
      default: return `Error ${e.status} ${e.code || ''}: ${e.message}`;
    }
  }

  /**
   * Calls the API with the tab's token. A 401 asks for the token (once, shared by
   * concurrent calls) and retries; every other failure is thrown as an ApiError.
   */
  async function api(path, { method = 'GET', body, signal } = {}) {
    for (;;) {
      const token = storedToken();
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let res;
      try {
        res = await fetch(path, {
          method, headers, signal, cache: 'no-store',
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (e) {
        if (isAbort(e)) throw e;
        throw new ApiError(0, 'network', e.message);
      }
      if (res.status === 401 && !tokenDeclined) {
        if (token && storedToken() === token && tokenPrompt === null) sessionStorage.removeItem(TOKEN_KEY);
        const got = await askToken(token ? 'The token was refused. Enter a valid token.' : null);
        if (got) continue;
      }
      if (!res.ok) {
        let code = '';
        let message = res.statusText;
        try {
          const err = (await res.json()).error;
          code = err.code;
          message = err.message;
        } catch (_) { /* not the API's error shape */ }
        throw new ApiError(res.status, code, message);
      }
      return { body: res.status === 204 ? null : await res.json(), headers: res.headers };
    }
  }

  // === The banner ===

  function showError(e) {
    const b = $('#banner');
    b.className = 'banner';
    b.replaceChildren(el('span', { 'data-status': e.status }, explain(e)));
    if (e.status === 401) {
      const again = el('button', { type: 'button', class: 'link-inline' }, 'Enter token');
      again.addEventListener('click', () => {
        tokenDeclined = false;
        askToken().then((got) => { if (got) route(); });
      });
      b.append(' ', again);
    }
    b.hidden = false;
  }

  function clearError() {
    $('#banner').hidden = true;
  }

  // === Views ===

  const views = {};
  let running = null; // AbortController of the view on screen

  /** The view named by the location hash: `#/name?query`. */
  function parseHash() {
    const h = location.hash.replace(/^#\/?/, '');
    const i = h.indexOf('?');
    return {
      name: (i < 0 ? h : h.slice(0, i)) || 'services',
      params: new URLSearchParams(i < 0 ? '' : h.slice(i + 1)),
    };
  }

  function route() {
    if (running) running.abort();
    running = new AbortController();
    clearError();
    let { name, params } = parseHash();
    if (!views[name]) name = 'services';
    for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== `view-${name}`;
    for (const a of document.querySelectorAll('[data-nav]')) {
      if (a.dataset.nav === name || (name === 'service' && a.dataset.nav === 'services')) {
        a.setAttribute('aria-current', 'page');
      } else {
        a.removeAttribute('aria-current');
      }
    }
    const signal = running.signal;
    views[name](params, signal).catch((e) => { if (!isAbort(e)) showError(e); });
  }

  /** Runs `step` every `ms` until the view is left; errors are shown and retried. */
  async function poll(ms, signal, step) {
    for (;;) {
      try {
        await step();
        clearError();
      } catch (e) {
        if (isAbort(e)) throw e;
        showError(e);
      }
      await sleep(ms, signal);
    }
  }

  // --- services ---

  const services = { prefix: '', sort: 'dataInfoId', order: 'asc', offset: 0, size: 50 };
  let servicesReload = null;

  function servicesQuery() {
    return new URLSearchParams({
      prefix: services.prefix,
      limit: String(services.size),
      offset: String(services.offset),
      sort: services.sort,
      order: services.order,
    });
  }

  function serviceHref(s) {
    const q = new URLSearchParams({ dataId: s.dataId, group: s.group, instanceId: s.instanceId });
    return `#/service?${q}`;
  }

  function renderServices(body) {
    const rows = body.services || [];
    const total = typeof body.total === 'number' ? body.total : rows.length;
    const tbody = $('#services-table tbody');
    tbody.replaceChildren(...rows.map((s) => el('tr', { 'data-id': s.dataInfoId },
      el('td', {}, el('a', { href: serviceHref(s), class: 'mono' }, s.dataId)),
      el('td', { class: 'mono' }, s.group),
      el('td', { class: 'mono' }, s.instanceId),
      el('td', { class: 'num' }, fmt(s.publisherCount)),
      el('td', { class: 'num' }, fmt(s.subscriberCount)),
    )));
    if (rows.length === 0) {
      tbody.append(el('tr', {}, el('td', { colspan: 5, class: 'empty' },
        services.prefix ? 'No service matches this prefix.' : 'No service has a publisher yet.')));
    }
    const what = total === 1 ? 'service' : 'services';
    $('#services-summary').textContent = services.prefix
      ? `${fmt(total)} ${what} starting with “${services.prefix}”`
      : `${fmt(total)} ${what}`;
    const first = rows.length ? services.offset + 1 : 0;
    $('#page-label').textContent = `${fmt(first)}–${fmt(services.offset + rows.length)} of ${fmt(total)}`;
    $('#page-first').disabled = services.offset === 0;
    $('#page-prev').disabled = services.offset === 0;
    $('#page-next').disabled = services.offset + rows.length >= total;
    for (const th of document.querySelectorAll('#services-table th')) {
      const b = th.querySelector('[data-sort]');
      if (b && b.dataset.sort === services.sort) {
        th.setAttribute('aria-sort', services.order === 'asc' ? 'ascending' : 'descending');
      } else {
        th.removeAttribute('aria-sort');
      }
    }
  }

  views.services = async (params, signal) => {
    if (params.has('prefix')) services.prefix = params.get('prefix');
    $('#prefix').value = services.prefix;
    $('#page-size').value = String(services.size);
    let wake = null;
    servicesReload = () => { if (wake) wake(); };
    signal.addEventListener('abort', () => { servicesReload = null; }, { once: true });
    for (;;) {
      try {
        const { body } = await api(`/api/v1/services?${servicesQuery()}`, { signal });
        // Past the end (services went away): back to the last page.
        if ((body.services || []).length === 0 && services.offset > 0 && body.total > 0) {
          services.offset = Math.max(0, Math.floor((body.total - 1) / services.size) * services.size);
          continue;
        }
        renderServices(body);
        clearError();
      } catch (e) {
        if (isAbort(e)) throw e;
        showError(e);
      }
      // Refresh periodically, or at once when the search, sort or page changes.
      const inner = new AbortController();
      const stop = () => inner.abort();
      signal.addEventListener('abort', stop, { once: true });
      wake = stop;
      try { await sleep(SERVICES_REFRESH_MS, inner.signal); } catch (_) { /* woken */ }
      signal.removeEventListener('abort', stop);
      wake = null;
      if (signal.aborted) throw new DOMException('aborted', 'AbortError');
    }
  };

  function reloadServices() {
    if (servicesReload) servicesReload();
  }

  let searchTimer = null;
  $('#prefix').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      services.prefix = $('#prefix').value;
      services.offset = 0;
      const q = new URLSearchParams({ prefix: services.prefix });
      history.replaceState(null, '', `#/services?${q}`);
      reloadServices();
    }, 250);
  });
  $('#services-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearTimeout(searchTimer);
    services.prefix = $('#prefix').value;
    services.offset = 0;
    reloadServices();
  });
  $('#page-size').addEventListener('change', () => {
    services.size = Number($('#page-size').value);
    services.offset = 0;
    reloadServices();
  });
  for (const b of document.querySelectorAll('[data-sort]')) {
    b.addEventListener('click', () => {
      const key = b.dataset.sort;
      if (services.sort === key) {
        services.order = services.order === 'asc' ? 'desc' : 'asc';
      } else {
        services.sort = key;
        services.order = key === 'dataInfoId' ? 'asc' : 'desc';
      }
      services.offset = 0;
      reloadServices();
    });
  }
  $('#page-first').addEventListener('click', () => { services.offset = 0; reloadServices(); });
  $('#page-prev').addEventListener('click', () => {
    services.offset = Math.max(0, services.offset - services.size);
    reloadServices();
  });
  $('#page-next').addEventListener('click', () => {
    services.offset += services.size;
    reloadServices();
  });

  // --- one service, followed with blocking queries ---

  let clockSkew = 0; // server clock minus this browser's, from the Date header

  function noteServerTime(headers) {
    const d = Date.parse(headers.get('date') || '');
    // Date has second resolution: assume the middle of that second.
    if (!Number.isNaN(d)) clockSkew = d + 500 - Date.now();
  }

  function tickAges() {
    const now = Date.now() + clockSkew;
    for (const cell of document.querySelectorAll('[data-registered]')) {
      cell.textContent = age(now - Number(cell.dataset.registered));
    }
  }
  setInterval(tickAges, 1000);

  function renderService(key, body) {
    $('#service-title').textContent = key.dataId;
    const facts = $('#service-facts');
    facts.replaceChildren();
    fact(facts, 'dataInfoId', body.dataInfoId, { class: 'mono' });
    fact(facts, 'Group', key.group || 'DEFAULT_GROUP', { class: 'mono' });
    fact(facts, 'Instance', key.instanceId || 'DEFAULT_INSTANCE_ID', { class: 'mono' });
    fact(facts, 'Datum version', String(body.version), { id: 'datum-version', class: 'mono' });
    fact(facts, 'Publishers', fmt(body.publishers.length), { id: 'publisher-count' });

    const byZone = new Map();
    for (const p of body.publishers) {
      if (!byZone.has(p.zone)) byZone.set(p.zone, []);
      byZone.get(p.zone).push(p);
    }
    const zones = [...byZone.keys()].sort();
    const out = $('#zones');
    out.replaceChildren();
    if (zones.length === 0) {
      out.append(el('p', { class: 'summary' }, 'No live publisher.'));
    }
    for (const zone of zones) {
      const pubs = byZone.get(zone);
      const rows = pubs.map((p) => el('tr', { 'data-register-id': p.registerId },
        el('td', { class: 'mono' }, p.registerId),
        el('td', { class: 'mono' }, p.clientId || '—'),
        el('td', { class: 'num' }, fmt(p.version)),
        typeof p.registerTimestamp === 'number'
          ? el('td', { class: 'num', 'data-registered': p.registerTimestamp })
          : el('td', { class: 'num' }, '—'),
        el('td', {}, el('ul', { class: 'data-items mono' }, ...p.data.map((d) => el('li', {}, d)))),
      ));
      const headingId = `zone-${zones.indexOf(zone)}`;
      out.append(el('section', { class: 'zone', 'aria-labelledby': headingId, 'data-zone': zone },
        el('h2', { id: headingId }, `Zone ${zone} `, el('span', { class: 'hint' }, `(${pubs.length})`)),
        el('div', { class: 'scroll' }, el('table', { class: 'grid' },
          el('thead', {}, el('tr', {},
            el('th', { scope: 'col' }, 'registerId'),
            el('th', { scope: 'col' }, 'clientId'),
            el('th', { scope: 'col', class: 'num' }, 'Version'),
            el('th', { scope: 'col', class: 'num', title: 'Since this version was registered' }, 'Age'),
            el('th', { scope: 'col' }, 'Data'))),
          el('tbody', {}, ...rows)))));
    }
    tickAges();
  }

  views.service = async (params, signal) => {
    const key = {
      dataId: params.get('dataId') || '',
      group: params.get('group') || '',
      instanceId: params.get('instanceId') || '',
    };
    $('#service-title').textContent = key.dataId;
    $('#service-facts').replaceChildren();
    $('#zones').replaceChildren();
    const live = $('#service-live');
    live.className = 'summary';
    live.textContent = 'Loading…';
    let index = null;
    let backoff = 500;
    for (;;) {
      const q = new URLSearchParams({ dataId: key.dataId });
      if (key.group) q.set('group', key.group);
      if (key.instanceId) q.set('instanceId', key.instanceId);
      if (index !== null) {
        q.set('waitIndex', String(index));
        q.set('wait', WAIT);
      }
      try {
        const { body, headers } = await api(`/api/v1/data?${q}`, { signal });
        noteServerTime(headers);
        renderService(key, body);
        index = body.version;
        backoff = 500;
        clearError();
        live.className = 'summary live';
        live.textContent = `Live: following changes after version ${index}`;
      } catch (e) {
        if (isAbort(e)) throw e;
        showError(e);
        live.className = 'summary live paused';
        live.textContent = 'Not following changes: retrying';
        // A 400 will not heal by retrying: stop.
        if (e.status === 400) return;
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  };

  // --- cluster ---

  function yesNo(v) {
    if (v === true) return el('span', { class: 'state yes' }, 'synced');
    if (v === false) return el('span', { class: 'state no' }, 'syncing');
    return el('span', { class: 'state unreachable' }, 'unknown');
  }

  function renderCluster(c) {
    const facts = $('#cluster-facts');
    facts.replaceChildren();
    fact(facts, 'This node', c.nodeName, { class: 'mono', id: 'this-node' });
    fact(facts, 'Roles', (c.roles || []).join(', '), { id: 'this-roles' });
    fact(facts, 'Membership epoch', fmt(c.epoch), { id: 'this-epoch' });
    fact(facts, 'Ready', c.ready ? 'yes' : 'no (data layer not reachable or no membership yet)',
      { id: 'this-ready' });
    if (typeof c.replicationFactor === 'number') fact(facts, 'Replication factor', fmt(c.replicationFactor));

    const data = c.dataNodes || [];
    $('#data-nodes tbody').replaceChildren(...data.map((d) => el('tr', { 'data-address': d.address },
      el('td', { class: 'mono' }, d.address),
      el('td', {}, el('span', { class: `state ${d.state || ''}` }, d.state || 'member')),
      el('td', {}, d.reachable === false ? el('span', { class: 'state unreachable' }, 'unreachable') : yesNo(d.synced)),
      el('td', { class: 'num' }, typeof d.ringShare === 'number' ? `${(d.ringShare * 100).toFixed(1)}%` : '—'),
      el('td', { class: 'num' }, fmt(d.datums)),
      el('td', { class: 'num' }, fmt(d.publishers)),
    )));
    if (data.length === 0) {
      $('#data-nodes tbody').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No data node in the membership yet.')));
    }
    const sessions = c.sessionNodes || [];
    $('#session-nodes tbody').replaceChildren(...sessions.map((s) => el('tr', { 'data-name': s.name },
      el('td', { class: 'mono' }, s.name, s.name === c.nodeName ? el('span', { class: 'hint' }, ' (this node)') : null),
      el('td', { class: 'mono' }, (s.seenBy || []).join(', ') || '—'),
      el('td', { class: 'num' }, (s.seenBy || []).length ? `${age(s.lastRenewalMs)} ago` : '—'),
    )));
    if (sessions.length === 0) {
      $('#session-nodes tbody').append(el('tr', {}, el('td', { colspan: 3, class: 'empty' }, 'No session node known.')));
    }
  }

  views.cluster = (params, signal) => poll(CLUSTER_REFRESH_MS, signal, async () => {
    const { body } = await api('/api/v1/cluster', { signal });
    renderCluster(body);
  });

  // --- push switch ---

  let pushState = null;

  function renderPush(p) {
    pushState = p;
    const facts = $('#push-facts');
    facts.replaceChildren();
    fact(facts, 'State', el('span', { class: `state ${p.stopPush ? 'stopped' : 'pushing'}` },
      p.stopPush ? 'Stopped: no push is sent' : 'Pushing'), { id: 'push-state' });
    fact(facts, 'Push delay', `${fmt(p.pushDelayMillis)} ms`, { id: 'push-delay-value' });
    const b = $('#push-toggle');
    b.disabled = false;
    b.textContent = p.stopPush ? 'Resume pushes' : 'Stop pushes';
    b.className = p.stopPush ? 'primary' : 'danger';
    const input = $('#push-delay');
    if (document.activeElement !== input) input.value = String(p.pushDelayMillis);
  }

  function confirmAction(title, text, okLabel) {
    const dialog = $('#confirm-dialog');
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    $('#confirm-ok').textContent = okLabel;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
    });
  }

  async function putPush(change) {
    try {
      const { body } = await api('/api/v1/admin/push', { method: 'PUT', body: change });
      renderPush(body);
      clearError();
    } catch (e) {
      showError(e);
    }
  }

  views.push = (params, signal) => poll(PUSH_REFRESH_MS, signal, async () => {
    const { body } = await api('/api/v1/admin/push', { signal });
    renderPush(body);
  });

  $('#push-toggle').addEventListener('click', async () => {
    if (!pushState) return;
    const stop = !pushState.stopPush;
    const ok = await confirmAction(
      stop ? 'Stop all pushes?' : 'Resume pushes?',
      stop
        ? 'Subscribers of this node get no update until pushes are resumed.'
        : 'Every subscriber of this node is brought up to date.',
      stop ? 'Stop pushes' : 'Resume pushes');
    if (ok) await putPush({ stopPush: stop });
  });

  $('#delay-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const ms = Number($('#push-delay').value);
    const ok = await confirmAction('Change the push delay?',
      `Changes to one service within ${fmt(ms)} ms will reach subscribers as one push.`, 'Set delay');
    if (ok) await putPush({ pushDelayMillis: ms });
  });

  // === Start ===

  // Cancel buttons are plain buttons: Enter in a dialog's field submits its action instead.
  for (const b of document.querySelectorAll('dialog [data-close]')) {
    b.addEventListener('click', () => b.closest('dialog').close(b.dataset.close));
  }

  $('#forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenDeclined = false;
    showForget();
    route();
  });

  document.addEventListener('keydown', (ev) => {
    const t = ev.target;
    const typing = t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
    if (ev.key === '/' && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      ev.preventDefault();
      if (parseHash().name !== 'services') location.hash = '#/services';
      $('#prefix').focus();
    }
  });

  window.addEventListener('hashchange', () => {
    route();
    $('#main').focus({ preventScroll: true });
  });

  showForget();
  api('/api/v1/cluster')
    .then(({ body }) => { $('#node-name').textContent = `${body.nodeName} · ${(body.roles || []).join(', ')}`; })
    .catch(() => { /* the view shows the error */ });
  route();
})();
