// memwatch's page: a view of the JSON API (/processes, /leaks, /objects,
// /control, /status) with no data of its own. No framework: the DOM, fetch
// and SVG. Text from processes (names, command lines, frames) is only ever
// set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 5000;
const main = document.getElementById("main");
let view = { token: 0, timer: null };

// ---- small helpers ----------------------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) el.append(c);
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") el.textContent = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

function bytes(n) {
  const neg = n < 0;
  let v = Math.abs(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  const s = i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0);
  return (neg ? "−" : "") + s + " " + units[i];
}

function signed(n) { return (n > 0 ? "+" : "") + bytes(n); }

function duration(s) {
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function count(n) { return Number(n).toLocaleString("en-US"); }

function basename(p) { return p ? p.slice(p.lastIndexOf("/") + 1) : ""; }

function showError(message) {
  const e = document.getElementById("error");
  e.hidden = !message;
  e.textContent = message || "";
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options));
  const text = await r.text();
  if (!r.ok) throw new HttpError(r.status, `${path}: ${r.status} ${text.trim() || r.statusText}`);
  return JSON.parse(text);
}

function place(p) {
  const parts = [];
  if (p.unit) parts.push(p.unit);
  if (p.container) parts.push("container " + p.container.slice(0, 12));
  if (p.pod) parts.push("pod " + p.pod.slice(0, 8));
  return parts.join(" · ");
}

function stateBadge(p) {
  const state = p.alert && p.alert.state;
  if (state === "firing") return h("span", { class: "badge firing", text: "FIRING" });
  if (state === "pending") return h("span", { class: "badge pending", text: "pending" });
  if (p.verdict === "leak" || p.verdict === "growing") return h("span", { class: "badge " + p.verdict, text: p.verdict });
  return h("span", { class: "badge quiet", text: p.verdict === "insufficient" ? "new" : p.verdict || "—" });
}

function flagged(p) {
  const s = p.alert && p.alert.state;
  return s === "firing" || s === "pending";
}

function sparkline(history, width = 120, height = 24) {
  const el = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}` });
  if (history.length < 2) return el;
  const t0 = history[0][0], t1 = history[history.length - 1][0];
  let lo = Infinity, hi = -Infinity;
  for (const [, b] of history) { lo = Math.min(lo, b); hi = Math.max(hi, b); }
  const span = Math.max(hi - lo, 1), dt = Math.max(t1 - t0, 1e-9);
  const pts = history.map(([t, b]) =>
    `${((t - t0) / dt * (width - 2) + 1).toFixed(1)},${(height - 2 - (b - lo) / span * (height - 4)).toFixed(1)}`);
  el.append(svg("polyline", { points: pts.join(" ") }));
  return el;
}

// ---- routing ----------------------------------------------------------

function route() {
  clearTimeout(view.timer);
  view = { token: view.token + 1, timer: null };
  showError("");
  const m = location.hash.match(/^#\/process\/(\d+)/);
  if (m) processView(Number(m[1]), view);
  else hostView(view);
}

function every(v, fn) {
  const tick = async () => {
    if (v !== view) return;
    try { await fn(); showError(""); } catch (e) { if (v === view) showError(e.message); }
    if (v === view) v.timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
}

async function daemonLine() {
  try {
    const s = await api("/status");
    const w = s.watch || {};
    document.getElementById("daemon").textContent =
      `${s.version || ""} · ${w.enabled ? count(w.watched_processes) + " processes watched · " : ""}` +
      `${(s.tracked_processes || []).length} tracked · ${w.suspects || 0} suspects`;
  } catch (e) { showError(e.message); }
}

// ---- the host ---------------------------------------------------------

function hostView(v) {
  const filter = h("input", { type: "search", id: "filter", placeholder: "filter: name, pid, unit, container", size: 34 });
  const limit = h("select", { id: "limit" },
    ...[50, 100, 500, 1000].map(n => h("option", { value: n, text: `top ${n}`, selected: n === 100 })));
  const summary = h("span", { class: "muted", id: "summary" });
  const body = h("tbody");
  const table = h("table", { id: "processes" },
    h("thead", {}, h("tr", {},
      h("th", { text: "State" }), h("th", { class: "num", text: "PID" }), h("th", { text: "Process" }),
      h("th", { text: "Unit / container" }), h("th", { class: "num", text: "Heap" }),
      h("th", { text: "Heap, last minutes" }), h("th", { class: "num", text: "Growth" }), h("th", { text: "" }))),
    body);
  main.replaceChildren(
    h("h1", { text: "Processes on this host" }),
    h("p", { class: "hint", text: "Firing and pending leak alerts first, then suspects, tracked processes and the largest heaps (anonymous memory, resident or swapped). A process links to its page." }),
    h("div", { class: "bar" }, filter, limit, summary),
    table);
  let typing;
  filter.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refresh, 250); });
  limit.addEventListener("change", refresh);
  async function refresh() {
    const q = new URLSearchParams({ limit: limit.value });
    if (filter.value.trim()) q.set("filter", filter.value.trim());
    const r = await api("/processes?" + q);
    if (v !== view) return;
    summary.textContent = r.watching
      ? `${count(r.matched)} of ${count(r.watched_processes)} processes${r.matched > r.processes.length ? `, showing ${r.processes.length}` : ""}`
      : "host-wide sampling is off: tracked processes only";
    body.replaceChildren(...r.processes.map(hostRow));
  }
  every(v, async () => { await Promise.all([refresh(), daemonLine()]); });
}

function hostRow(p) {
  const growing = p.verdict === "leak" || p.verdict === "growing";
  return h("tr", { class: flagged(p) ? "flagged" : "", dataset: { pid: p.pid } },
    h("td", {}, stateBadge(p)),
    h("td", { class: "num", text: p.pid }),
    h("td", {}, h("a", { href: `#/process/${p.pid}`, text: p.comm }), " ",
      h("span", { class: "muted", text: p.cmdline.length > 70 ? p.cmdline.slice(0, 70) + "…" : p.cmdline, title: p.cmdline })),
    h("td", { class: "muted", text: place(p) }),
    h("td", { class: "num", text: p.heap_bytes ? bytes(p.heap_bytes) : "—" }),
    h("td", {}, sparkline(p.heap_history)),
    h("td", { class: "num", text: growing ? bytes(p.rate_bytes_per_second) + "/s" : "" }),
    h("td", {}, p.tracked ? h("span", { class: "badge tracked", text: "tracked" }) : ""));
}

// ---- a process --------------------------------------------------------

const MODES = {
  live: { label: "live now", query: {} },
  since60: { label: "growth, last minute", query: { since: 60 } },
  since300: { label: "growth, last 5 min", query: { since: 300 } },
  since900: { label: "growth, last 15 min", query: { since: 900 } },
  since3600: { label: "growth, last hour", query: { since: 3600 } },
  allocated: { label: "allocated since tracking began", query: { sort: "allocated" } },
  peak: { label: "at the peak", query: { at: "peak" } },
};

function processView(pid, v) {
  const state = {
    mode: "live", frames: "python", search: "", sort: null, zoom: [], open: new Set(),
    census: null, censusAt: 0,
  };
  const mode = h("select", { id: "mode" },
    ...Object.entries(MODES).map(([k, m]) => h("option", { value: k, text: m.label })));
  const frames = h("input", { type: "checkbox", id: "all-frames" });
  const framesLabel = h("label", { hidden: true }, frames, " show interpreter frames");
  const search = h("input", { type: "search", id: "search", placeholder: "search frames", size: 24 });
  const reset = h("button", { class: "secondary", id: "reset-zoom", text: "Reset zoom" });
  const sections = {
    head: h("div", { class: "card", id: "process" }),
    chart: h("div", { class: "card", id: "memory" }),
    heap: h("div", { id: "heap" }),
    python: h("div", { id: "python" }),
  };
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/", text: "← all processes" })),
    sections.head, sections.chart,
    h("h2", { text: "Heap by stack" }),
    h("div", { class: "bar" }, mode, framesLabel, search, reset, h("span", { class: "hint", id: "matched" })),
    sections.heap, sections.python);
  mode.addEventListener("change", () => { state.mode = mode.value; state.zoom = []; refresh(); });
  frames.addEventListener("change", () => { state.frames = frames.checked ? "all" : "python"; state.zoom = []; refresh(); });
  search.addEventListener("input", () => { state.search = search.value.trim().toLowerCase(); drawFlame(); });
  reset.addEventListener("click", () => { state.zoom = []; drawFlame(); });

  let last = null;
  async function refresh() {
    const [host, control] = await Promise.all([
      api(`/processes?pid=${pid}`).catch(e => { if (e.status === 404) return null; throw e; }),
      api("/control"),
    ]);
    const hp = host && host.processes[0];
    let proc = null;
    if (hp && hp.tracked) {
      const q = new URLSearchParams(Object.assign({ pid, limit: 500, frames: state.frames }, MODES[state.mode].query));
      const r = await api("/leaks?" + q);
      proc = r.processes.find(p => p.pid === pid) || null;
    }
    if (v !== view) return;
    last = { hp, proc, control };
    drawHead(hp, proc, control);
    drawChart(hp, proc);
    framesLabel.hidden = !(proc && proc.python);
    if (proc) drawHeap(proc);
    else sections.heap.replaceChildren(h("p", { class: "card muted", id: "untracked",
      text: hp ? "Not tracked exactly: only its memory is sampled. Tracking it records every allocation's stack from now on." +
        (control.may_control ? "" : " Start it with `memwatch track " + pid + "` on the host, or here over an authenticated connection.")
        : `Process ${pid} is neither sampled nor tracked: it has exited, or was never seen.` }));
    if (proc && proc.python) await drawPython();
    else sections.python.replaceChildren();
  }

  function drawHead(hp, proc, control) {
    const p = hp || proc;
    if (!p) { sections.head.replaceChildren(h("h1", { text: `Process ${pid}` })); return; }
    const facts = [];
    const fact = (label, value, id) => facts.push(h("div", { id }, h("span", { class: "muted", text: label }), h("b", { text: value })));
    if (hp && hp.heap_bytes) fact("Heap", bytes(hp.heap_bytes), "fact-heap");
    if (hp && hp.resident_bytes) fact("Resident", bytes(hp.resident_bytes), "fact-rss");
    if (hp && (hp.verdict === "leak" || hp.verdict === "growing")) fact("Growth", bytes(hp.rate_bytes_per_second) + "/s", "fact-rate");
    if (proc) {
      fact("Tracked live", `${bytes(proc.live_bytes)} in ${count(proc.live_allocations)}`, "fact-live");
      if (proc.peak) fact("Peak", bytes(proc.peak.bytes), "fact-peak");
      fact("Tracked for", duration(Date.now() / 1000 - proc.tracked_since_unix), "fact-since");
      if (proc.growth) fact(`Net growth, ${duration(proc.growth.window_seconds)}`, signed(proc.growth.net_growth_bytes), "fact-growth");
    }
    const buttons = [];
    if (control.may_control && hp) {
      buttons.push(proc
        ? h("button", { class: "secondary", id: "untrack", text: "Stop tracking", onclick: () => steer("untrack") })
        : h("button", { id: "track", text: "Track exactly", onclick: () => steer("track") }));
    }
    sections.head.replaceChildren(
      h("h1", {}, `${p.comm} `, h("span", { class: "muted", text: `pid ${pid}` }), " ",
        hp ? stateBadge(hp) : "", proc ? h("span", { class: "badge tracked", text: "tracked" }) : ""),
      h("div", { class: "muted", text: p.cmdline || p.exe }),
      place(p) ? h("div", { class: "muted", text: place(p) }) : "",
      h("div", { class: "facts" }, facts),
      h("div", { class: "bar" }, buttons));
  }

  async function steer(what) {
    try {
      const r = await api(`/control/${what}`, {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ pid }),
      });
      showError("");
      sections.head.append(h("p", { class: "hint", id: "steered", text: r.message }));
      setTimeout(() => { if (v === view) refresh().catch(e => showError(e.message)); }, 1500);
    } catch (e) { showError(e.message); }
  }

  function drawChart(hp, proc) {
    const heap = hp ? hp.heap_history : [];
    const live = proc ? proc.live_history || [] : [];
    const peak = proc && proc.peak ? proc.peak.bytes : 0;
    const all = heap.concat(live);
    if (all.length < 2) {
      sections.chart.replaceChildren(h("h2", { text: "Memory over time" }), h("p", { class: "muted", text: "Not enough samples yet." }));
      return;
    }
    const W = 1000, H = 170, L = 70, B = 22;
    const t0 = Math.min(...all.map(p => p[0])), t1 = Math.max(...all.map(p => p[0]));
    const top = Math.max(peak, ...all.map(p => p[1])) * 1.1 || 1;
    const x = t => L + (t - t0) / Math.max(t1 - t0, 1e-9) * (W - L - 10);
    const y = b => H - B - b / top * (H - B - 10);
    const line = (pts, cls) => svg("polyline", { class: cls, points: pts.map(([t, b]) => `${x(t).toFixed(1)},${y(b).toFixed(1)}`).join(" ") });
    const chart = svg("svg", { class: "chart", id: "memory-chart", viewBox: `0 0 ${W} ${H}`, width: "100%" });
    for (const f of [0, 0.5, 1]) {
      chart.append(svg("line", { class: "axis", x1: L, x2: W - 10, y1: y(top / 1.1 * f), y2: y(top / 1.1 * f) }),
        svg("text", { x: L - 6, y: y(top / 1.1 * f) + 4, "text-anchor": "end", text: bytes(Math.round(top / 1.1 * f)) }));
    }
    chart.append(svg("text", { x: L, y: H - 4, text: `−${duration(t1 - t0)}` }),
      svg("text", { x: W - 10, y: H - 4, "text-anchor": "end", text: "now" }));
    if (heap.length > 1) chart.append(line(heap, "heap"));
    if (live.length > 1) chart.append(line(live, "live"));
    if (peak) chart.append(svg("line", { class: "peak", x1: L, x2: W - 10, y1: y(peak), y2: y(peak) }));
    const key = (cls, text) => h("span", {}, h("i", { class: cls }), text);
    const legend = h("div", { class: "legend hint" },
      heap.length > 1 ? key("heap-key", "heap (anonymous memory, host-wide sampling)") : "",
      live.length > 1 ? key("live-key", "tracked live (exact)") : "",
      peak ? key("peak-key", `high-water mark ${bytes(peak)}`) : "");
    sections.chart.replaceChildren(h("h2", { text: "Memory over time" }), chart, legend);
  }

  // What a stack weighs in the current mode.
  function weight(s) {
    if (state.mode === "allocated") return s.allocated ? s.allocated.bytes : 0;
    if (state.mode.startsWith("since")) return Math.max(s.net_growth_bytes ?? s.growth_bytes ?? 0, 0);
    return s.live_bytes;
  }

  function label(f) {
    const name = f.function || "??";
    return f.file && f.kind !== "folded" ? `${name} ${basename(f.file)}:${f.line ?? "?"}` : name;
  }

  let tree = null;
  function drawHeap(proc) {
    tree = { name: "all", kind: "root", value: 0, children: new Map(), parent: null };
    for (const s of proc.stacks) {
      const w = weight(s);
      if (!(w > 0)) continue;
      tree.value += w;
      let node = tree;
      const path = s.frames.slice().reverse().map(f => [label(f), f.kind]);
      path.push([`${s.call}()`, "native"]);
      for (const [name, kind] of path) {
        let c = node.children.get(name);
        if (!c) { c = { name, kind, value: 0, children: new Map(), parent: node }; node.children.set(name, c); }
        c.value += w;
        node = c;
      }
    }
    const flame = h("div", { id: "flame" });
    sections.heap.replaceChildren(flame, h("p", { class: "hint", text: "Click a frame to zoom into it, the top bar or a faded frame to zoom out; the search marks matching frames." }),
      stackTable(proc));
    drawFlame();
  }

  function drawFlame() {
    const flame = document.getElementById("flame");
    if (!flame || !tree) return;
    let zoom = tree;
    for (const name of state.zoom) {
      const c = zoom.children.get(name);
      if (!c) break;
      zoom = c;
    }
    const ROW = 20, boxes = [];
    let depth = 0, maxDepth = 0, matched = 0;
    const ancestors = [];
    for (let a = zoom.parent; a; a = a.parent) ancestors.unshift(a);
    const pathOf = n => { const p = []; for (let a = n; a && a.parent; a = a.parent) p.unshift(a.name); return p; };
    const box = (n, d, left, width, cls) => {
      const hit = state.search && n.kind !== "root" && n.name.toLowerCase().includes(state.search);
      const el = h("div", {
        class: `fn ${n.kind}${cls ? " " + cls : ""}${hit ? " match" : ""}`,
        title: `${n.name}\n${bytes(n.value)} (${(n.value / Math.max(tree.value, 1) * 100).toFixed(1)}% of all)`,
        text: n.kind === "root" ? `all: ${bytes(n.value)}` : n.name,
      });
      el.style.left = left + "%";
      el.style.width = width + "%";
      el.style.top = d * ROW + "px";
      el.addEventListener("click", () => { state.zoom = pathOf(n); drawFlame(); });
      boxes.push(el);
      maxDepth = Math.max(maxDepth, d);
      return hit;
    };
    for (const a of ancestors) box(a, depth++, 0, 100, "ancestor");
    const walk = (n, d, left, width, inMatch) => {
      const hit = box(n, d, left, width, n === zoom ? "zoomed" : "");
      if (hit && !inMatch) matched += n.value;
      let x = left;
      for (const c of [...n.children.values()].sort((a, b) => b.value - a.value)) {
        const w = width * c.value / Math.max(n.value, 1);
        if (w >= 0.15) walk(c, d + 1, x, w, inMatch || hit);
        x += w;
      }
    };
    walk(zoom, depth, 0, 100, false);
    flame.dataset.zoom = zoom.name;
    flame.style.height = (maxDepth + 1) * ROW + 2 + "px";
    flame.replaceChildren(...boxes);
    document.getElementById("matched").textContent = state.search
      ? `matched ${bytes(matched)} (${(matched / Math.max(tree.value, 1) * 100).toFixed(1)}%)` : "";
  }

  // The innermost frame with a source line, and who called it.
  function where(s) {
    const i = Math.max(s.frames.findIndex(f => f.file && f.kind !== "folded"), 0);
    const f = s.frames[i];
    if (!f) return "(stack not captured)";
    const at = f.file ? `${f.function || "??"}  ${basename(f.file)}:${f.line ?? "?"}` : f.function || "??";
    const caller = s.frames.slice(i + 1).find(f => f.kind !== "folded");
    return caller ? `${at}  ← ${caller.function || "??"}` : at;
  }

  function stackTable(proc) {
    const since = state.mode.startsWith("since"), allocated = state.mode === "allocated";
    const cols = [
      { key: "live_bytes", label: "Live", num: true, get: s => s.live_bytes, show: s => bytes(s.live_bytes) },
      { key: "live_allocations", label: "Blocks", num: true, get: s => s.live_allocations, show: s => count(s.live_allocations) },
      { key: "oldest", label: "Oldest", num: true, get: s => s.oldest_age_seconds, show: s => duration(s.oldest_age_seconds) },
    ];
    if (since) cols.push({ key: "growth", label: "Net growth", num: true, get: s => s.net_growth_bytes ?? 0, show: s => signed(s.net_growth_bytes ?? 0) });
    if (allocated || proc.stacks.some(s => s.allocated)) {
      cols.push({ key: "allocated", label: "Allocated", num: true, get: s => s.allocated ? s.allocated.bytes : 0,
        show: s => s.allocated ? `${bytes(s.allocated.bytes)} in ${count(s.allocated.allocations)}` : "" });
    }
    cols.push({ key: "where", label: "Where", get: where, show: where, cls: "where" });
    cols.push({ key: "call", label: "Call", get: s => s.call, show: s => `${s.call}()` });
    const sortKey = state.sort || (since ? "growth" : allocated ? "allocated" : "live_bytes");
    const col = cols.find(c => c.key === sortKey) || cols[0];
    const rows = proc.stacks.slice().sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      return typeof x === "string" ? x.localeCompare(y) : y - x;
    });
    const body = h("tbody");
    rows.forEach((s, i) => {
      const id = s.frames.map(label).join("|") + s.call;
      const tr = h("tr", { class: "stack-row", dataset: { index: i } },
        ...cols.map(c => h("td", { class: (c.num ? "num " : "") + (c.cls || ""), text: c.show(s) })));
      const detail = h("tr", { class: "stack-detail", hidden: !state.open.has(id) },
        h("td", { colspan: cols.length }, framesBlock(s)));
      tr.addEventListener("click", () => {
        detail.hidden = !detail.hidden;
        if (detail.hidden) state.open.delete(id); else state.open.add(id);
      });
      body.append(tr, detail);
    });
    const head = h("tr", {}, ...cols.map(c => {
      const th = h("th", { class: `sortable${c.num ? " num" : ""}${c === col ? " sorted" : ""}`, text: c.label, dataset: { key: c.key } });
      th.addEventListener("click", () => { state.sort = c.key; sections.heap.querySelector("#stacks").replaceWith(stackTable(proc)); });
      return th;
    }));
    return h("table", { id: "stacks" }, h("thead", {}, head), body,
      h("caption", { class: "hint", text: `${proc.stacks.length} of ${proc.stack_count} stacks; click a row for its frames, a column to sort.` }));
  }

  function framesBlock(s) {
    if (!s.frames.length) return h("div", { class: "frames muted", text: "(stack not captured)" });
    return h("div", { class: "frames" }, ...s.frames.map(f =>
      h("div", { class: f.kind === "python" ? "py" : f.kind === "folded" ? "folded" : "",
        text: (f.function || "??") + (f.file ? ` (${f.file}:${f.line ?? "?"})` : "") +
          (f.module && f.kind !== "python" ? `  [${basename(f.module)}]` : "") + (f.inlined ? " [inlined]" : "") })));
  }

  // A census walks the whole heap: taken when the page opens and every
  // 15 s after, not at every refresh.
  async function drawPython() {
    if (!state.census || Date.now() - state.censusAt > 15000) {
      try {
        state.census = await api(`/objects?pid=${pid}&limit=25&since=0`);
      } catch (e) {
        state.census = { error: e.message };
      }
      state.censusAt = Date.now();
    }
    if (v !== view) return;
    const c = state.census;
    if (c.error) { sections.python.replaceChildren(h("h2", { text: "Python objects" }), h("p", { class: "muted", text: c.error })); return; }
    const table = (id, head, rows) => h("table", { id }, h("thead", {}, h("tr", {}, ...head.map(([t, num]) => h("th", { class: num ? "num" : "", text: t })))),
      h("tbody", {}, ...rows.map(r => h("tr", {}, ...r.map((x, i) => h("td", { class: head[i][1] ? "num" : "", text: x }))))));
    const parts = [h("h2", { text: `Python objects (${c.python.version}, census of ${count(c.objects)} objects taken in ${Math.round(c.duration_seconds * 1000)} ms)` })];
    if (c.growth && c.growth.types.length) {
      parts.push(h("h3", { class: "hint", text: `Most grown in the last ${duration(c.growth.window_seconds)}` }),
        table("census-growth", [["Type"], ["Module"], ["Count", 1], ["Change", 1], ["Bytes change", 1]],
          c.growth.types.slice(0, 10).map(t => [t.type, t.module, count(t.count), (t.count_change > 0 ? "+" : "") + count(t.count_change), signed(t.bytes_change)])));
    }
    parts.push(h("h3", { class: "hint", text: "Most numerous types" }),
      table("census", [["Type"], ["Module"], ["Count", 1], ["Bytes", 1]],
        c.types.map(t => [t.type, t.module, count(t.count), bytes(t.bytes)])));
    if (c.allocator) {
      const a = c.allocator;
      parts.push(h("h3", { class: "hint", text: `Object allocator (pymalloc): ${bytes(a.bytes)} in ${count(a.blocks)} blocks, ${count(a.arenas)} arenas of ${bytes(a.arena_bytes)}` }),
        table("allocator", [["Block size", 1], ["Pools", 1], ["Blocks", 1], ["Bytes", 1], ["Free blocks", 1]],
          a.size_classes.map(s => [bytes(s.size), count(s.pools), count(s.blocks), bytes(s.bytes), count(s.free_blocks)])));
    } else if (c.allocator_unavailable) {
      parts.push(h("p", { class: "muted", text: "Allocator: " + c.allocator_unavailable }));
    }
    sections.python.replaceChildren(...parts);
  }

  every(v, async () => { await Promise.all([refresh(), daemonLine()]); });
}

window.addEventListener("hashchange", route);
route();
