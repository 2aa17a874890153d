// bgtask web view: the one script of the pages (no build step, no library).
//
// Safety rule: text that came from a job or a client (output, meta, argv, messages,
// errors) only ever reaches the page through textContent or as numbers; this file
// never assigns innerHTML, never builds a URL from such text, never evaluates it.
"use strict";

(function () {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const BASE = meta("bgtask-base");
  const CSRF = meta("csrf-token");
  const TAIL = 65536;           // bytes a log opens with; as much again per scroll up
  const MAX_CHARS = 2000000;    // a following log drops its oldest chunks past this
  const MAX_MESSAGES = 200;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function setLive(ok, text) {
    const live = document.getElementById("live");
    live.textContent = text;
    live.classList.toggle("on", ok);
  }

  async function getJSON(path) {
    const r = await fetch(BASE + path, {credentials: "same-origin"});
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.status);
    return data;
  }

  async function post(path, body) {
    const r = await fetch(BASE + path, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF},
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { /* an empty or non-JSON answer */ }
    if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
    return data;
  }

  // -- ANSI colours: SGR sequences become classes (and numeric colours); every other
  // escape sequence (cursor moves, OSC 8 hyperlinks, titles) is dropped, never followed.

  // CSI ... final | OSC ... BEL/ST | a two-byte escape
  const ESC_RE = /\x1b(?:\[([0-9;:?<=>]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\^_`a-~])/g;
  const CONTROL_RE = /[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]/g;

  function xterm256(n) {
    if (n < 16) return null;
    if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
    n -= 16;
    const c = (x) => (x ? 55 + x * 40 : 0);
    return `rgb(${c(Math.floor(n / 36))},${c(Math.floor(n / 6) % 6)},${c(n % 6)})`;
  }

  class Ansi {
    constructor() { this.pending = ""; this.reset(); }
    reset() { this.fg = null; this.bg = null; this.flags = new Set(); }

    sgr(text) {
      const p = text === "" ? [0] : text.split(/[;:]/).map((x) => parseInt(x || "0", 10));
      for (let i = 0; i < p.length; i++) {
        const c = p[i];
        if (c === 0) this.reset();
        else if (c === 1) this.flags.add("b");
        else if (c === 2) this.flags.add("d");
        else if (c === 3) this.flags.add("i");
        else if (c === 4) this.flags.add("u");
        else if (c === 7) this.flags.add("v");
        else if (c === 22) { this.flags.delete("b"); this.flags.delete("d"); }
        else if (c === 23) this.flags.delete("i");
        else if (c === 24) this.flags.delete("u");
        else if (c === 27) this.flags.delete("v");
        else if (c >= 30 && c <= 37) this.fg = c - 30;
        else if (c >= 90 && c <= 97) this.fg = c - 82;
        else if (c === 39) this.fg = null;
        else if (c >= 40 && c <= 47) this.bg = c - 40;
        else if (c >= 100 && c <= 107) this.bg = c - 92;
        else if (c === 49) this.bg = null;
        else if (c === 38 || c === 48) {
          let colour = null;
          if (p[i + 1] === 5) { colour = p[i + 2] & 255; i += 2; }
          else if (p[i + 1] === 2) {
            colour = `rgb(${p[i + 2] & 255},${p[i + 3] & 255},${p[i + 4] & 255})`; i += 4;
          }
          if (c === 38) this.fg = colour; else this.bg = colour;
        }
      }
    }

    piece(text) {
      text = text.replace(/\r\n/g, "\n").replace(/\r/g, "\n").replace(CONTROL_RE, "");
      if (!text) return null;
      if (this.fg === null && this.bg === null && this.flags.size === 0) return document.createTextNode(text);
      const span = el("span", [...this.flags].join(" "), text);
      for (const [value, kind] of [[this.fg, "f"], [this.bg, "g"]]) {
        if (value === null) continue;
        if (typeof value === "number" && value < 16) span.classList.add(kind + value);
        else {
          const rgb = typeof value === "number" ? xterm256(value) : value;
          if (kind === "f") span.style.color = rgb; else span.style.backgroundColor = rgb;
        }
      }
      return span;
    }

    // Text (which may end inside an escape sequence: that part waits) -> a fragment.
    render(text) {
      text = this.pending + text;
      this.pending = "";
      const frag = document.createDocumentFragment();
      let at = 0;
      const add = (node) => { if (node) frag.appendChild(node); };
      for (const m of text.matchAll(ESC_RE)) {
        add(this.piece(text.slice(at, m.index)));
        if (m[2] === "m") this.sgr(m[1]);
        at = m.index + m[0].length;
      }
      let rest = text.slice(at);
      const esc = rest.lastIndexOf("\x1b");
      if (esc >= 0 && rest.length - esc < 4096) { this.pending = rest.slice(esc); rest = rest.slice(0, esc); }
      add(this.piece(rest));
      return frag;
    }
  }

  // -- a log pane: a tail window, live appends, earlier windows fetched on scrolling up

  class LogPane {
    constructor(section, pid) {
      this.name = section.dataset.stream;
      this.pre = section.querySelector("pre");
      this.hint = section.querySelector("[data-role=hint]");
      this.bytes = section.querySelector("[data-role=bytes]");
      this.url = `/api/tasks/${pid}/streams/${this.name}`;
      this.ansi = new Ansi();
      this.first = 0; this.end = 0; this.streamStart = 0; this.chars = 0; this.loading = false;
      this.pre.addEventListener("scroll", () => { if (this.pre.scrollTop < 200) this.earlier(); });
    }

    atBottom() { return this.pre.scrollHeight - this.pre.scrollTop - this.pre.clientHeight < 40; }

    async open() {
      const w = await getJSON(`${this.url}?tail=${TAIL}`);
      this.first = w.start; this.end = w.start; this.streamStart = w.first;
      this.append(w.text, w.start, w.end, true);
      this.pre.scrollTop = this.pre.scrollHeight;
      this.show(w.limit);
      return w.end;
    }

    show(limit) {
      this.bytes.textContent = `${(limit / 1048576).toFixed(limit < 1048576 ? 3 : 1)} MB`;
      const before = this.first - this.streamStart;
      this.hint.textContent = before > 0 ? `· ${before} earlier bytes, scroll up to load` : "";
    }

    append(text, a, b, first) {
      if (!first && b <= this.end) return;               // already shown
      if (!first && a > this.end) this.pre.appendChild(el("span", "gap", `[… ${a - this.end} bytes not held …]\n`));
      const stick = first || this.atBottom();
      const chunk = el("span", "chunk");
      chunk.dataset.a = a;
      chunk.appendChild(this.ansi.render(text));
      this.pre.appendChild(chunk);
      this.end = b; this.chars += text.length;
      if (stick) {
        while (this.chars > MAX_CHARS && this.pre.children.length > 1) {
          const old = this.pre.firstElementChild;
          this.chars -= old.textContent.length;
          old.remove();
          this.first = Number(this.pre.firstElementChild.dataset.a || this.first);
        }
        this.pre.scrollTop = this.pre.scrollHeight;
      }
      this.show(b);
    }

    async earlier() {
      if (this.loading || this.first <= this.streamStart) return;
      this.loading = true;
      try {
        const start = Math.max(this.first - TAIL, this.streamStart);
        const w = await getJSON(`${this.url}?start=${start}&end=${this.first}&align=line`);
        this.streamStart = w.first;
        if (w.end > w.start) {
          const chunk = el("span", "chunk");
          chunk.dataset.a = w.start;
          chunk.appendChild(new Ansi().render(w.text));   // colours set earlier are not known here
          const height = this.pre.scrollHeight;
          this.pre.insertBefore(chunk, this.pre.firstChild);
          this.pre.scrollTop += this.pre.scrollHeight - height;  // keep what the reader looks at
          this.chars += w.text.length;
        }
        this.first = Math.max(w.start, this.streamStart);
        this.show(w.limit);
      } catch (e) {
        this.hint.textContent = `· ${e.message}`;
      } finally {
        this.loading = false;
      }
    }
  }

  // -- the task list -------------------------------------------------------------------

  function listPage() {
    const tbody = document.getElementById("rows");
    const count = document.getElementById("count");
    const es = new EventSource(`${BASE}/api/events${location.search}`);
    es.onopen = () => setLive(true, "live");
    es.onerror = () => setLive(false, "reconnecting");
    es.addEventListener("tasks", (e) => {
      const rows = JSON.parse(e.data);
      const out = [];
      for (const r of rows) {
        const tr = el("tr", `state-${r.cls}`);
        const pid = Number(r.pid);
        const link = el("a", "", pid);
        link.href = `${BASE}/tasks/${pid}`;
        const td = el("td", "num"); td.appendChild(link); tr.appendChild(td);
        const state = el("td"); state.appendChild(el("span", "badge", r.state)); tr.appendChild(state);
        tr.appendChild(el("td", "", r.started));
        tr.appendChild(el("td", "num", r.runtime));
        tr.appendChild(el("td", "num", r.unread));
        tr.appendChild(el("td", "name", r.name));
        tr.appendChild(el("td", "cmd", r.command));
        out.push(tr);
      }
      if (!out.length) { const tr = el("tr", "empty"); const td = el("td", "", "no tasks"); td.colSpan = 7; tr.appendChild(td); out.push(tr); }
      tbody.replaceChildren(...out);
      count.textContent = `${rows.length} task${rows.length === 1 ? "" : "s"}`;
    });
  }

  // -- a task page -----------------------------------------------------------------------

  function fillTable(table, rows, none) {
    const body = table.tBodies[0];
    const out = rows.map(([k, v]) => { const tr = el("tr"); tr.appendChild(el("th", "", k)); tr.appendChild(el("td", "", v)); return tr; });
    if (!out.length) { const tr = el("tr"); tr.appendChild(el("td", "none", none)); out.push(tr); }
    body.replaceChildren(...out);
  }

  function showInfo(t) {
    for (const node of document.querySelectorAll("[data-field]")) {
      const v = t[node.dataset.field];
      if (v !== undefined) node.textContent = v === null ? "-" : String(v);
    }
    document.getElementById("state").className = `badge state-${t.cls}`;
    fillTable(document.getElementById("meta"), t.meta, "none");
    fillTable(document.getElementById("usage"), t.usage, "-");
    document.title = `${t.pid} ${t.name} · bgtask`;
    const can = {pause: t.running && !t.paused, resume: t.paused, kill: t.running, restart: true, delete: true};
    for (const b of document.querySelectorAll("button[data-action]")) b.disabled = !can[b.dataset.action];
  }

  function addMessages(list, items) {
    for (const m of items) {
      const li = el("li", "", m.text);
      li.value = Number(m.n) + 1;
      list.appendChild(li);
    }
    while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
  }

  async function taskPage() {
    const pid = Number(document.getElementById("task").dataset.pid);
    const result = document.getElementById("result");
    const say = (text, bad) => { result.textContent = text; result.classList.toggle("bad", !!bad); };
    const act = async (action, body) => {
      try {
        const r = await post(`/api/tasks/${pid}/${action}`, body);
        say(`${action}: ${r.ok ? "done" : "nothing to do"}`);
        return r;
      } catch (e) { say(`${action}: ${e.message}`, true); return null; }
    };

    for (const b of document.querySelectorAll("button[data-action]")) {
      b.addEventListener("click", async () => {
        const action = b.dataset.action;
        if (action === "delete" && !confirm(`Delete task ${pid}? Its output goes with it.`)) return;
        const body = action === "kill" ? {signal: document.getElementById("signal").value} : {};
        const r = await act(action, body);
        if (action === "delete" && r) location.href = `${BASE}/`;
      });
    }
    const stdin = document.getElementById("stdin-form");
    stdin.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = stdin.elements.text.value + (stdin.elements.newline.checked ? "\n" : "");
      if (await act("stdin", {text})) stdin.elements.text.value = "";
    });
    document.getElementById("stdin-close").addEventListener("click", () => act("stdin", {close: true}));
    const control = document.getElementById("control-form");
    control.addEventListener("submit", async (e) => {
      e.preventDefault();
      let message;
      try { message = JSON.parse(control.elements.message.value); } catch (err) { say(`control: not JSON: ${err.message}`, true); return; }
      if (await act("control", {message})) control.elements.message.value = "";
    });

    const panes = {stdout: new LogPane(document.getElementById("stdout"), pid),
                   stderr: new LogPane(document.getElementById("stderr"), pid)};
    const list = document.getElementById("data");
    let cursor;
    try {
      const [out, err, data] = await Promise.all([panes.stdout.open(), panes.stderr.open(),
                                                  getJSON(`/api/tasks/${pid}/streams/data?tail=${MAX_MESSAGES}`)]);
      addMessages(list, data.items);
      cursor = `stdout=${out}&stderr=${err}&data=${data.end}`;
    } catch (e) { say(e.message, true); return; }
    document.body.dataset.ready = "1";  // the tail windows are on screen (tests wait for this)

    // One stream for everything; on a dropped connection the browser reconnects by
    // itself and sends the last event's id (the cursor) as Last-Event-ID.
    const es = new EventSource(`${BASE}/api/tasks/${pid}/events?${cursor}`);
    es.onopen = () => setLive(true, "live");
    es.onerror = () => setLive(false, es.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
    es.addEventListener("out", (e) => { const m = JSON.parse(e.data); panes[m.s].append(m.t, m.a, m.b, false); });
    es.addEventListener("gap", (e) => { const m = JSON.parse(e.data); if (panes[m.s]) panes[m.s].append("", m.b, m.b, false); });
    es.addEventListener("msg", (e) => addMessages(list, [JSON.parse(e.data)]));
    es.addEventListener("info", (e) => showInfo(JSON.parse(e.data)));
    es.addEventListener("gone", () => {
      es.close(); setLive(false, "gone");
      say("this task has been deleted", true);
      for (const b of document.querySelectorAll("button")) b.disabled = true;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "list") listPage();
    else if (page === "task") taskPage();
  });
})();
