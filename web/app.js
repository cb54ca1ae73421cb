// Sluice's page: the sources with their rates, live tails of one source or several (with
// backfill), filters, pause and resume by seq, history from storage, and a job's steps and
// server events. Plain JS, served by the binary; log text only ever goes in as textContent.
"use strict";
(() => {
  const BACKFILL = 500; // lines back when a tail opens
  const KEEP = 20000; // lines kept in memory for re-filtering
  const DOM_CAP = 5000; // rows on the page at most
  const HISTORY = 1000; // lines per "Load earlier"
  const ROWS_PER_FRAME = 500; // rows added per animation frame at most
  const POLL_MS = 2000; // the source list's refresh
  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem("sluice-token") || "",
    selected: [],
    tails: new Map(), // source id -> { ws, lastSeq, firstSeq, retry, timer }
    lines: [],
    pending: [],
    frame: 0,
    paused: false,
    received: 0,
    steps: new Map(),
    rates: new Map(),
    maxStall: 0,
    loadingEarlier: false,
  };

  // ---- the server -------------------------------------------------------------------------

  function authHeaders() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  function errorText(body, status) {
    try {
      return JSON.parse(body).error || String(status);
    } catch (_) {
      return body || String(status);
    }
  }

  async function api(path) {
    const res = await fetch(path, { headers: authHeaders() });
    const body = await res.text();
    if (res.status === 401) {
      askToken(errorText(body, 401));
      throw new Error("unauthenticated: " + errorText(body, 401));
    }
    if (!res.ok) throw new Error(errorText(body, res.status));
    return JSON.parse(body);
  }

  function wsUrl(id, query) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/api/v1/sources/${encodeURIComponent(id)}/stream?${query}`;
  }

  function openSocket(url) {
    // Browsers cannot set headers on a WebSocket: the token goes as a subprotocol.
    return state.token ? new WebSocket(url, ["bearer." + state.token]) : new WebSocket(url);
  }

  // ---- sources ----------------------------------------------------------------------------

  async function pollSources() {
    try {
      const list = await api("/api/v1/sources?limit=1000");
      $("sources-note").hidden = true;
      renderSources(list);
    } catch (e) {
      const note = $("sources-note");
      note.hidden = false;
      note.textContent = `Cannot list sources (${e.message}). Open one by id above.`;
    }
  }

  function renderSources(list) {
    const now = performance.now();
    const want = $("source-filter").value.trim().toLowerCase();
    const body = document.createElement("tbody");
    for (const s of list) {
      const id = s.source_id;
      if (want && !id.toLowerCase().includes(want)) continue;
      const published = s.published ?? null;
      const prev = state.rates.get(id);
      let rate = "";
      if (published !== null) {
        if (prev && now > prev.at) {
          rate = ((published - prev.published) / ((now - prev.at) / 1000)).toFixed(1);
        }
        state.rates.set(id, { published, at: now });
      }
      const tr = document.createElement("tr");
      tr.className = "source" + (state.selected.includes(id) ? " selected" : "");
      tr.dataset.source = id;
      tr.title = "Click: tail it. Ctrl-click: add it to the tails.";
      for (const text of [id, rate, published === null ? "stored" : String(published)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.addEventListener("click", (ev) => {
        if (ev.ctrlKey || ev.metaKey) {
          const next = state.selected.includes(id)
            ? state.selected.filter((x) => x !== id)
            : state.selected.concat([id]);
          select(next);
        } else {
          select([id]);
        }
      });
      body.appendChild(tr);
    }
    $("sources").replaceChild(body, $("sources").tBodies[0]);
  }

  // ---- tails ------------------------------------------------------------------------------

  function select(ids) {
    for (const t of state.tails.values()) closeTail(t);
    state.tails = new Map(ids.map((id) => [id, { ws: null, lastSeq: null, firstSeq: null, retry: 0, timer: 0 }]));
    state.selected = ids;
    state.lines = [];
    state.pending = [];
    state.received = 0;
    state.steps = new Map();
    $("log").replaceChildren();
    $("server-lines").replaceChildren();
    $("server-events").hidden = true;
    renderSteps();
    const hash = ids.length ? "#/sources/" + ids.map(encodeURIComponent).join(",") : "#";
    if (location.hash !== hash) history.replaceState(null, "", hash);
    for (const tr of $("sources").tBodies[0].rows) {
      tr.classList.toggle("selected", ids.includes(tr.dataset.source));
    }
    $("tailing").textContent = ids.length ? "Tailing " + ids.join(", ") : "Pick a source on the left.";
    if (!state.paused) for (const id of ids) openTail(id);
    setStatus();
    updateCounts();
  }

  function closeTail(t) {
    clearTimeout(t.timer);
    t.timer = 0;
    if (t.ws) {
      const ws = t.ws;
      t.ws = null;
      ws.close(1000);
    }
  }

  function openTail(id) {
    const t = state.tails.get(id);
    if (!t || t.ws) return;
    // Resume after the last seq shown: nothing twice, nothing skipped.
    const query = t.lastSeq === null ? `backfill=${BACKFILL}` : `since_seq=${t.lastSeq}`;
    const ws = openSocket(wsUrl(id, query));
    t.ws = ws;
    ws.onopen = () => {
      t.retry = 0;
      setStatus();
    };
    ws.onmessage = (ev) => receive(id, JSON.parse(ev.data));
    ws.onclose = () => {
      if (t.ws !== ws) return; // closed on purpose
      t.ws = null;
      if (state.paused || state.tails.get(id) !== t) return setStatus();
      t.retry = Math.min(t.retry + 1, 6);
      t.timer = setTimeout(() => {
        t.timer = 0;
        if (!state.paused) openTail(id);
      }, Math.min(5000, 100 * 2 ** t.retry));
      setStatus();
      // A refused handshake says nothing to a page: ask the API why.
      api(`/api/v1/sources/${encodeURIComponent(id)}/stats`).catch((e) => setStatus(e.message));
    };
  }

  function receive(id, env) {
    const t = state.tails.get(id);
    if (!t) return;
    if (t.lastSeq !== null && env.seq <= t.lastSeq) return; // never twice
    t.lastSeq = env.seq;
    if (t.firstSeq === null) t.firstSeq = env.seq;
    state.received++;
    keep(env);
    if (matches(env)) {
      state.pending.push(env);
      if (!state.frame) state.frame = requestAnimationFrame(render);
    }
  }

  function keep(env) {
    state.lines.push(env);
    // Trimmed a quarter at a time, not a line at a time: a flood must not shift 20,000 entries
    // per line.
    if (state.lines.length > KEEP + KEEP / 4) state.lines.splice(0, state.lines.length - KEEP);
    if (env.step) {
      const had = state.steps.has(env.step);
      state.steps.set(env.step, (state.steps.get(env.step) || 0) + 1);
      if (!had) renderSteps();
      else updateStepCount(env.step);
    }
    if (env.step === "_server") {
      $("server-events").hidden = false;
      $("server-lines").appendChild(row(env));
    }
  }

  // ---- rendering --------------------------------------------------------------------------

  function isRouter(env) {
    return env.origin === "LGR";
  }

  function isLoss(env) {
    return isRouter(env) && env.tags && env.tags.missed !== undefined;
  }

  function time(ns) {
    const d = new Date(Math.floor(ns / 1e6));
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function row(env) {
    const div = document.createElement("div");
    div.className = "row" + (env.channel === "ERR" ? " err" : "") + (isRouter(env) ? " lgr" : "") + (isLoss(env) ? " loss" : "");
    div.dataset.seq = env.seq;
    div.dataset.source = env.source_id;
    div.append(span("ts", time(env.timestamp) + " "));
    if (state.selected.length > 1) div.append(span("src", env.source_id + " "));
    if (env.step && env.step !== "_server") div.append(span("step", env.step + " "));
    div.append(span("tag", `[${env.origin}/${env.instance_id}]`), " ", span("ch", env.channel), span("msg", env.message));
    return div;
  }

  function render() {
    state.frame = 0;
    const log = $("log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    // Rows the page could not keep anyway are never built; the rest go in a frame's worth at a
    // time, so a flood never holds the page for long.
    if (state.pending.length > DOM_CAP) state.pending.splice(0, state.pending.length - DOM_CAP);
    const batch = state.pending.splice(0, ROWS_PER_FRAME);
    const frag = document.createDocumentFragment();
    for (const env of batch) frag.appendChild(row(env));
    log.appendChild(frag);
    for (let extra = log.childElementCount - DOM_CAP; extra > 0; extra--) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
    if (state.pending.length) state.frame = requestAnimationFrame(render);
    updateCounts();
  }

  function rerender() {
    state.pending = [];
    $("log").replaceChildren();
    const shown = [];
    for (let i = state.lines.length - 1; i >= 0 && shown.length < DOM_CAP; i--) {
      if (matches(state.lines[i])) shown.push(state.lines[i]);
    }
    // At once (a person asked for it): at most DOM_CAP rows.
    const frag = document.createDocumentFragment();
    for (const env of shown.reverse()) frag.appendChild(row(env));
    const log = $("log");
    log.appendChild(frag);
    log.scrollTop = log.scrollHeight;
    updateCounts();
  }

  function updateCounts() {
    const open = [...state.tails.values()].filter((t) => t.ws && t.ws.readyState === WebSocket.OPEN).length;
    $("counts").textContent = `${state.received} lines received, ${$("log").childElementCount} shown, ${open} of ${state.tails.size} tails open`;
  }

  function setStatus(problem) {
    const el = $("status");
    const tails = [...state.tails.values()];
    let text = "idle";
    let cls = "";
    if (problem) [text, cls] = [problem, "down"];
    else if (state.paused) [text, cls] = ["paused", "paused"];
    else if (tails.some((t) => t.timer)) [text, cls] = ["reconnecting", "down"];
    else if (tails.length) [text, cls] = ["live", "live"];
    el.textContent = text;
    el.className = "status " + cls;
    updateCounts();
  }

  // ---- filters, steps, pause, history -----------------------------------------------------

  function listOf(id) {
    return $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
  }

  function matches(env) {
    const origins = listOf("f-origin");
    if (origins.length && !origins.some((o) => env.origin === o || env.origin.startsWith(o + "/"))) return false;
    const instances = listOf("f-instance");
    if (instances.length && !instances.includes(env.instance_id)) return false;
    const channel = $("f-channel").value;
    if (channel && env.channel !== channel) return false;
    const step = $("f-step").value;
    if (step && env.step !== step) return false;
    const text = $("f-text").value.toLowerCase();
    if (text && !env.message.toLowerCase().includes(text)) return false;
    return true;
  }

  function renderSteps() {
    const steps = [...state.steps.keys()].filter((s) => s !== "_server");
    const bar = $("steps");
    bar.hidden = steps.length === 0;
    bar.replaceChildren();
    const select = $("f-step");
    const current = select.value;
    select.replaceChildren(new Option("every step", ""));
    for (const s of steps) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.step = s;
      b.append(s, span("n", String(state.steps.get(s))));
      b.classList.toggle("on", current === s);
      b.addEventListener("click", () => {
        select.value = select.value === s ? "" : s;
        renderSteps();
        rerender();
      });
      bar.appendChild(b);
      select.appendChild(new Option(s, s));
    }
    for (const s of state.steps.keys()) if (s === "_server") select.appendChild(new Option("server events", s));
    select.value = current;
  }

  function updateStepCount(step) {
    const b = $("steps").querySelector(`button[data-step="${CSS.escape(step)}"] .n`);
    if (b) b.textContent = String(state.steps.get(step));
  }

  function pause() {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").classList.toggle("on", state.paused);
    for (const [id, t] of state.tails) {
      if (state.paused) closeTail(t);
      else openTail(id);
    }
    setStatus();
  }

  // Earlier lines of each tailed source, read from the server's storage by seq.
  async function loadEarlier() {
    if (state.loadingEarlier) return;
    state.loadingEarlier = true;
    $("earlier").disabled = true;
    try {
      const older = [];
      for (const [id, t] of state.tails) {
        if (t.firstSeq === null || t.firstSeq <= 1) continue;
        const upTo = t.firstSeq - 1;
        const from = Math.max(0, upTo - HISTORY);
        const got = await readRange(id, from, upTo);
        if (got.length) t.firstSeq = Math.min(t.firstSeq, got[0].seq);
        older.push(...got);
      }
      if (!older.length) return;
      if (state.tails.size > 1) older.sort((a, b) => a.timestamp - b.timestamp);
      for (const env of older) if (env.step && !state.steps.has(env.step)) state.steps.set(env.step, 0);
      state.lines = older.concat(state.lines).slice(0, KEEP);
      renderSteps();
      const log = $("log");
      const fromBottom = log.scrollHeight - log.scrollTop;
      rerender();
      log.scrollTop = log.scrollHeight - fromBottom;
    } finally {
      state.loadingEarlier = false;
      $("earlier").disabled = false;
    }
  }

  // The lines after `from` through `upTo`: a tail that resumes at `from` and is closed once it
  // reaches `upTo`.
  function readRange(id, from, upTo) {
    return new Promise((resolve) => {
      const got = [];
      const ws = openSocket(wsUrl(id, `since_seq=${from}`));
      const done = () => {
        ws.onmessage = ws.onclose = null;
        ws.close(1000);
        resolve(got);
      };
      ws.onmessage = (ev) => {
        const env = JSON.parse(ev.data);
        if (env.seq <= upTo) got.push(env);
        if (env.seq >= upTo) done();
      };
      ws.onclose = done;
    });
  }

  // ---- tokens -----------------------------------------------------------------------------

  function askToken(reason) {
    const dialog = $("token-dialog");
    $("token-reason").textContent = reason ? `This Sluice asks for a token: ${reason}` : "The token this page sends:";
    if (!dialog.open) dialog.showModal();
  }

  function useToken(token) {
    state.token = token;
    sessionStorage.setItem("sluice-token", token);
    pollSources();
    select(state.selected);
  }

  // ---- wiring -----------------------------------------------------------------------------

  function fromHash() {
    const m = location.hash.match(/^#\/(?:sources|jobs)\/(.+)$/);
    return m ? m[1].split(",").map(decodeURIComponent).filter(Boolean) : [];
  }

  function start() {
    $("pause").addEventListener("click", pause);
    $("clear").addEventListener("click", () => {
      state.lines = [];
      state.pending = [];
      $("log").replaceChildren();
      updateCounts();
    });
    $("earlier").addEventListener("click", loadEarlier);
    for (const id of ["f-text", "f-origin", "f-instance"]) $(id).addEventListener("input", rerender);
    for (const id of ["f-channel", "f-step"]) {
      $(id).addEventListener("change", () => {
        renderSteps();
        rerender();
      });
    }
    $("source-filter").addEventListener("input", pollSources);
    $("open-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = $("open-source").value.trim();
      if (id) select([id]);
    });
    $("token-button").addEventListener("click", () => askToken(""));
    $("token-form").addEventListener("submit", () => useToken($("token-input").value.trim()));
    window.addEventListener("hashchange", () => select(fromHash()));
    // How late the page's timers run: a frozen page shows here (for the tests, and for you).
    let last = performance.now();
    setInterval(() => {
      const now = performance.now();
      state.maxStall = Math.max(state.maxStall, now - last - 100);
      last = now;
    }, 100);
    pollSources();
    setInterval(pollSources, POLL_MS);
    select(fromHash());
  }

  window.sluice = { state, select, pause, loadEarlier };
  start();
})();
