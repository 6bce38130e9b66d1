// psbroker console: one ES module, no framework, no other origin. It reads the /v1 API with the
// token its user typed (kept in this tab's sessionStorage, sent only as an Authorization header),
// renders with DOM calls (never innerHTML with data) and polls the view on screen.

const TOKEN_KEY = 'psbroker.token';
const POLL_MS = 2000;
const VIEWS = ['pools', 'sessions', 'batches', 'failures', 'audit'];
const STATUSES = ['succeeded', 'failed', 'cancelled', 'running', 'queued'];

const $ = (id) => document.getElementById(id);

/** A DOM element: `attrs` are attributes (`class`, `text`, `on<event>` handlers), children nodes or text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

const state = {
  token: null,
  me: null,
  view: 'pools',
  paused: false,
  busy: false,
  again: false,
  timer: null,
  batches: { limit: 50, open: null, items: [], itemsNext: null, itemsLimit: 100 },
  audit: { filters: {}, entries: [], next: null, paged: false },
};

// ---- API ---------------------------------------------------------------------------------

async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== '' && value !== null && value !== undefined) url.searchParams.set(key, value);
  }
  const resp = await fetch(url, {
    headers: { Authorization: `Bearer ${state.token}`, Accept: 'application/json' },
    cache: 'no-store',
    credentials: 'omit',
    referrerPolicy: 'no-referrer',
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const e = body && body.error ? body.error : { code: `http_${resp.status}`, message: resp.statusText };
    throw new ApiError(resp.status, e.code, e.message);
  }
  return body;
}

// ---- Formatting --------------------------------------------------------------------------

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function ago(iso) {
  if (!iso) return '–';
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  return `${duration(seconds)} ago`;
}

function time(iso) {
  return iso ? el('time', { datetime: iso, title: iso, text: ago(iso) }) : '–';
}

function badge(text, kind) {
  return el('span', { class: `badge ${kind || text}`, text });
}

function shortId(id) {
  return id ? id.slice(-12) : '–';
}

// ---- Rendering helpers -------------------------------------------------------------------

/** Fills a table: `columns` are `{label, cell(row), cls}`; an empty list says `empty`. */
function fillTable(table, columns, rows, empty) {
  const head = el('thead', {}, el('tr', {}, columns.map((c) => el('th', { scope: 'col', class: c.cls, text: c.label }))));
  const body = el('tbody');
  if (rows.length === 0) {
    body.append(el('tr', {}, el('td', { colspan: columns.length, class: 'empty', text: empty })));
  }
  for (const row of rows) {
    body.append(el('tr', {}, columns.map((c) => el('td', { class: c.cls }, c.cell(row)))));
  }
  table.replaceChildren(head, body);
}

/** A stacked progress bar of a batch's counts. */
function progress(c) {
  const finished = c.succeeded + c.failed + c.cancelled;
  const pct = c.total ? Math.round((finished / c.total) * 100) : 100;
  const parts = STATUSES.filter((s) => c[s] > 0).map((s) => `${c[s]} ${s}`).join(', ');
  const bar = el('div', {
    class: 'progress',
    role: 'progressbar',
    'aria-valuemin': 0,
    'aria-valuemax': c.total,
    'aria-valuenow': finished,
    'aria-valuetext': `${finished} of ${c.total} finished (${pct} %)${parts ? `: ${parts}` : ''}`,
    title: parts,
  });
  for (const s of STATUSES) {
    if (c[s] > 0 && c.total > 0) {
      const seg = el('span', { class: `seg ${s}` });
      seg.style.width = `${(c[s] / c.total) * 100}%`;
      bar.append(seg);
    }
  }
  return el('div', { class: 'progress-row' }, bar, el('span', { class: 'pct', text: `${pct} %` }));
}

/** Open sessions against the cap, with the effective cap marked when it is lower. */
function capBar(p) {
  const scale = Math.max(p.cap, 1);
  const bar = el('div', {
    class: 'capbar',
    role: 'img',
    'aria-label': `${p.open} open of cap ${p.cap}, effective cap ${p.effective_cap}`,
  });
  const fill = el('span', { class: `fill${p.open >= p.effective_cap && p.open > 0 ? ' full' : ''}` });
  fill.style.width = `${Math.min(100, (p.open / scale) * 100)}%`;
  bar.append(fill);
  if (p.effective_cap < p.cap) {
    const mark = el('span', { class: 'mark', title: `effective cap ${p.effective_cap}` });
    mark.style.left = `${(p.effective_cap / scale) * 100}%`;
    bar.append(mark);
  }
  return bar;
}

function matches(filterInput, ...fields) {
  const needle = filterInput.value.trim().toLowerCase();
  return !needle || fields.some((f) => String(f ?? '').toLowerCase().includes(needle));
}

function invocationButton(id) {
  if (!id) return '–';
  return el('button', { type: 'button', class: 'link mono', title: `Show invocation ${id}`, onclick: () => showInvocation(id) }, shortId(id));
}

async function showInvocation(id) {
  const dialog = $('invocation');
  $('invocation-title').textContent = `Invocation ${id}`;
  try {
    $('invocation-body').textContent = JSON.stringify(await api(`/v1/invocations/${id}`), null, 2);
  } catch (e) {
    $('invocation-body').textContent = e.message;
  }
  if (!dialog.open) dialog.showModal();
}

// ---- Views -------------------------------------------------------------------------------

const poolColumns = (kind) => [
  { label: kind, cell: (p) => el('span', { class: 'mono', text: p.name }) },
  { label: 'Sessions', cell: capBar, cls: 'wide' },
  { label: 'Open', cell: (p) => p.open, cls: 'num' },
  { label: 'Busy', cell: (p) => p.busy, cls: 'num' },
  { label: 'Cap', cell: (p) => p.cap, cls: 'num' },
  {
    label: 'Effective cap',
    cls: 'num',
    cell: (p) => (p.effective_cap < p.cap ? el('span', { class: 'warn', title: 'lowered: someone else holds shells', text: p.effective_cap }) : p.effective_cap),
  },
  { label: 'Queued', cell: (p) => p.queued, cls: 'num' },
  { label: 'Blocked', cell: (p) => (p.blocked ? badge(p.blocked, 'failed') : '') },
];

function tile(label, value, hint) {
  return el('div', { class: 'tile' }, el('span', { class: 'tile-value', text: value }), el('span', { class: 'tile-label', text: label }), hint ? el('span', { class: 'muted small', text: hint }) : null);
}

async function loadPools() {
  const p = await api('/v1/pools');
  const sum = (k) => p.admins.reduce((n, a) => n + a[k], 0);
  const lowered = p.admins.filter((a) => a.effective_cap < a.cap).length + p.tenants.filter((t) => t.effective_cap < t.cap).length;
  $('pool-tiles').replaceChildren(
    tile('queued interactive', p.queued_interactive),
    tile('queued batch', p.queued_batch),
    tile('oldest queued', p.oldest_queued_seconds === null ? '–' : duration(p.oldest_queued_seconds)),
    tile('open sessions', sum('open')),
    tile('busy sessions', sum('busy')),
    tile('caps lowered', lowered, lowered ? 'someone else holds shells' : null),
  );
  fillTable($('admins-table'), poolColumns('Admin'), p.admins, 'No admins.');
  const tenants = p.tenants.filter((t) => matches($('tenant-filter'), t.name));
  fillTable($('tenants-table'), poolColumns('Tenant'), tenants, p.tenants.length ? 'No tenant matches the filter.' : 'No tenant in this token\'s scope.');
}

async function loadSessions() {
  const { sessions } = await api('/v1/sessions');
  const rows = sessions.filter((s) => matches($('session-filter'), s.admin, s.tenant, s.state));
  fillTable(
    $('sessions-table'),
    [
      { label: 'Session', cell: (s) => el('span', { class: 'mono', title: s.remote_id || '', text: s.id }) },
      { label: 'Admin', cell: (s) => s.admin },
      { label: 'Tenant', cell: (s) => s.tenant },
      { label: 'State', cell: (s) => badge(s.state) },
      { label: 'Age', cell: (s) => duration(s.age_seconds), cls: 'num' },
      { label: 'Commands', cell: (s) => s.commands, cls: 'num' },
    ],
    rows,
    sessions.length ? 'No session matches the filter.' : 'No open sessions.',
  );
}

function batchState(b) {
  if (!b.done) return badge('running');
  if (b.cancelled_at) return badge('cancelled');
  return b.failed ? badge('done', 'done-failed') : badge('done', 'succeeded');
}

async function loadBatchList() {
  const { batches, next } = await api('/v1/batches', { limit: state.batches.limit });
  fillTable(
    $('batches-table'),
    [
      {
        label: 'Batch',
        cell: (b) => el('button', { type: 'button', class: 'link mono', 'data-batch': b.id, title: b.id, onclick: () => openBatch(b.id) }, shortId(b.id)),
      },
      { label: 'Owner', cell: (b) => b.owner || '–' },
      { label: 'Accepted', cell: (b) => time(b.created_at) },
      { label: 'Progress', cell: progress, cls: 'wide' },
      { label: 'Finished', cell: (b) => `${b.succeeded + b.failed + b.cancelled} / ${b.total}`, cls: 'num' },
      { label: 'Failed', cell: (b) => (b.failed ? el('span', { class: 'warn', text: b.failed }) : 0), cls: 'num' },
      { label: 'State', cell: batchState },
    ],
    batches,
    'No batches yet.',
  );
  $('batches-more').hidden = !next || state.batches.limit >= 200;
}

async function loadBatchDetail() {
  const b = state.batches.open;
  const [counts, failures] = await Promise.all([api(`/v1/batches/${b}`), api('/v1/failures', { batch: b })]);
  // Closed (or signed out) while these were on their way: nothing of this batch is shown now.
  if (state.batches.open !== b) return;
  $('batch-title').replaceChildren(el('span', { class: 'mono', text: `Batch ${b}` }), ' ', batchState(counts));
  const finished = counts.succeeded + counts.failed + counts.cancelled;
  $('batch-progress').replaceChildren(
    progress(counts),
    el('p', { class: 'counts' }, STATUSES.map((s) => el('span', { class: 'count' }, badge(s), ` ${counts[s]}`)), el('span', { class: 'muted', text: ` · ${finished} of ${counts.total} finished` })),
  );
  const select = $('item-code');
  const chosen = select.value;
  const codes = failures.codes.map((g) => g.code);
  if (chosen && !codes.includes(chosen)) codes.push(chosen);
  select.replaceChildren(el('option', { value: '', text: 'any' }), ...codes.map((c) => el('option', { value: c, text: c })));
  select.value = chosen;
  await loadItems(b, false);
}

// The items of batch `b` (the open one when the load began: it may close meanwhile).
async function loadItems(b, more) {
  const s = state.batches;
  const params = { status: $('item-status').value, code: $('item-code').value };
  const page = more
    ? await api(`/v1/batches/${b}/items`, { ...params, after: s.itemsNext, limit: 100 })
    : await api(`/v1/batches/${b}/items`, { ...params, limit: Math.min(500, Math.max(100, s.items.length)) });
  if (state.batches.open !== b) return;
  s.items = more ? s.items.concat(page.items) : page.items;
  s.itemsNext = page.next;
  fillTable(
    $('items-table'),
    [
      // Counted from 1, as the lines of the submitted file.
      { label: 'Item', cell: (i) => el('span', { title: `position ${i.seq} in the batch (from 0)`, text: `#${i.seq + 1}` }), cls: 'num' },
      { label: 'Tenant', cell: (i) => i.tenant },
      { label: 'Cmdlet', cell: (i) => el('span', { class: 'mono', text: i.cmdlet }) },
      { label: 'Status', cell: (i) => badge(i.status) },
      { label: 'Code', cell: (i) => (i.error ? el('span', { class: 'mono code', text: i.error.code }) : '') },
      { label: 'Message', cell: (i) => (i.error ? el('span', { class: 'message', title: i.error.message, text: i.error.message }) : ''), cls: 'wide' },
      { label: 'Attempts', cell: (i) => i.attempts, cls: 'num' },
      { label: 'Admin', cell: (i) => i.admin || '–' },
      { label: 'Run', cell: (i) => duration(i.timing.run_seconds), cls: 'num' },
      { label: 'Details', cell: (i) => invocationButton(i.id) },
    ],
    s.items,
    'No item matches the filters.',
  );
  $('item-count').textContent = `${s.items.length}${s.itemsNext !== null ? '+' : ''} shown`;
  $('items-more').hidden = s.itemsNext === null;
}

function openBatch(id) {
  state.batches.open = id;
  state.batches.items = [];
  $('item-status').value = '';
  $('item-code').value = '';
  $('batch-list').hidden = true;
  $('batch-detail').hidden = false;
  refresh().then(() => $('batch-back').focus());
}

function closeBatch() {
  const id = state.batches.open;
  state.batches.open = null;
  $('batch-detail').hidden = true;
  $('batch-list').hidden = false;
  refresh().then(() => {
    const button = document.querySelector(`[data-batch="${id}"]`);
    if (button) button.focus();
  });
}

async function loadBatches() {
  return state.batches.open ? loadBatchDetail() : loadBatchList();
}

async function loadFailures() {
  const since = new Date(Date.now() - Number($('failure-window').value)).toISOString();
  const { codes } = await api('/v1/failures', { since, tenant: $('failure-tenant').value.trim() });
  const filter = $('failure-filter');
  const shown = codes.filter((g) => matches(filter, g.code, ...g.messages.map((m) => m.message)));
  const total = codes.reduce((n, g) => n + g.count, 0);
  $('failure-count').textContent = `${total} failures in ${codes.length} codes${shown.length < codes.length ? `, ${shown.length} shown` : ''}`;
  const groups = shown.map((g) =>
    el(
      'article',
      { class: 'failure', 'data-code': g.code },
      el('header', {},
        el('h3', { class: 'mono', text: g.code }),
        el('span', { class: 'failure-count', text: `${g.count} ×` }),
        el('span', { class: 'muted' }, 'last ', time(g.last_at)),
        el('span', { class: 'muted', text: `${g.tenant_count} tenant${g.tenant_count === 1 ? '' : 's'}: ${g.tenants.map((t) => `${t.tenant} (${t.count})`).join(', ')}${g.tenant_count > g.tenants.length ? ', …' : ''}` })),
      el('ul', { class: 'messages' },
        g.messages.map((m) =>
          el('li', {},
            el('span', { class: 'msg-count', text: `${m.count} ×` }),
            el('q', { class: 'message', text: m.message }),
            el('span', { class: 'muted' }, ' last ', time(m.last_at), ' · example ', invocationButton(m.example))))),
    ),
  );
  $('failure-groups').replaceChildren(...(groups.length ? groups : [el('p', { class: 'empty', text: codes.length ? 'No failure matches the filter.' : 'No failures in this window.' })]));
}

function auditFilters() {
  const form = $('audit-filters');
  const filters = {};
  for (const input of form.querySelectorAll('input')) {
    const value = input.value.trim();
    if (!value) continue;
    filters[input.name] = input.type === 'datetime-local' ? new Date(value).toISOString() : value;
  }
  return filters;
}

async function loadAudit(more) {
  const a = state.audit;
  if (a.paged && !more) return; // Older pages stay as they are until the filters change.
  const page = await api('/v1/audit', { ...a.filters, limit: 100, after: more ? a.next : '' });
  a.entries = more ? a.entries.concat(page.entries) : page.entries;
  a.next = page.next;
  a.paged = a.paged || more;
  fillTable(
    $('audit-table'),
    [
      { label: 'Time', cell: (e) => time(e.at) },
      { label: 'Token', cell: (e) => e.token || '–' },
      { label: 'Tenant', cell: (e) => e.tenant },
      { label: 'Cmdlet', cell: (e) => el('span', { class: 'mono', text: e.cmdlet }) },
      { label: 'Parameters', cell: (e) => el('span', { class: 'mono small', text: e.parameter_names.join(', ') }) },
      { label: 'Outcome', cell: (e) => el('span', {}, badge(e.status), e.code ? el('span', { class: 'mono code', text: ` ${e.code}` }) : '') },
      { label: 'Run', cell: (e) => (e.duration_ms === null ? '–' : duration(e.duration_ms / 1000)), cls: 'num' },
      { label: 'Admin', cell: (e) => e.admin || '–' },
      { label: 'Invocation', cell: (e) => invocationButton(e.invocation_id) },
    ],
    a.entries,
    'No audit entry matches the filters.',
  );
  $('audit-more').hidden = !a.next;
}

const LOADERS = { pools: loadPools, sessions: loadSessions, batches: loadBatches, failures: loadFailures, audit: () => loadAudit(false) };

// ---- Live updates, errors ----------------------------------------------------------------

function showError(message) {
  const banner = $('error');
  banner.textContent = message || '';
  banner.hidden = !message;
}

async function refresh() {
  if (!state.token) return;
  if (state.busy) {
    // One load at a time; a request made meanwhile (a filter changed) runs right after it.
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    await LOADERS[state.view]();
    showError('');
    $('live').textContent = `${state.paused ? 'paused' : 'live'} · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.status === 401) {
      signOut(`Signed out: ${e.message}`);
      return;
    }
    showError(e.message);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      refresh();
    }
  }
}

function tick() {
  if (!state.paused && !document.hidden) refresh();
}

function togglePause() {
  state.paused = !state.paused;
  $('pause').setAttribute('aria-pressed', String(state.paused));
  $('pause').firstChild.textContent = state.paused ? 'Resume ' : 'Pause ';
  $('live').textContent = state.paused ? 'paused' : 'live';
  if (!state.paused) refresh();
}

// ---- Navigation and keyboard -------------------------------------------------------------

function switchView(view, focusTab) {
  state.view = view;
  for (const v of VIEWS) {
    const tab = $(`tab-${v}`);
    const active = v === view;
    tab.setAttribute('aria-selected', String(active));
    tab.tabIndex = active ? 0 : -1;
    $(`view-${v}`).hidden = !active;
  }
  if (focusTab) $(`tab-${view}`).focus();
  refresh();
}

function focusFilter() {
  const input = document.querySelector(`#view-${state.view} .filter:not([hidden])`);
  if (input && input.offsetParent !== null) input.focus();
}

function onKey(event) {
  if (!state.token || event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.querySelector('dialog[open]')) return; // A dialog handles its own keys (Esc closes it).
  const typing = event.target.closest('input, select, textarea');
  if (typing) {
    if (event.key === 'Escape') event.target.blur();
    return;
  }
  const onTab = event.target.getAttribute('role') === 'tab';
  const index = VIEWS.indexOf(state.view);
  if (onTab && (event.key === 'ArrowRight' || event.key === 'ArrowLeft')) {
    const step = event.key === 'ArrowRight' ? 1 : VIEWS.length - 1;
    switchView(VIEWS[(index + step) % VIEWS.length], true);
  } else if (event.key >= '1' && event.key <= String(VIEWS.length)) {
    switchView(VIEWS[Number(event.key) - 1], true);
  } else if (event.key === 'r') {
    refresh();
  } else if (event.key === 'p') {
    togglePause();
  } else if (event.key === '/') {
    focusFilter();
  } else if (event.key === '?') {
    $('help').showModal();
  } else if (event.key === 'Escape' && state.view === 'batches' && state.batches.open) {
    closeBatch();
  } else {
    return;
  }
  event.preventDefault();
}

// ---- Sign in and out ---------------------------------------------------------------------

function clearData() {
  for (const id of ['pool-tiles', 'admins-table', 'tenants-table', 'sessions-table', 'batches-table', 'items-table', 'audit-table', 'failure-groups', 'batch-progress', 'batch-title']) {
    $(id).replaceChildren();
  }
  state.batches = { limit: 50, open: null, items: [], itemsNext: null, itemsLimit: 100 };
  state.audit = { filters: {}, entries: [], next: null, paged: false };
  $('batch-detail').hidden = true;
  $('batch-list').hidden = false;
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api('/v1/whoami');
  } catch (e) {
    state.token = null;
    throw e;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const me = state.me;
  $('whoami').replaceChildren(
    el('span', { class: 'mono', text: me.name }),
    ' ',
    badge(me.role, 'role'),
    el('span', { class: 'muted', title: `cmdlets: ${me.cmdlets}`, text: ` tenants: ${me.tenants}` }),
  );
  const tokenFilter = $('audit-filters').elements.token;
  tokenFilter.disabled = me.role !== 'admin';
  tokenFilter.title = me.role === 'admin' ? '' : 'a token that is not an admin sees its own entries only';
  $('login').hidden = true;
  $('app').hidden = false;
  switchView(state.view, true);
  state.timer = setInterval(tick, POLL_MS);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.timer);
  state.token = null;
  state.me = null;
  state.view = 'pools';
  clearData();
  showError('');
  $('whoami').replaceChildren();
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

function wire() {
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    $('token').value = '';
    if (!token) {
      $('login-error').textContent = 'Enter an API token.';
      return;
    }
    try {
      await signIn(token);
      $('login-error').textContent = '';
    } catch (e) {
      $('login-error').textContent = e.status === 401 ? 'That token is not valid (or was revoked).' : e.message;
      $('token').focus();
    }
  });
  $('signout').addEventListener('click', () => signOut(''));
  $('pause').addEventListener('click', togglePause);
  $('help-open').addEventListener('click', () => $('help').showModal());
  for (const button of document.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close());
  }
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener('click', () => switchView(tab.dataset.view, false));
  }
  for (const id of ['tenant-filter', 'session-filter', 'failure-filter']) {
    $(id).addEventListener('input', refresh);
  }
  for (const id of ['failure-window', 'failure-tenant']) {
    $(id).addEventListener('change', refresh);
  }
  for (const id of ['item-status', 'item-code']) {
    $(id).addEventListener('change', () => {
      state.batches.items = [];
      refresh();
    });
  }
  $('item-filters').addEventListener('submit', (event) => event.preventDefault());
  $('failure-filters').addEventListener('submit', (event) => event.preventDefault());
  $('batches-more').addEventListener('click', () => {
    state.batches.limit = Math.min(200, state.batches.limit + 50);
    refresh();
  });
  $('batch-back').addEventListener('click', closeBatch);
  $('items-more').addEventListener('click', () => loadItems(state.batches.open, true).catch((e) => showError(e.message)));
  $('audit-filters').addEventListener('submit', (event) => {
    event.preventDefault();
    state.audit = { filters: auditFilters(), entries: [], next: null, paged: false };
    refresh();
  });
  $('audit-filters').addEventListener('reset', () => {
    state.audit = { filters: {}, entries: [], next: null, paged: false };
    setTimeout(refresh);
  });
  $('audit-more').addEventListener('click', () => loadAudit(true).catch((e) => showError(e.message)));
  document.addEventListener('keydown', onKey);
  document.addEventListener('visibilitychange', tick);

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch(() => signOut('Your session ended; sign in again.'));
  } else {
    $('token').focus();
  }
}

wire();
