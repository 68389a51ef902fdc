// pgguard's live dashboard: fetches /dashboard/state every 2 s and redraws
// the sections whose data changed. Every text from the server goes in as
// text (textContent), never as HTML. Charts are small hand-drawn SVGs.
'use strict';
(() => {
  const POLL_MS = 2000;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const $ = (sel) => document.querySelector(sel);
  // api makes an absolute URL without the page's user:password@ (fetch
  // refuses URLs with credentials, and relative ones inherit them).
  const api = (path) => location.origin + path;

  let history = [];   // ring buffer points, oldest first
  let lastT = 0;      // time of the newest point (Unix ms)
  let windowS = 3600; // history window, from the server
  let auth = null;    // "Basic ..." once an admin signed in through the form
  let pending = null; // {name, on}: a switch change waiting for credentials
  const drawn = {};   // section -> JSON of the data it was last drawn from

  // h builds an element: h('td', {class: 'x', title: 't'}, 'text', child).
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (const k of kids.flat(Infinity)) {
      if (k !== null && k !== undefined && k !== false) el.append(k instanceof Node ? k : String(k));
    }
    return el;
  }
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    setAttrs(el, attrs);
    for (const k of kids.flat(Infinity)) if (k) el.append(k instanceof Node ? k : String(k));
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (k === 'width%') el.style.width = Math.max(0, Math.min(100, v)) + '%';
      else if (k === 'left%') el.style.left = Math.max(0, Math.min(100, v)) + '%';
      else el.setAttribute(k, v);
    }
  }

  // Formatting.
  const num = (n) => (n ?? 0).toLocaleString('en-US', {maximumFractionDigits: 0});
  function ms(v) {
    if (!v) return '0';
    if (v < 1) return v.toFixed(2);
    if (v < 100) return v.toFixed(1);
    return num(v);
  }
  function dec(v, d = 2) { return (v ?? 0).toLocaleString('en-US', {maximumFractionDigits: d}); }
  function dur(sec) {
    sec = Math.max(0, Math.round(sec || 0));
    if (sec < 60) return sec + 's';
    const m = Math.floor(sec / 60) % 60, hr = Math.floor(sec / 3600), d = Math.floor(hr / 24);
    if (d > 0) return d + 'd ' + (hr % 24) + 'h';
    if (hr > 0) return hr + 'h ' + String(m).padStart(2, '0') + 'm';
    return m + 'm ' + String(sec % 60).padStart(2, '0') + 's';
  }
  const clock = (t) => new Date(t).toLocaleTimeString('en-GB');
  const badge = (cls, text, title) => h('span', {class: 'badge ' + cls, title}, text);

  // redraw replaces a section's body when its data changed since the last draw.
  function redraw(id, data, build) {
    const key = JSON.stringify(data);
    if (drawn[id] === key) return;
    drawn[id] = key;
    $('#' + id + ' .body').replaceChildren(...[].concat(build(data)));
  }

  async function poll() {
    try {
      const headers = {'X-Requested-With': 'pgguard-dashboard'};
      if (auth) headers.Authorization = auth;
      const res = await fetch(api('/dashboard/state' + (lastT ? '?since=' + lastT : '')), {headers, cache: 'no-store'});
      if (!res.ok) {
        const why = (await res.text()).trim();
        throw new Error(res.status === 401 ? why + ' (reload the page to sign in)' : res.status + ': ' + why);
      }
      const st = await res.json();
      const timing = /dur=([\d.]+)/.exec(res.headers.get('Server-Timing') || '');
      render(st, timing ? parseFloat(timing[1]) : null);
      $('#error').hidden = true;
    } catch (e) {
      $('#error').textContent = 'Cannot update: ' + e.message;
      $('#error').hidden = false;
    }
    setTimeout(poll, POLL_MS);
  }

  function render(st, serverMS) {
    const now = Date.parse(st.time);
    windowS = st.history.window_seconds || windowS;
    for (const p of st.history.points) if (p.t > lastT) { history.push(p); lastT = p.t; }
    while (history.length && history[0].t < now - windowS * 1000) history.shift();

    $('#badges').replaceChildren(...badges(st));
    redraw('pools', st.pools, (pools) => h('div', {class: 'pools'}, pools.map(pool)));
    redraw('fleet', st.fleet, fleetPanel);
    $('#fleet').hidden = !st.fleet;
    redraw('switches', {sw: st.switches, redis: st.redis}, switches);
    redraw('budget', {b: st.budget, day: Math.floor(now / 3600e3)}, (d) => budget(d.b, now));
    $('#charts-title').textContent = windowS === 3600 ? 'Last hour' : 'Last ' + dur(windowS);
    redraw('charts', lastT, () => charts(now));
    redraw('queries', st.queries, queries);
    redraw('cache', st.cache, cacheRules);
    $('#cache').hidden = !st.cache;
    redraw('apps', st.applications, apps);
    redraw('pollers', st.applications, pollers);
    redraw('listeners', st.listeners, listeners);
    $('#listeners').hidden = !(st.listeners && st.listeners.length);
    redraw('leaks', {l: st.leaks, after: st.leak_warn_after_seconds}, (d) => leaks(d.l, d.after));
    $('#updated').textContent = 'updated ' + clock(now) + ' · up ' + dur(st.uptime_seconds);
    $('#footer').textContent = 'Server time for this update: ' + (serverMS === null ? '?' : serverMS.toFixed(2) + ' ms') +
      ' · ' + history.length + ' points of ' + dur(windowS) + ' at ' + st.history.interval_seconds + 's';
  }

  function badges(st) {
    const out = [];
    if (st.read_only) out.push(badge('bad', 'READ-ONLY', 'writes get 25006'));
    if (st.draining) out.push(badge('warn', 'draining'));
    if (st.paused) out.push(badge('warn', 'paused'));
    for (const p of st.pools) {
      if (p.failover.active === 'fallback') out.push(badge('warn', p.database + ' on fallback'));
      if (!p.failover.serving) out.push(badge('bad', p.database + ': upstream down'));
      if (p.failover.isolated) out.push(badge('bad', p.database + ': only this instance cannot reach the primary', p.failover.peers.peers_up + ' other instance(s) can; split_policy = ' + p.failover.split_policy));
      if (p.fallback_writes && p.fallback_writes.total) out.push(badge('warn', p.database + ': ' + num(p.fallback_writes.total) + ' write(s) on the fallback', 'not on the primary; pgguard does not reconcile them'));
    }
    const b = st.budget;
    if (b && b.exhausted) out.push(badge('bad', 'budget exhausted', 'on_exhausted = ' + b.on_exhausted));
    else if (b && b.monthly_cu_hours > 0 && b.used_ratio >= b.alert_at) out.push(badge('warn', 'budget at ' + dec(100 * b.used_ratio, 0) + '%'));
    if (st.leaks.length) out.push(badge('warn', st.leaks.length + ' idle session(s) holding a server'));
    if (!out.length) out.push(badge('ok', 'all clear'));
    return out;
  }

  function numBox(value, label, k) {
    return h('div', {class: 'num', 'data-k': k}, h('b', null, value), h('span', null, label));
  }

  function pool(p) {
    const fo = p.failover, cap = Math.max(p.cap, 1), pct = (n) => 100 * n / cap;
    const over = Math.max(0, p.sv_active + p.sv_idle + p.sv_opening - p.pool_size);
    const servers = h('div', {class: 'bar', title: 'server connections: ' + p.sv_active + ' active, ' + p.sv_idle + ' idle, ' + p.sv_opening + ' opening; cap ' + p.cap},
      h('i', {class: 'active', 'width%': pct(p.sv_active)}), h('i', {class: 'idle', 'width%': pct(p.sv_idle)}),
      h('i', {class: 'opening', 'width%': pct(p.sv_opening)}),
      p.max_overflow > 0 ? h('i', {class: 'mark', 'left%': pct(p.pool_size), title: 'pool.size = ' + p.pool_size}) : null);
    const recent = (fo.recent_switches || []).map((w) =>
      h('li', null, clock(Date.parse(w.at)) + ' ' + w.from + ' → ' + w.to + ': ' + w.reason));
    return h('div', {class: 'pool', 'data-db': p.database},
      h('div', {class: 'pool-head'}, h('b', null, p.database), h('span', {class: 'muted'}, p.pool_mode + ' mode'),
        badge(fo.active === 'primary' ? 'info' : 'warn', fo.active, p.upstream_host),
        fo.serving ? null : badge('bad', 'not serving'), h('span', {class: 'muted small'}, p.upstream_host)),
      h('div', {class: 'nums'},
        numBox(num(p.cl_active), 'clients active', 'cl_active'), numBox(num(p.cl_waiting), 'waiting', 'cl_waiting'),
        numBox(num(p.cl_idle), 'idle', 'cl_idle'),
        numBox(ms(p.wait_p95_ms) + ' ms', 'pool wait p95, last min (' + num(p.waits_last_minute) + ' waits)', 'wait_p95'),
        numBox(num(p.total_query_count), 'queries', 'queries'), numBox(num(p.total_xact_count), 'transactions', 'xacts')),
      h('div', {class: 'small'}, 'Servers: ' + p.sv_active + ' active · ' + p.sv_idle + ' idle · ' + p.sv_opening +
        ' opening · cap ' + p.cap + ' (pool.size ' + p.pool_size + ' + max_overflow ' + p.max_overflow + ')' + (over ? ' · ' + over + ' overflow' : '')),
      servers,
      h('div', {class: 'small muted'}, 'waits ' + num(p.waits) + ' · wait timeouts ' + num(p.wait_timeouts) + ' · dials ' + num(p.dials) +
        ' · dial errors ' + num(p.dial_errors) + ' · failover switches ' + fo.switches +
        (fo.primary.consecutive_failures ? ' · primary failures ' + fo.primary.consecutive_failures : '') +
        (fo.next_probe ? ' · next probe ' + clock(Date.parse(fo.next_probe)) : '')),
      fo.primary.last_error ? h('div', {class: 'small muted'}, 'last primary error: ' + fo.primary.last_error) : null,
      p.fallback_writes && p.fallback_writes.total ? h('div', {class: 'small'}, 'writes served by the fallback (not on the primary, not reconciled): ' +
        Object.entries(p.fallback_writes.tables || {}).map(([t, n]) => t + ' ' + num(n)).join(' · ')) : null,
      recent.length ? h('ul', {class: 'plain small'}, recent) : null);
  }

  function switches(d) {
    const rows = d.sw.map((w) => h('div', {class: 'sw', 'data-switch': w.name},
      h('div', null, h('b', null, w.name + ' '), badge(w.on ? 'bad' : 'ok', w.on ? 'ON' : 'off'), h('code', {class: 'muted'}, w.env)),
      w.settable ? h('button', {type: 'button', 'data-action': w.on ? 'off' : 'on', on: {click: () => flip(w.name, !w.on)}}, w.on ? 'Turn off' : 'Turn on') :
        h('span', {class: 'muted small'}, 'set at start'),
      h('div', {class: 'small muted'}, w.help)));
    if (d.redis) rows.push(h('div', {class: 'sw'}, h('div', null, h('b', null, 'Redis mode '), badge(d.redis === 'per_instance' ? 'warn' : 'info', d.redis)),
      h('span'), h('div', {class: 'small muted'}, {off: 'no limiter.redis_url: limits and budget per instance', suspended: 'SUSPEND_REDIS: per instance',
        fleet: 'limits and budget shared fleet-wide', per_instance: 'Redis unreachable: per instance until it returns'}[d.redis] || '')));
    return rows;
  }

  // fleetPanel shows every live instance on the fleet's Redis, the fleet's
  // server connections against each fleet cap (the runbook alerts at 70%),
  // and the switches flipped fleet-wide.
  function fleetPanel(f) {
    if (!f) return [];
    const out = [];
    for (const d of f.totals) {
      const cap = d.fleet_max_connections, pct = cap ? 100 * d.server_conns / cap : 0;
      out.push(h('div', {class: 'fleet-db', 'data-fleet-db': d.database},
        h('div', null, h('b', null, d.database + ' '), h('span', {'data-k': 'fleet_conns'}, num(d.server_conns)),
          cap ? ' of fleet_max_connections ' + num(cap) + ' (' + dec(pct, 0) + '%) ' : ' server connections (no fleet cap) ',
          cap && pct >= 70 ? badge(pct >= 100 ? 'bad' : 'warn', dec(pct, 0) + '% of the cap') : null,
          h('span', {class: 'muted small'}, ' · ' + d.instances + ' instances · ' + num(d.clients) + ' clients · ' + num(d.waiting) + ' waiting')),
        cap ? h('div', {class: 'bar', title: d.server_conns + ' of ' + cap},
          h('i', {class: 'active', 'width%': pct}), h('i', {class: 'mark', 'left%': 70, title: '70%: the alert'})) : null));
    }
    const mode = {leases: 'leases in Redis', static: 'Redis unreachable: static shares', off: 'no Redis'}[f.mode] || f.mode;
    out.push(h('table', null, h('thead', null, h('tr', null, ['Instance', 'Region', 'Version', 'Mode', 'Database', 'Servers', 'Leases', 'Clients', 'Waiting', 'QPS', 'p95 ms', 'Switches', 'Seen'].map((t) => h('th', null, t)))),
      h('tbody', null, f.instances.flatMap((i) => (i.pools.length ? i.pools : [null]).map((p) => h('tr', {'data-instance': i.id},
        h('td', null, i.id, i.id === f.self ? [' ', badge('info', 'this')] : null), h('td', null, i.fly_region || ''), h('td', {class: 'small'}, i.version),
        h('td', null, i.fleet === 'leases' ? i.fleet : badge('warn', i.fleet)), h('td', null, p ? p.database : ''),
        h('td', {'data-k': 'servers'}, p ? num(p.server_conns) : ''),
        h('td', null, p && p.leases.fleet_max_connections ? p.leases.held + ' / ' + p.leases.limit + (p.leases.static ? ' static' : '') : '-'),
        h('td', null, num(i.clients)), h('td', null, num(i.waiting)), h('td', null, dec(i.qps, 1)), h('td', null, ms(i.p95_ms)),
        h('td', null, i.read_only ? badge('bad', 'read-only') : null, i.disable_workers ? badge('warn', 'workers off') : null),
        h('td', {class: 'small'}, clock(Date.parse(i.seen)))))))));
    const sw = f.switches || {};
    out.push(h('div', {class: 'fleet-switches small'}, 'Fleet-wide (' + mode + '): ',
      ['read_only', 'disable_workers'].map((name) => {
        const on = sw[name] === 'on';
        return h('span', {'data-fleet-switch': name}, name + ' ', badge(on ? 'bad' : 'ok', sw[name] ? (on ? 'ON' : 'off') : 'never set'), ' ',
          h('button', {type: 'button', 'data-action': on ? 'off' : 'on', on: {click: () => flip(name, !on, true)}}, (on ? 'Turn off' : 'Turn on') + ' fleet-wide'), ' ');
      })));
    return out;
  }

  // flip asks the server to change a switch (on every instance when fleet);
  // without admin credentials the server answers 401 and the form asks for them.
  async function flip(name, on, fleet) {
    const msg = $('#switch-msg');
    const headers = {'X-Requested-With': 'pgguard-dashboard', 'Content-Type': 'text/plain'};
    if (auth) headers.Authorization = auth;
    let res;
    try {
      res = await fetch(api('/switches/' + encodeURIComponent(name) + (fleet ? '?fleet=1' : '')), {method: 'POST', headers, body: on ? 'on' : 'off'});
    } catch (e) {
      msg.textContent = name + ': ' + e.message;
      return;
    }
    const text = (await res.text()).trim();
    if (res.status === 401) {
      const tried = auth !== null;
      auth = null;
      pending = {name, on, fleet};
      $('#login-why').textContent = (tried ? 'Refused: wrong user or password, or not in admin.users. ' : 'Admin credentials are required. ') +
        'Sign in to turn ' + name + (on ? ' on' : ' off') + '.';
      $('#login').hidden = false;
      $('#login-user').focus();
      msg.textContent = 'refused: ' + text;
      return;
    }
    $('#login').hidden = true;
    msg.textContent = res.ok ? name + ' is now ' + (on ? 'ON' : 'off') + (fleet ? ' fleet-wide' : '') + ' (' + clock(Date.now()) + ')' : 'refused (' + res.status + '): ' + text;
  }

  function base64(str) {
    let bin = '';
    for (const b of new TextEncoder().encode(str)) bin += String.fromCharCode(b);
    return btoa(bin);
  }

  $('#login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    auth = 'Basic ' + base64($('#login-user').value + ':' + $('#login-pass').value);
    $('#login-pass').value = '';
    if (pending) flip(pending.name, pending.on, pending.fleet);
  });
  $('#login-cancel').addEventListener('click', () => { $('#login').hidden = true; pending = null; });

  // Charts over the ring buffer: one line per series, x over the window ending now.
  const CHARTS = [
    {title: 'Queries per second', series: [['qps', 'queries/s']], fmt: (v) => dec(v, 1)},
    {title: 'Query p95 (ms)', series: [['p95_ms', 'p95']], fmt: ms},
    {title: 'Pool wait p95 (ms)', series: [['wait_p95_ms', 'wait p95']], fmt: ms},
    {title: 'Clients', series: [['cl_active', 'active'], ['cl_waiting', 'waiting'], ['cl_idle', 'idle']], fmt: num},
    {title: 'Refusals and errors per second', series: [['refusals_per_s', 'refusals'], ['errors_per_s', 'query errors']], fmt: (v) => dec(v, 2)},
  ];
  const W = 300, H = 80;

  function charts(now) {
    const t0 = now - windowS * 1000;
    const x = (t) => W * (t - t0) / (windowS * 1000);
    return h('div', {class: 'charts'}, CHARTS.map((c) => {
      let top = 0;
      for (const p of history) for (const [k] of c.series) top = Math.max(top, p[k] || 0);
      top = niceTop(top);
      const y = (v) => H - H * (v || 0) / top;
      const last = history[history.length - 1];
      const lines = c.series.map(([k], i) => s('polyline', {class: 'line s' + i, points: history.map((p) => x(p.t).toFixed(1) + ',' + y(p[k]).toFixed(1)).join(' ')}));
      const cursor = s('line', {class: 'cursor', y1: 0, y2: H, visibility: 'hidden'});
      const readout = h('span', {class: 'muted'});
      const svg = s('svg', {viewBox: '0 0 ' + W + ' ' + (H + 12), preserveAspectRatio: 'none', 'data-chart': c.series[0][0]},
        s('line', {class: 'axis', x1: 0, y1: H, x2: W, y2: H}), s('line', {class: 'axis', x1: 0, y1: 0, x2: W, y2: 0}),
        s('text', {x: 2, y: 9}, c.fmt(top)), s('text', {x: 2, y: H + 11}, '-' + dur(windowS)), s('text', {x: W - 2, y: H + 11, 'text-anchor': 'end'}, 'now'),
        lines, cursor);
      svg.addEventListener('mousemove', (ev) => {
        if (!history.length) return;
        const r = svg.getBoundingClientRect();
        const t = t0 + (ev.clientX - r.left) / r.width * windowS * 1000;
        let best = history[0];
        for (const p of history) if (Math.abs(p.t - t) < Math.abs(best.t - t)) best = p;
        cursor.setAttribute('x1', x(best.t));
        cursor.setAttribute('x2', x(best.t));
        cursor.setAttribute('visibility', 'visible');
        readout.textContent = clock(best.t) + ' ' + c.series.map(([k, n]) => n + ' ' + c.fmt(best[k])).join(', ');
      });
      svg.addEventListener('mouseleave', () => { cursor.setAttribute('visibility', 'hidden'); readout.textContent = ''; });
      const legend = c.series.length > 1 ? h('div', {class: 'legend small muted'}, c.series.map(([, n], i) => [h('i', {class: 's' + i}), n])) : null;
      return h('div', null,
        h('div', {class: 'chart-head'}, h('b', null, c.title), last ? h('span', null, c.series.map(([k]) => c.fmt(last[k])).join(' / ')) : h('span', {class: 'muted'}, 'collecting…')),
        svg, legend, readout);
    }));
  }

  // niceTop rounds a maximum up to 1, 2 or 5 times a power of ten.
  function niceTop(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function spark(values) {
    const top = Math.max(1, ...values), n = Math.max(values.length - 1, 1);
    return s('svg', {class: 'spark', viewBox: '0 0 90 18', preserveAspectRatio: 'none'},
      s('polyline', {class: 'line', points: values.map((v, i) => (90 * i / n).toFixed(1) + ',' + (17 - 16 * v / top).toFixed(1)).join(' ')}));
  }

  function queries(q) {
    if (!q) return h('p', {class: 'muted'}, 'The query log is off.');
    const rows = q.shapes.map((sh) => h('tr', {class: sh.slow ? 'slow' : null, 'data-fp': sh.fingerprint},
      h('td', {class: 'q', title: sh.query}, sh.query),
      h('td', {'data-k': 'calls'}, num(sh.calls)), h('td', null, sh.errors ? badge('bad', num(sh.errors)) : '0'),
      h('td', null, ms(sh.p50_ms)), h('td', null, ms(sh.p95_ms), sh.slow ? ' ' : '', sh.slow ? badge('bad', 'slow', 'p95 above querylog.slow = ' + ms(q.slow_ms) + ' ms') : null),
      h('td', null, ms(sh.p99_ms)), h('td', null, ms(sh.mean_ms)), h('td', null, ms(sh.total_ms)),
      h('td', {title: 'calls per minute, last 30 minutes' + (sh.trend.length ? ': ' + sh.trend.join(' ') : '')}, sh.trend.length ? spark(sh.trend) : '')));
    return [
      h('table', null, h('thead', null, h('tr', null, ['Query', 'Calls', 'Errors', 'p50 ms', 'p95 ms', 'p99 ms', 'Mean ms', 'Total ms', 'Calls/min, 30 min'].map((t) => h('th', null, t)))),
        h('tbody', null, rows.length ? rows : h('tr', null, h('td', {colspan: 9, class: 'muted'}, 'No queries yet.')))),
      h('p', {class: 'small muted'}, num(q.tracked) + ' shapes kept, busiest 20 by total time; slow = p95 above querylog.slow (' +
        (q.slow_ms ? ms(q.slow_ms) + ' ms' : 'off') + ')' + (q.dropped ? '; ' + num(q.dropped) + ' log records dropped' : '')),
    ];
  }

  function apps(a) {
    if (!a) return h('p', {class: 'muted'}, 'No limiter.');
    const warn = a.queries_per_hour_warn;
    const rows = a.apps.map((x) => h('tr', {'data-app': x.application},
      h('td', null, x.application || '(none)'), h('td', {'data-k': 'qph'}, num(x.queries_last_hour)),
      h('td', null, warn ? h('span', {class: 'meter' + (x.above_warn ? ' over' : ''), title: num(x.queries_last_hour) + ' of ' + num(warn)}, h('i', {'width%': 100 * x.queries_last_hour / warn})) : '',
        x.above_warn ? [' ', badge('bad', 'above ' + num(warn) + '/h')] : null)));
    const out = [h('table', null, h('thead', null, h('tr', null, h('th', null, 'Application'), h('th', null, 'Queries, last hour'), h('th', null, warn ? 'vs queries_per_hour_warn ' + num(warn) : 'warning off'))),
      h('tbody', null, rows.length ? rows : h('tr', null, h('td', {colspan: 3, class: 'muted'}, 'No queries in the last hour.'))))];
    if (a.rules.length) {
      out.push(h('h3', null, 'Limits'), h('table', null,
        h('thead', null, h('tr', null, ['Rule', 'Match', 'Connections', 'Tokens', 'Admitted', 'Delayed', 'Rejected'].map((t) => h('th', null, t)))),
        h('tbody', null, a.rules.map((r) => h('tr', null, h('td', null, r.name), h('td', {class: 'small'}, r.match),
          h('td', null, r.max_connections ? r.connections + '/' + r.max_connections + (r.waiting ? ' (' + r.waiting + ' waiting)' : '') : '-'),
          h('td', null, r.queries_per_second || r.queries_per_minute || r.queries_per_hour ? dec(r.tokens, 1) + '/' + r.burst : '-'),
          h('td', null, num(r.admitted)), h('td', null, num(r.delayed)), h('td', null, r.rejected ? badge('bad', num(r.rejected)) : '0'))))));
    }
    return out;
  }

  // cacheRules shows each [[cache]] rule's hits and misses (the section is
  // hidden without rules).
  function cacheRules(c) {
    if (!c) return [];
    const where = {off: 'per instance (no Redis URL)', suspended: 'per instance (SUSPEND_REDIS)', fleet: 'fleet-wide on Redis',
      per_instance: 'per instance: Redis unreachable, entries live at most ' + c.degraded_ttl}[c.redis] || c.redis;
    const rows = c.rules.map((r) => {
      const asked = r.hits + r.misses;
      return h('tr', {'data-rule': r.name},
        h('td', null, r.name), h('td', {class: 'q', title: r.query || r.fingerprint}, r.query || r.fingerprint), h('td', null, r.ttl),
        h('td', {'data-k': 'hits'}, num(r.hits)), h('td', null, num(r.misses)),
        h('td', null, asked ? dec(100 * r.hits / asked, 1) + '%' : '-'),
        h('td', null, num(r.invalidated)), h('td', null, num(r.stored)),
        h('td', null, r.oversize ? badge('warn', num(r.oversize), 'replies over max_entry_bytes, served uncached') : '0'),
        h('td', {class: 'small wrap'}, r.last_refusal || ''));
    });
    return [h('table', null, h('thead', null, h('tr', null, ['Rule', 'Query', 'TTL', 'Hits', 'Misses', 'Hit ratio', 'Invalidated', 'Stored', 'Too big', 'Last refusal'].map((t) => h('th', null, t)))),
      h('tbody', null, rows)),
    h('p', {class: 'small muted'}, 'Entries ' + where + '; in process: ' + num(c.local_entries) + ' entries, ' + num(c.local_bytes) + ' of ' + num(c.local_max_bytes) + ' bytes' +
      (c.pending_invalidations ? '; ' + num(c.pending_invalidations) + ' invalidations wait for Redis' : '') + '.')];
  }

  // listeners shows the channels clients LISTEN to through pgguard's
  // listening connection (SHOW LISTENERS); hidden while there are none.
  function listeners(list) {
    if (!list || !list.length) return [];
    const rows = list.map((l) => h('tr', {'data-channel': l.channel},
      h('td', null, l.database), h('td', null, l.channel || '-'), h('td', null, num(l.subscribers)),
      h('td', null, num(l.received)), h('td', null, num(l.delivered)),
      h('td', null, l.dropped ? badge('bad', num(l.dropped), 'dropped with clients cut off past notify.client_buffer') : '0'),
      h('td', null, l.state === 'down' ? badge('warn', 'down ' + dur(l.down_seconds), 're-established before the next query') : l.state),
      h('td', null, num(l.gaps))));
    return [h('table', null, h('thead', null, h('tr', null, ['Database', 'Channel', 'Subscribers', 'Received', 'Delivered', 'Dropped', 'Listener', 'Gaps'].map((t) => h('th', null, t)))),
      h('tbody', null, rows))];
  }

  function pollers(a) {
    if (!a) return h('p', {class: 'muted'}, 'No limiter.');
    const gap = a.suspend_after_seconds;
    const rows = a.pollers.map((p) => h('tr', {'data-app': p.application},
      h('td', null, p.application || '(none)', p.keeps_compute_awake ? [' ', badge('bad', 'keeps awake')] : null),
      h('td', null, num(p.queries)), h('td', null, dur(p.median_gap_seconds)), h('td', null, dur(p.max_gap_seconds)),
      h('td', null, dec(100 * p.awake_fraction, 0) + '%'),
      h('td', {class: 'small wrap', title: 'the compute suspends only after a gap over budget.suspend_after'}, p.keeps_compute_awake ? 'a gap over ' + dur(gap) : 'yes')));
    return [h('table', null, h('thead', null, h('tr', null, ['Application', 'Queries', 'Median gap', 'Max gap', 'Awake', 'Lets it sleep?'].map((t) => h('th', null, t)))),
      h('tbody', null, rows.length ? rows : h('tr', null, h('td', {colspan: 6, class: 'muted'}, 'No queries reached the primary yet.')))),
    h('p', {class: 'small muted'}, 'Over the last day per application: Neon suspends the compute only after a gap of budget.suspend_after (' + dur(gap) + ') without queries.')];
  }

  function budget(b, now) {
    if (!b) return h('p', {class: 'muted'}, 'No limiter.');
    const [yy, mm] = b.month.split('-').map(Number);
    const start = Date.UTC(yy, mm - 1, 1), end = Date.UTC(yy, mm, 1);
    const kv = (k, v, key) => [h('dt', null, k), h('dd', {'data-k': key}, v)];
    const limit = b.monthly_cu_hours;
    const out = [h('dl', {class: 'kv'},
      kv('Month', b.month + (b.fleet ? ' (fleet)' : ' (this instance)')), kv('Awake', dur(b.awake_seconds), 'awake'),
      kv('CU-hours', (b.cu_hours > 0 && b.cu_hours < 0.01 ? b.cu_hours.toFixed(5) : dec(b.cu_hours, 3)) + (limit ? ' of ' + dec(limit) + ' (' + dec(100 * b.used_ratio, 1) + '%)' : ''), 'cu_hours'),
      kv('Projected', b.projected_cu_hours ? dec(b.projected_cu_hours, 1) + ' CU-hours' : 'after the first hour', 'projected'),
      kv('Alert at', dec(100 * b.alert_at, 0) + '% · on_exhausted = ' + b.on_exhausted),
      kv('Compute', b.compute_units + ' CU, suspends after ' + b.suspend_after))];
    if (b.exhausted) out.push(h('p', null, badge('bad', 'EXHAUSTED'), ' on_exhausted = ' + b.on_exhausted + ' applies'));
    const top = niceTop(Math.max(limit || 0, b.projected_cu_hours, b.cu_hours) * 1.1);
    const x = (t) => W * (t - start) / (end - start), y = (v) => H - H * v / top;
    const nx = x(Math.min(Math.max(now, start), end));
    const svg = s('svg', {viewBox: '0 0 ' + W + ' ' + (H + 12), preserveAspectRatio: 'none', 'data-chart': 'budget'},
      s('line', {class: 'axis', x1: 0, y1: H, x2: W, y2: H}),
      limit ? s('line', {class: 'line budget', x1: 0, x2: W, y1: y(limit), y2: y(limit)}) : null,
      limit ? s('line', {class: 'line alert', x1: 0, x2: W, y1: y(limit * b.alert_at), y2: y(limit * b.alert_at)}) : null,
      s('polyline', {class: 'line s0', points: '0,' + H + ' ' + nx + ',' + y(b.cu_hours)}),
      b.projected_cu_hours ? s('line', {class: 'line proj', x1: nx, y1: y(b.cu_hours), x2: W, y2: y(b.projected_cu_hours)}) : null,
      s('circle', {class: 'dot', cx: nx, cy: y(b.cu_hours), r: 2.5}),
      s('text', {x: 2, y: 9}, dec(top, 1) + ' CU-h'), s('text', {x: 2, y: H + 11}, b.month + '-01'), s('text', {x: W - 2, y: H + 11, 'text-anchor': 'end'}, 'month end'));
    out.push(h('h3', null, 'This month, at its pace so far'), svg,
      h('div', {class: 'legend small muted'}, h('i', {class: 's0'}), 'used', h('i', {class: 's0'}), 'projected (dashed)',
        limit ? [h('i', {class: 's1'}), 'alert_at', h('i', {class: 'sr'}), 'monthly_cu_hours'] : ' · no monthly_cu_hours: guard off'));
    if (b.endpoints.length) out.push(h('ul', {class: 'plain small'}, b.endpoints.map((e) =>
      h('li', {'data-endpoint': e.endpoint}, e.endpoint + ': awake ' + dur(e.awake_seconds) + ' this month' + (e.awake_now ? ' · awake now' : ' · suspended') +
        (e.last_wake ? ' · last woken ' + new Date(e.last_wake).toLocaleTimeString() + ' by ' + (e.last_wake_by || '(new connection)') : '')))));
    return out;
  }

  function leaks(list, after) {
    if (!list.length) return h('p', {class: 'muted'}, 'None: no session holds a server connection idle past pool.leak_warn_after (' + (after ? dur(after) : 'off') + ').');
    return h('table', null, h('thead', null, h('tr', null, ['Application', 'Address', 'User', 'Database', 'State', 'Idle for', 'Client', 'Server', 'Pinned'].map((t) => h('th', null, t)))),
      h('tbody', null, list.map((c) => h('tr', null, h('td', null, c.application_name || '(none)'), h('td', null, c.addr), h('td', null, c.user),
        h('td', null, c.database), h('td', null, c.state), h('td', null, dur(c.idle_seconds)), h('td', null, c.id), h('td', null, c.server || ''), h('td', null, c.pinned || '')))));
  }

  // The advisor's findings (GET /advice): fetched on load, every
  // ADVICE_MS and on Refresh; each rule's TOML has a Copy button. The
  // section stays hidden when pgguard runs without the advisor.
  const ADVICE_MS = 15000;
  async function loadAdvice() {
    try {
      const headers = {'X-Requested-With': 'pgguard-dashboard'};
      if (auth) headers.Authorization = auth;
      const res = await fetch(api('/advice'), {headers, cache: 'no-store'});
      if (res.status === 404) return;
      if (!res.ok) throw new Error(res.status + ': ' + (await res.text()).trim());
      const a = await res.json();
      $('#advice').hidden = false;
      redraw('advice', a, adviceBody);
    } catch (e) {
      $('#advice').hidden = false;
      $('#advice .body').replaceChildren(h('p', {class: 'muted'}, 'Cannot load the advice: ' + e.message));
      drawn.advice = null;
    }
  }
  $('#advice-refresh').addEventListener('click', loadAdvice);

  async function copy(text, btn) {
    try {
      await navigator.clipboard.writeText(text);
      btn.textContent = 'Copied';
    } catch (e) {
      btn.textContent = 'Select and copy';
      const pre = btn.nextElementSibling;
      if (pre) getSelection().selectAllChildren(pre);
    }
    setTimeout(() => { btn.textContent = 'Copy'; }, 2000);
  }
  function toml(text, kind) {
    if (!text) return null;
    return h('div', {class: 'toml'},
      h('button', {type: 'button', class: 'plain small', 'data-copy': kind, on: {click: (ev) => copy(text, ev.currentTarget)}}, 'Copy'),
      h('pre', null, text));
  }
  const pct = (v) => dec(100 * (v || 0), 0) + '%';

  function adviceBody(a) {
    const w = a.window, f = a.forecast, out = [];
    if (!w.queries) return h('p', {class: 'muted'}, 'No queries observed yet.');
    out.push(h('p', {class: 'small muted'}, num(w.queries) + ' queries over ' + dur(w.seconds) + ': ' + num(w.primary_queries) + ' on the primary, Active Time ' +
      dur(w.awake_seconds) + ' (suspend_after ' + w.suspend_after + ')' + (w.truncated ? '; the oldest queries fell out of the ring' : '') + '.'));
    out.push(h('p', {'data-k': 'forecast'}, 'With every rule below: primary queries ' + num(f.primary_queries) + ' → ' + num(f.predicted_primary_queries) +
      ', Active Time ' + dur(f.awake_seconds) + ' → ' + dur(f.predicted_awake_seconds) + ' (' + dec(f.cu_hours_per_month, 2) + ' → ' + dec(f.predicted_cu_hours_per_month, 2) + ' CU-hours a month).'));
    if (a.toml) out.push(toml(a.toml, 'all'));
    const cands = a.cache_candidates || [];
    out.push(h('h3', null, 'Cache candidates'));
    out.push(cands.length ? h('table', null, h('thead', null, h('tr', null, ['#', 'Query', 'Calls', 'Share', 'Keys', 'Writes', 'TTL', 'Hit ratio', 'Saves', 'Wake-ups'].map((t) => h('th', null, t)))),
      h('tbody', null, cands.map((c, i) => [
        h('tr', {'data-fp': c.fingerprint}, h('td', null, i + 1), h('td', {class: 'q', title: c.query}, c.query), h('td', null, num(c.calls)), h('td', null, pct(c.share_of_primary_time)),
          h('td', null, num(c.keys)), h('td', null, num(c.invalidations)), h('td', null, c.ttl), h('td', {'data-k': 'hit'}, pct(c.hit_ratio)),
          h('td', null, num(c.hits) + ' queries, ' + ms(c.saved_primary_ms) + ' ms'), h('td', null, num(c.wakeups_saved))),
        h('tr', {class: 'sub'}, h('td', {colspan: 10}, toml(c.toml, 'cache'))),
      ]))) : h('p', {class: 'muted'}, 'None: no cacheable read shape would have been answered often enough.'));
    const loops = a.n_plus_one || [];
    out.push(h('h3', null, 'N+1 loops'));
    out.push(loops.length ? h('table', null, h('thead', null, h('tr', null, ['Application', 'Query', 'Parent query', 'Loops', 'Per loop', 'Extra per loop'].map((t) => h('th', null, t)))),
      h('tbody', null, loops.map((l) => h('tr', {'data-loop': l.fingerprint, title: l.fix}, h('td', null, l.application), h('td', {class: 'q', title: l.query}, l.query),
        h('td', {class: 'q', title: l.parent ? l.parent.query : ''}, l.parent ? l.parent.query + ' (' + dec(l.parent.mean_rows, 1) + ' rows)' : '-'),
        h('td', null, num(l.loops)), h('td', null, dec(l.mean_count, 1) + (l.in_transaction ? ' in a transaction' : '')), h('td', null, ms(l.extra_ms_per_loop) + ' ms')))))
      : h('p', {class: 'muted'}, 'None seen.'));
    const polls = a.pollers || [];
    out.push(h('h3', null, 'Pollers'));
    out.push(polls.length ? polls.map((p) => h('div', {class: 'finding', 'data-poller': p.application}, h('p', {class: 'small wrap'}, p.note), toml(p.toml, 'limits')))
      : h('p', {class: 'muted'}, 'None keeps the compute awake on a schedule.'));
    const slow = a.slow_shapes || [];
    out.push(h('h3', null, 'Slow shapes'));
    out.push(slow.length ? h('table', null, h('thead', null, h('tr', null, ['Query', 'Applications', 'Calls', 'p95 ms', 'Max ms', 'Share'].map((t) => h('th', null, t)))),
      h('tbody', null, slow.map((x) => h('tr', {'data-slow': x.fingerprint}, h('td', {class: 'q', title: x.query}, x.query), h('td', null, x.applications.join(', ')),
        h('td', null, num(x.calls)), h('td', null, ms(x.p95_ms)), h('td', null, ms(x.max_ms)), h('td', null, pct(x.share_of_primary_time))))))
      : h('p', {class: 'muted'}, 'None above the threshold.'));
    out.push(h('h3', null, 'Pool'));
    out.push(h('ul', {class: 'plain small'}, (a.pool || []).map((p) => h('li', null, h('b', null, p.database + ': '), p.advice))));
    return out.flat(Infinity).filter(Boolean);
  }

  poll();
  loadAdvice();
  setInterval(loadAdvice, ADVICE_MS);
})();
