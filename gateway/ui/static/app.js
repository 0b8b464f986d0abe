/* The touchscreen's behaviour: every action goes through the JSON API with the
   CSRF token; the status bar and exam events arrive over Server-Sent Events.

   The page recovers by itself: when the event stream comes back after the
   service restarted, it fetches a new session and token, reloads the preview
   and the exam, and a 403 for the token is answered by a new token and one
   retry. Gloved fingers: a repeat tap within 300 ms is ignored, buttons whose
   request runs are disabled, and destructive buttons sit 12 px or more from
   the others. */
"use strict";
let CSRF = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const REPEAT_MS = 300;
const STALL_MS = 2000;

class ApiError extends Error {
  constructor(message, status, data) { super(message); this.status = status; this.data = data || {}; }
}

async function refreshSession() {
  const res = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
  const data = await res.json();
  if (data.login_required && !data.logged_in && document.body.dataset.page !== "login") {
    location.href = "/login"; throw new ApiError("log in again", 401, data);
  }
  CSRF = data.csrf;
  return data;
}

async function api(method, path, body, retried = false) {
  const opts = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let res;
  try { res = await fetch(path, opts); } catch (e) { throw new ApiError("The gateway is not answering", 0); }
  let data = {};
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (res.status === 403 && data.code === "csrf" && !retried) {
    await refreshSession(); // the service restarted: a new session, then once more
    return api(method, path, body, true);
  }
  if (res.status === 401 && document.body.dataset.page !== "login") { location.href = "/login"; }
  if (!res.ok) throw new ApiError(data.error || `failed (${res.status})`, res.status, data);
  return data;
}

/* -- gloves ------------------------------------------------------------------- */
const busy = new Set();
let buttonRules = () => {}; // a page's extra reasons to disable buttons
function updateButtons() { buttonRules(); }

/* A repeat tap is the same button again within 300 ms, nothing tapped in
   between (a glove bouncing); a tap on another button first is a new tap.
   Updated after the button's own handler has looked at it. */
let lastTap = { target: null, at: -Infinity };
document.addEventListener("click", ev => {
  lastTap = { target: ev.target.closest("button, a"), at: performance.now() };
});

/* `fn` runs on a tap; a repeat tap is ignored, and with `lock` the button
   stays disabled until its request has answered. */
function tap(button, fn, { lock = false } = {}) {
  button.addEventListener("click", async ev => {
    const now = performance.now();
    if ((lastTap.target === button && now - lastTap.at < REPEAT_MS) || busy.has(button)) return;
    if (lock) { busy.add(button); button.disabled = true; }
    try { await fn(ev); }
    finally {
      if (lock) { busy.delete(button); button.disabled = false; updateButtons(); }
    }
  });
}

let toastTimer = null;
function toast(text, error = false, action = null) {
  const t = $("#toast"), b = $("#toast-action");
  $("#toast-text").textContent = text; t.className = error ? "error" : ""; t.hidden = false;
  b.hidden = !action;
  b.onclick = null;
  if (action) { b.textContent = action.label; b.onclick = () => { t.hidden = true; action.run(); }; }
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, action ? action.ms || 5000 : error ? 6000 : 2500);
}

function closeButtons(dialog) {
  $$("[data-close]", dialog).forEach(b => b.addEventListener("click", () => dialog.close()));
}

function clock(ts) {
  const d = new Date(ts * 1000);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/* The patient as every screen shows it (the words come from the API). */
function patientBox(p, extra = {}) {
  const box = el("div", "pbox");
  box.appendChild(el("div", "pbox-name", p.display_name));
  const facts = el("div", "pbox-facts");
  const items = [["ID", p.id], ["Born", p.birth_text], ["Sex", p.sex_text]];
  if (extra.accession !== undefined) {
    items.push(["Acc", extra.accession || (extra.scheduled ? "none" : "none (unscheduled)")]);
  }
  for (const [k, v] of items) {
    const s = el("span", "fact"); s.append(el("span", "k", k + " "), el("span", "v", v)); facts.appendChild(s);
  }
  if (extra.procedure) facts.appendChild(el("span", "fact proc", extra.procedure));
  box.appendChild(facts);
  return box;
}

/* -- status bar ------------------------------------------------------------ */
let lastStatus = null;
function showStatus(s) {
  lastStatus = s;
  $("#sb-clock").textContent = s.clock.text;
  const q = s.queue;
  $("#sb-queue").textContent = `${q.pending} waiting · ${q.sent} sent · ${q.failed} failed`;
  $("#sb-queue").classList.toggle("has-failed", q.failed > 0);
  const link = $("#sb-link");
  const down = s.links.filter(l => l.state === "down");
  const up = s.links.length && s.links.every(l => l.state === "up");
  link.className = "sb-item pill sb-button " + (down.length ? "down" : up ? "up" : "");
  link.textContent = down.length ? `PACS down since ${clock(down[0].since)}` : up ? "PACS OK" : (s.links.length ? "PACS idle" : "No PACS");
  const ris = $("#sb-ris");
  ris.hidden = !s.ris;
  if (s.ris) {
    ris.className = "sb-item pill sb-button " + (s.ris.state === "down" ? "down" : s.ris.state === "up" ? "up" : "");
    ris.textContent = s.ris.state === "down" ? "RIS down" : s.ris.state === "up" ? "RIS OK" : "RIS …";
  }
  $("#sb-disk").textContent = s.disk.free_mb >= 0 ? `${(s.disk.free_mb / 1024).toFixed(1)} GB free` : "";
  const msg = $("#sb-message");
  const first = s.messages.find(m => m.level === "error") || s.messages.find(m => m.level === "warning");
  msg.hidden = !first;
  if (first) {
    const more = s.messages.length > 1 ? ` (+${s.messages.length - 1} more)` : "";
    msg.textContent = first.text + more; msg.className = "sb-msg sb-button " + first.level;
  }
  if ($("#dlg-status").open) fillStatusDetails();
  (handlers.status || []).forEach(fn => fn(s));
}

function fillStatusDetails() {
  const s = lastStatus, box = $("#status-details");
  box.replaceChildren();
  if (!s) { box.textContent = "No status from the gateway yet."; return; }
  const add = (text, cls = "") => box.appendChild(el("p", cls, text));
  add(`${s.queue.pending} waiting · ${s.queue.sent} sent · ${s.queue.failed} failed · ${s.queue.held} held in open exams`);
  for (const l of s.links) add(l.text + (l.last_error ? ` — ${l.last_error}` : ""), l.state === "down" ? "bad" : "");
  for (const f of s.failures || []) add(`${f.count} refused by ${f.destination} (${f.at}): ${f.reason}`, "bad");
  if (s.ris) add(s.ris.text + (s.ris.last_error && s.ris.state === "down" ? ` — ${s.ris.last_error}` : ""), s.ris.state === "down" ? "bad" : "");
  if (s.mpps) add(s.mpps.text, s.mpps.state === "down" ? "bad" : "");
  for (const m of s.messages) add(m.text, m.level === "error" ? "bad" : "");
}

const handlers = {};
function on(type, fn) { (handlers[type] = handlers[type] || []).push(fn); }
let boot = null, lost = false;
function connectEvents() {
  const es = new EventSource("/api/events");
  es.addEventListener("hello", async e => {
    const hello = JSON.parse(e.data);
    const restarted = boot !== null && hello.boot !== boot;
    const back = lost;
    boot = hello.boot; lost = false;
    if (restarted || back) {
      // Whatever happened while we were away: a new token, then each page
      // catches up (preview, exam, list) without a reload.
      try { await refreshSession(); } catch (err) { /* retried on the next 403 */ }
      (handlers.reconnect || []).forEach(fn => fn({ restarted }));
    }
  });
  es.addEventListener("status", e => showStatus(JSON.parse(e.data)));
  for (const type of ["object", "deleted", "recording", "record_limit", "pedal", "exam"]) {
    es.addEventListener(type, e => (handlers[type] || []).forEach(fn => fn(JSON.parse(e.data))));
  }
  // Said on every screen: e.g. images a serial device sent with no exam open.
  es.addEventListener("notice", e => toast(JSON.parse(e.data).text));
  es.onerror = () => {
    lost = true;
    const msg = $("#sb-message");
    msg.hidden = false;
    msg.textContent = "Lost contact with the gateway — reconnecting…"; msg.className = "sb-msg sb-button error";
    (handlers.lost || []).forEach(fn => fn());
    if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connectEvents, 1500); }
  };
}

function initStatusBar() {
  const dlg = $("#dlg-status"); closeButtons(dlg);
  for (const id of ["#sb-queue", "#sb-link", "#sb-ris", "#sb-message"]) {
    $(id).addEventListener("click", () => { fillStatusDetails(); dlg.showModal(); });
  }
}

/* -- worklist ---------------------------------------------------------------- */
const fold = t => (t || "").normalize("NFD").replace(/[\u0300-\u036f]/g, "").toLowerCase();

function when(e) {
  if (!e.scheduled) return ["", ""];
  const d = new Date(e.scheduled), today = new Date();
  const time = e.scheduled.slice(11, 16);
  if (d.toDateString() === today.toDateString()) return [time, ""];
  return [time, d.toLocaleDateString("en-GB", { weekday: "short", day: "numeric", month: "short" })];
}

function initWorklist() {
  const root = $(".worklist-page"), myStation = root.dataset.station;
  let entries = [], view = null, pending = null, fromForm = false;
  let dates = "today", station = "mine";
  let listCount = null; // scheduled in the plain list for these dates/station
  const list = $("#wl-list"), note = $("#wl-note"), search = $("#wl-search");
  const confirmDlg = $("#dlg-confirm"), unschDlg = $("#dlg-unscheduled"), offDlg = $("#dlg-offline");
  closeButtons(confirmDlg); closeButtons(unschDlg); closeButtons(offDlg);

  function row(e) {
    const li = document.createElement("li");
    const b = el("button", "btn wl-entry"); b.type = "button";
    b.setAttribute("aria-label", `${e.patient.display_name}, ID ${e.patient_id}`);
    const main = el("span", "wl-main");
    const name = el("span", "wl-name", e.patient.display_name);
    if (e.performed) name.appendChild(el("span", "badge done", "done"));
    main.appendChild(name);
    const bits = [`ID ${e.patient_id}`, `born ${e.patient.birth_text}`, e.patient.sex_text];
    if (e.accession_number) bits.push(`Acc ${e.accession_number}`);
    if (e.procedure) bits.push(e.procedure);
    if (e.station && e.station !== myStation) bits.push(`station ${e.station}`);
    main.appendChild(el("span", "sub", bits.join(" · ")));
    const [time, day] = when(e);
    const side = el("span", "wl-when"); side.append(el("span", "", time)); if (day) side.append(el("span", "day", day));
    b.append(main, side);
    b.addEventListener("click", () => askConfirm({ worklist_key: e.key }, false));
    li.appendChild(b); return li;
  }

  function matches(e, words) {
    const hay = fold([e.patient.display_name, e.patient_id, e.accession_number, e.procedure].join(" "));
    return words.every(w => hay.includes(w));
  }

  // Typing filters what is on screen, at once; the RIS is asked only by Search.
  function show() {
    if (!view) return;
    const typed = search.value.trim();
    const words = fold(typed).split(/[\s,^]+/).filter(Boolean);
    const shown = view.text ? entries : entries.filter(e => matches(e, words));
    list.replaceChildren(...shown.map(row));
    const what = `${view.range_label}${view.station === "all" ? " · all stations" : ""}`;
    let heading;
    if (!view.configured) heading = "No worklist server";
    else if (view.text) heading = `“${view.text}” · ${what} · ${entries.length} found`;
    else if (words.length) heading = `${what} · ${shown.length} of ${entries.length} scheduled`;
    else heading = `${what} · ${entries.length} scheduled`;
    $("#wl-heading").textContent = heading;
    const bits = [];
    if (!view.configured) bits.push(view.error);
    else if (!shown.length) {
      const q = view.text || typed;
      if (q) {
        const n = view.text ? listCount : entries.length;
        bits.push(`No match for “${q}”` + (n !== null ? ` — ${n} scheduled` : "") +
          (view.text ? "." : ". Tap Search to ask the RIS (choose Any date or All stations to look further)."));
      } else bits.push(view.cached_at ? "Nothing in the cached list for these dates." : "Nothing scheduled for these dates.");
    }
    if (view.warnings && view.warnings.length && view.configured) bits.push(view.warnings.join("; "));
    note.textContent = bits.join(" ");
    const off = $("#wl-offline");
    off.hidden = !(view.configured && (view.cached_at || view.error));
    off.textContent = view.cached_at ? `Offline · list from ${view.cached_at.slice(11, 16)}` : "Offline";
    $("#wl-clear").hidden = !view.text;
  }

  async function load({ text = "", refresh = false } = {}) {
    note.textContent = "Loading…";
    try {
      const data = await api("POST", "/api/worklist/search", { text, dates, station, refresh });
      view = data; entries = data.entries;
      if (!text) listCount = entries.length;
      show();
    } catch (err) { note.textContent = err.message; }
  }

  function setDates(value) {
    dates = value; sessionStorage.setItem("wl-dates", value);
    $$(".chip[data-dates]").forEach(c => c.setAttribute("aria-pressed", String(c.dataset.dates === value)));
  }
  $$(".chip[data-dates]").forEach(c => tap(c, async () => {
    setDates(c.dataset.dates); listCount = null;
    await load({ text: view && view.text ? view.text : "" });
  }, { lock: true }));
  const stationBtn = $("#wl-station");
  function setStation(value) {
    station = value; stationBtn.dataset.station = value; sessionStorage.setItem("wl-station", value);
    stationBtn.textContent = value === "mine" ? `Station ${myStation}` : "All stations";
    stationBtn.setAttribute("aria-pressed", String(value === "all"));
  }
  // Back from an exam, the list is the one the technician had chosen.
  setStation(sessionStorage.getItem("wl-station") === "all" ? "all" : "mine");
  const keptDates = sessionStorage.getItem("wl-dates");
  if (["today", "around", "week", "any"].includes(keptDates)) setDates(keptDates);
  tap(stationBtn, async () => {
    setStation(station === "mine" ? "all" : "mine"); listCount = null;
    await load({ text: view && view.text ? view.text : "" });
  }, { lock: true });

  async function runSearch() {
    const text = search.value.trim();
    if (!text) { await load(); return; }
    if (listCount === null && !(view && view.text)) listCount = view && !view.text ? entries.length : null;
    await load({ text });
  }
  tap($("#wl-go"), runSearch, { lock: true });
  search.addEventListener("keydown", ev => { if (ev.key === "Enter") { ev.preventDefault(); $("#wl-go").click(); } });
  search.addEventListener("input", () => { if (view && !view.text) show(); });
  tap($("#wl-clear"), async () => { search.value = ""; await load(); }, { lock: true });
  tap($("#wl-refresh"), () => load({ text: view && view.text ? view.text : "", refresh: true }), { lock: true });
  $("#wl-offline").addEventListener("click", () => {
    const d = $("#offline-details");
    d.textContent = (view.cached_at ? `This list is from the cache, fetched at ${view.cached_at.replace("T", " ")}. ` : "") +
      (view.error || "") + " The gateway keeps trying and shows the live list once the RIS answers.";
    offDlg.showModal();
  });

  async function askConfirm(request, viaForm) {
    pending = request; fromForm = viaForm;
    let info;
    try { info = await api("POST", "/api/exams/check", request); }
    catch (err) {
      if (viaForm) { showFormErrors(err); unschDlg.showModal(); } else toast(err.message, true);
      return;
    }
    const box = $("#confirm-details");
    box.replaceChildren(patientBox(info.patient,
      { accession: info.accession_number, scheduled: !!request.worklist_key }));
    if (info.procedure || info.scheduled) {
      box.appendChild(el("p", "pbox-more", [info.procedure, info.scheduled ? `scheduled ${info.scheduled.replace("T", " ")}` : ""].filter(Boolean).join(" · ")));
    }
    const warn = $("#confirm-open"), resume = $("#confirm-resume");
    warn.hidden = !info.open_exam; resume.hidden = !info.open_exam;
    $("#confirm-start").disabled = !!info.open_exam;
    if (info.open_exam) {
      const o = info.open_exam;
      warn.textContent = `Another exam is open: ${o.patient.display_name} · ID ${o.patient.id}` +
        (o.accession_number ? ` · Acc ${o.accession_number}` : "") +
        `, started ${o.started.slice(11, 16)}. Finish or discontinue it first.`;
      resume.href = `/exam/${o.id}`;
    }
    $(".form-error", confirmDlg).textContent = "";
    confirmDlg.showModal();
  }

  tap($("#confirm-start"), async () => {
    try {
      const exam = await api("POST", "/api/exams", pending);
      $("#unsch-form").reset(); setSex("");
      location.href = `/exam/${exam.id}`;
    } catch (err) { $(".form-error", confirmDlg).textContent = err.message; }
  }, { lock: true });
  $("#confirm-back").addEventListener("click", () => {
    confirmDlg.close();
    if (fromForm) unschDlg.showModal(); // the form as it was typed
  });

  /* The unscheduled form: each field's problem next to it, in words, while
     typing and before Confirm (the server's rule decides on Continue). */
  const form = $("#unsch-form");
  let sex = "";
  function setSex(v) {
    sex = v;
    $$("#sex-group [data-sex]").forEach(b => b.setAttribute("aria-checked", String(b.dataset.sex === v)));
  }
  $$("#sex-group [data-sex]").forEach(b => b.addEventListener("click", () => setSex(b.dataset.sex)));
  function fieldError(name, text) {
    const span = $(`.field-error[data-for="${name}"]`, form);
    if (span) span.textContent = text || "";
    const input = form.elements[name];
    if (input && input.setAttribute) input.setAttribute("aria-invalid", text ? "true" : "false");
  }
  function clearErrors() { $$(".field-error", form).forEach(s => { s.textContent = ""; }); $(".form-error", form).textContent = ""; }
  function showFormErrors(err) {
    const fields = (err.data && err.data.fields) || {};
    for (const [k, v] of Object.entries(fields)) fieldError(k, v);
    $(".form-error", form).textContent = Object.keys(fields).length ? "Please correct the marked fields." : err.message;
  }
  function checkBirth(text) {
    if (!text) return "";
    const m = /^(\d{4})-?(\d{2})-?(\d{2})$/.exec(text);
    if (!m) return "Birth date: use YYYY-MM-DD";
    const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
    if (d.getFullYear() !== Number(m[1]) || d.getMonth() !== Number(m[2]) - 1 || d.getDate() !== Number(m[3])) return "Birth date: not a real date";
    const today = new Date(); today.setHours(23, 59, 59, 999);
    if (d > today) return "Birth date is in the future";
    if (d.getFullYear() < 1880) return "Birth date is before 1880";
    return "";
  }
  function checkForm(final) {
    const v = n => form.elements[n].value.trim();
    const problems = {};
    const family = v("family_name"), given = v("given_name"), total = family.length + (given ? given.length + 1 : 0);
    if (final && !family) problems.family_name = "Family name is needed";
    for (const n of ["family_name", "given_name"]) if (/[\\^=]/.test(v(n))) problems[n] = "A name may not contain \\, ^ or =";
    if (total > 64) problems.family_name = `Name is ${total} characters (family and given together); at most 64`;
    if (final && !v("id")) problems.id = "Patient ID is needed";
    if (v("id").length > 64) problems.id = `Patient ID is ${v("id").length} characters; at most 64`;
    if (v("id").includes("\\")) problems.id = "Patient ID may not contain \\";
    const born = checkBirth(v("birth_date")); if (born) problems.birth_date = born;
    return problems;
  }
  form.addEventListener("input", ev => {
    const name = ev.target.name;
    if (name === "birth_date") { // digits only: the dashes come by themselves
      const digits = ev.target.value.replace(/\D/g, "").slice(0, 8);
      const parts = [digits.slice(0, 4), digits.slice(4, 6), digits.slice(6, 8)].filter(Boolean);
      const formatted = parts.join("-");
      if (formatted !== ev.target.value && /^[\d-]*$/.test(ev.target.value)) ev.target.value = formatted;
    }
    $(".form-error", form).textContent = "";
    const live = checkForm(false);
    for (const n of ["family_name", "given_name", "id", "birth_date"]) {
      if (n === name || (n === "family_name" && name === "given_name")) fieldError(n, live[n]);
    }
  });
  $("#wl-unscheduled").addEventListener("click", () => { unschDlg.showModal(); });
  $("#unsch-clear").addEventListener("click", () => { form.reset(); setSex(""); clearErrors(); });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    clearErrors();
    const problems = checkForm(true);
    for (const [k, m] of Object.entries(problems)) fieldError(k, m);
    if (Object.keys(problems).length) { $(".form-error", form).textContent = "Please correct the marked fields."; return; }
    const v = n => form.elements[n].value.trim();
    const patient = { family_name: v("family_name"), given_name: v("given_name"), id: v("id"), sex };
    if (v("birth_date")) patient.birth_date = v("birth_date").replace(/^(\d{4})(\d{2})(\d{2})$/, "$1-$2-$3");
    unschDlg.close();
    await askConfirm({ patient }, true);
  });

  on("reconnect", () => load({ text: view && view.text ? view.text : "" }));
  let risWas = null;
  on("status", s => { // the RIS is back: show the live list without a tap
    const now = s.ris ? s.ris.state : null;
    if (risWas === "down" && now === "up") load({ text: view && view.text ? view.text : "" });
    risWas = now;
  });
  const done = sessionStorage.getItem("done");
  if (done) { sessionStorage.removeItem("done"); toast(done); }
  load();
}

/* -- exam ------------------------------------------------------------------------ */

/* The preview, read as MJPEG by the page itself (not an <img> left to the
   browser): each part carries its frame index, so a picture that stops
   moving is noticed and said, and the stream is reopened after a restart. */
class Preview {
  constructor(img, onState) {
    this.img = img; this.onState = onState;
    this.lastFrameAt = performance.now(); this.index = null; this.stalled = false;
    this.controller = null; this.generation = 0; this.url = null;
    setInterval(() => this.check(), 250);
  }
  check() {
    const idle = performance.now() - this.lastFrameAt;
    const stalled = idle > STALL_MS;
    if (stalled !== this.stalled) { this.stalled = stalled; this.onState(stalled, idle); }
    else if (stalled) this.onState(true, idle);
  }
  restart() {
    if (this.controller) this.controller.abort();
    this.start();
  }
  async start() {
    const gen = ++this.generation;
    const controller = this.controller = new AbortController();
    while (gen === this.generation) {
      try {
        const res = await fetch(`/api/preview.mjpg?t=${Date.now()}`, { signal: controller.signal, cache: "no-store", credentials: "same-origin" });
        if (!res.ok || !res.body) throw new Error(`preview ${res.status}`);
        await this.read(res.body.getReader(), gen);
      } catch (err) { if (controller.signal.aborted) return; }
      if (gen !== this.generation) return;
      await new Promise(r => setTimeout(r, 1000)); // the service may be restarting
    }
  }
  async read(reader, gen) {
    let buf = new Uint8Array(0);
    const append = chunk => { const n = new Uint8Array(buf.length + chunk.length); n.set(buf); n.set(chunk, buf.length); buf = n; };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== this.generation) return;
      append(value);
      for (;;) {
        const end = findHeaderEnd(buf); if (end < 0) break;
        const head = new TextDecoder().decode(buf.subarray(0, end));
        const len = Number((/Content-Length:\s*(\d+)/i.exec(head) || [])[1]);
        if (!len) { buf = buf.subarray(end + 4); continue; }
        if (buf.length < end + 4 + len) break;
        const jpeg = buf.slice(end + 4, end + 4 + len);
        buf = buf.subarray(end + 4 + len);
        this.index = Number((/X-Frame-Index:\s*(\d+)/i.exec(head) || [])[1]);
        this.show(jpeg);
      }
    }
  }
  show(jpeg) {
    const url = URL.createObjectURL(new Blob([jpeg], { type: "image/jpeg" }));
    const old = this.url; this.url = url;
    this.img.onload = () => { if (old) URL.revokeObjectURL(old); };
    this.img.src = url;
    this.img.dataset.frame = String(this.index);
    this.lastFrameAt = performance.now();
    if (this.stalled) this.check();
  }
}

function findHeaderEnd(buf) {
  for (let i = 0; i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

function mmss(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/* How a clip is shown in the review. Each view says whether it can show an
   object; the first that can is used, so a richer one (a <video> for an
   H.264 clip with a playable URL) goes in front of the frame strip. */
const CLIP_VIEWS = [
  {
    /* An H.264 clip plays in the browser's own player (the queued stream,
       remuxed to MP4 by the server); a browser that cannot play it, or a
       stream that fails to load, falls back to the frame strip. */
    name: "video",
    fits: obj => !!obj.video_url && !!document.createElement("video").canPlayType('video/mp4; codecs="avc1.640029"'),
    render(obj, box) {
      const v = el("video", "clip-video");
      v.setAttribute("aria-label", "Clip");
      Object.assign(v, { controls: true, autoplay: true, loop: true, muted: true, playsInline: true });
      let cleanup = () => { v.pause(); v.removeAttribute("src"); v.load(); };
      v.addEventListener("error", () => {
        cleanup();
        box.replaceChildren();
        const frames = CLIP_VIEWS.find(x => x.name === "frames");
        cleanup = frames.fits(obj) ? frames.render(obj, box) : CLIP_VIEWS[CLIP_VIEWS.length - 1].render(obj, box);
      }, { once: true });
      const seconds = obj.seconds || 0;
      const where = el("p", "clip-time");
      const paint = () => { where.textContent = `${Math.min(v.currentTime || 0, seconds).toFixed(1)} s / ${seconds.toFixed(1)} s · ${obj.frames} frames`; };
      v.addEventListener("timeupdate", paint);
      v.src = obj.video_url;
      paint();
      box.append(v, where);
      return () => cleanup();
    },
  },
  {
    name: "frames",
    fits: obj => obj.preview_urls && obj.preview_urls.length > 0,
    render(obj, box) {
      const img = el("img", "clip-frame"); img.alt = "Clip frame";
      const bar = el("div", "clip-bar");
      const play = el("button", "btn", "Pause"); play.type = "button";
      const where = el("span", "clip-time");
      const n = obj.preview_urls.length, seconds = obj.seconds || 0;
      const step = n > 1 ? Math.max(40, (seconds * 1000) / n) : 500;
      obj.preview_urls.forEach(u => { new Image().src = u; }); // loaded before they play
      let i = 0, timer = null;
      const paint = () => {
        img.src = obj.preview_urls[i];
        where.textContent = `${(seconds * i / Math.max(1, n)).toFixed(1)} s / ${seconds.toFixed(1)} s · ${obj.frames} frames`;
      };
      const run = () => { timer = setInterval(() => { i = (i + 1) % n; paint(); }, step); play.textContent = "Pause"; };
      const stop = () => { clearInterval(timer); timer = null; play.textContent = "Play"; };
      play.addEventListener("click", () => (timer ? stop() : run()));
      paint(); if (n > 1) run(); else play.hidden = true;
      bar.append(play, where); box.append(img, bar);
      return () => stop();
    },
  },
  {
    name: "still",
    fits: () => true,
    render(obj, box) {
      const img = el("img", "review-img"); img.alt = "Enlarged image"; img.src = obj.image_url;
      box.appendChild(img);
      if (obj.kind === "clip") box.appendChild(el("p", "clip-time", `Clip · ${(obj.seconds || 0).toFixed(1)} s · ${obj.frames} frames`));
      return () => {};
    },
  },
];

function initExam() {
  const root = $(".exam"), examId = root.dataset.exam;
  const base = `/api/exams/${examId}`;
  let exam = JSON.parse($("#exam-data").textContent);
  const thumbs = $("#thumbs"), reviewDlg = $("#dlg-review"), discDlg = $("#dlg-discontinue");
  const finishDlg = $("#dlg-finish"), wrongDlg = $("#dlg-wrong");
  [reviewDlg, discDlg, finishDlg, wrongDlg].forEach(closeButtons);
  const objects = new Map(); // id → object as the API describes it
  const deleting = new Map(); // id → timer of a delete that can still be undone
  let reviewing = null, stopReview = () => {};
  let ending = false; // this screen asked to finish/discontinue: it navigates itself
  let recording = exam.recording, recStartedAt = null, stalled = false;
  const capture = $("#btn-capture"), record = $("#btn-record"), saveLast = $("#btn-save-last");

  $("#exam-patient").replaceChildren(
    patientBox(exam.patient,
      { accession: exam.accession_number, procedure: exam.procedure, scheduled: exam.scheduled }));

  buttonRules = () => {
    capture.disabled = stalled || busy.has(capture);
    saveLast.disabled = stalled || busy.has(saveLast);
    record.disabled = busy.has(record) || (stalled && !recording);
  };

  const preview = new Preview($("#preview"), (isStalled, idle) => {
    stalled = isStalled;
    $("#stalled").hidden = !isStalled;
    $("#stalled-for").textContent = String(Math.floor(idle / 1000));
    updateButtons();
  });
  preview.start();

  function flash() {
    const f = $("#flash"); f.classList.remove("on"); void f.offsetWidth; f.classList.add("on");
  }
  function counts() {
    let images = 0, clips = 0;
    for (const [id, o] of objects) { if (deleting.has(id)) continue; if (o.kind === "clip") clips++; else images++; }
    return { images, clips };
  }
  function showCounts() {
    const c = counts();
    const parts = [];
    if (c.images) parts.push(`${c.images} image${c.images === 1 ? "" : "s"}`);
    if (c.clips) parts.push(`${c.clips} clip${c.clips === 1 ? "" : "s"}`);
    $("#counts").textContent = parts.length ? parts.join(" · ") : "No images yet";
  }
  function addThumb(obj) {
    objects.set(obj.id, obj);
    if (!$(`.thumb[data-id="${obj.id}"]`)) {
      const li = document.createElement("li");
      const b = el("button", "thumb"); b.type = "button";
      b.dataset.id = obj.id; b.dataset.kind = obj.kind;
      b.setAttribute("aria-label", `${obj.kind === "clip" ? "Clip" : "Image"} ${thumbs.children.length + 1}`);
      const img = document.createElement("img"); img.src = obj.thumb_url; img.alt = "";
      b.appendChild(img);
      if (obj.kind === "clip") b.appendChild(el("span", "thumb-len", `▶ ${(obj.seconds || 0).toFixed(1)} s`));
      li.appendChild(b); thumbs.appendChild(li);
      thumbs.scrollLeft = thumbs.scrollWidth;
    }
    showCounts();
  }
  function removeThumb(id) {
    objects.delete(id);
    const b = $(`.thumb[data-id="${id}"]`); if (b) b.parentElement.remove();
    showCounts();
  }
  function setRecording(on, elapsed = 0) {
    recording = on;
    record.setAttribute("aria-pressed", on ? "true" : "false");
    record.textContent = on ? "Stop recording" : "Record";
    $("#rec-badge").hidden = !on;
    recStartedAt = on ? performance.now() - elapsed * 1000 : null;
    updateButtons();
  }
  setInterval(() => {
    if (recStartedAt === null) return;
    const s = Math.min((performance.now() - recStartedAt) / 1000, exam.record_limit);
    $("#rec-time").textContent = mmss(s);
  }, 250);

  function sync(described) { // the exam as the server has it now
    exam = described;
    const ids = new Set(described.objects.map(o => o.id));
    for (const id of Array.from(objects.keys())) if (!ids.has(id)) removeThumb(id);
    described.objects.forEach(addThumb);
    setRecording(described.recording, described.recording_seconds || 0);
  }
  sync(exam);

  thumbs.addEventListener("click", ev => {
    const b = ev.target.closest(".thumb"); if (!b) return;
    reviewing = Number(b.dataset.id);
    const obj = objects.get(reviewing);
    const box = $("#review-media"); box.replaceChildren();
    const view = obj.kind === "clip" ? CLIP_VIEWS.find(v => v.fits(obj)) : CLIP_VIEWS[CLIP_VIEWS.length - 1];
    stopReview = view.render(obj, box);
    $("#review-title").textContent = b.getAttribute("aria-label") + (obj.kind === "clip" ? ` · ${(obj.seconds || 0).toFixed(1)} s` : "");
    reviewDlg.showModal();
  });
  reviewDlg.addEventListener("close", () => { stopReview(); stopReview = () => {}; });

  /* Delete waits 5 s for an Undo; Finish and Discontinue carry out the
     deletes still waiting first. */
  async function commitDelete(id) {
    clearTimeout(deleting.get(id));
    try { await api("DELETE", `${base}/objects/${id}`); deleting.delete(id); removeThumb(id); }
    catch (err) {
      deleting.delete(id);
      const b = $(`.thumb[data-id="${id}"]`); if (b) b.parentElement.hidden = false;
      if (err.status !== 404) toast(`Not deleted: ${err.message}`, true);
      showCounts();
    }
  }
  async function flushDeletes() { for (const id of Array.from(deleting.keys())) await commitDelete(id); }
  tap($("#review-delete"), () => {
    const id = reviewing, b = $(`.thumb[data-id="${id}"]`);
    const label = b ? b.getAttribute("aria-label") : "Image";
    reviewDlg.close();
    if (b) b.parentElement.hidden = true;
    deleting.set(id, setTimeout(() => commitDelete(id), 5000));
    showCounts();
    toast(`${label} deleted`, false, {
      label: "Undo", ms: 5000,
      run: () => { clearTimeout(deleting.get(id)); deleting.delete(id); if (b) b.parentElement.hidden = false; showCounts(); },
    });
  });

  tap(capture, async () => {
    flash();
    try { addThumb(await api("POST", `${base}/capture`)); }
    catch (err) { toast(err.message, true); }
  });
  tap(record, async () => {
    try {
      if (recording) {
        setRecording(false);
        const clip = await api("POST", `${base}/record/stop`);
        addThumb(clip); toast(`Clip saved · ${(clip.seconds || 0).toFixed(1)} s`);
      } else { await api("POST", `${base}/record/start`); setRecording(true); }
    } catch (err) { toast(err.message, true); }
  }, { lock: true });
  tap(saveLast, async () => {
    const asked = Number(saveLast.dataset.seconds);
    try {
      const clip = await api("POST", `${base}/save-last`);
      addThumb(clip);
      const got = clip.seconds || 0;
      toast(got + 0.5 < asked ? `Saved ${got.toFixed(1)} s — only what was filmed since this exam started`
        : `Last ${got.toFixed(1)} s saved`);
    } catch (err) { toast(err.message, true); }
  }, { lock: true });

  async function finish() {
    ending = true;
    try {
      await flushDeletes();
      const r = await api("POST", `${base}/finish`);
      sessionStorage.setItem("done", `Exam finished — ${r.queued} object(s) queued for the PACS`);
      location.href = "/";
    } catch (err) { ending = false; toast(err.message, true); }
  }
  tap($("#btn-finish"), async () => {
    const c = counts();
    if (!c.images && !c.clips) { finishDlg.showModal(); return; }
    await finish();
  }, { lock: true });
  tap($("#finish-empty"), async () => { finishDlg.close(); await finish(); }, { lock: true });

  let reason = "";
  $$(".reason", discDlg).forEach(b => b.addEventListener("click", () => {
    $$(".reason", discDlg).forEach(x => x.setAttribute("aria-pressed", "false"));
    b.setAttribute("aria-pressed", "true"); reason = b.dataset.reason; $("#disc-other").value = "";
    $(".form-error", discDlg).textContent = ""; $('.field-error[data-for="reason"]', discDlg).textContent = "";
  }));
  $("#disc-other").addEventListener("input", () => {
    $$(".reason", discDlg).forEach(x => x.setAttribute("aria-pressed", "false")); reason = "";
    const n = $("#disc-other").value.trim().length;
    $('.field-error[data-for="reason"]', discDlg).textContent = n > 64 ? `Reason is ${n} characters; at most 64` : "";
    $(".form-error", discDlg).textContent = "";
  });
  $("#btn-discontinue").addEventListener("click", () => {
    reason = ""; $("#disc-other").value = "";
    $$(".reason", discDlg).forEach(x => x.setAttribute("aria-pressed", "false"));
    $(".form-error", discDlg).textContent = "";
    discDlg.showModal();
  });
  async function discontinue(text, images) {
    ending = true;
    const body = { reason: text }; if (images) body.images = images;
    const r = await api("POST", `${base}/discontinue`, body);
    const what = images === "delete" ? "images deleted, nothing sent" : `${r.queued} object(s) queued`;
    sessionStorage.setItem("done", `Exam discontinued — ${what}`);
    location.href = "/";
  }
  let wrongReason = "";
  tap($("#disc-confirm"), async () => {
    const text = $("#disc-other").value.trim() || reason;
    if (!text) { $('.field-error[data-for="reason"]', discDlg).textContent = "Choose or type a reason"; return; }
    if (text.length > 64) return;
    try {
      await flushDeletes();
      await discontinue(text);
    } catch (err) {
      ending = false;
      if (err.data.code === "confirm_images") {
        // The images show someone else: nothing is sent until this is answered.
        wrongReason = text;
        const c = counts(), n = err.data.held;
        const what = [c.images ? `${c.images} image${c.images === 1 ? "" : "s"}` : "",
          c.clips ? `${c.clips} clip${c.clips === 1 ? "" : "s"}` : ""].filter(Boolean).join(" and ") || `${n} images`;
        $("#wrong-text").textContent = `${what} ${n === 1 ? "was" : "were"} taken under ${exam.patient.display_name} (ID ${exam.patient.id}). ` +
          "Nothing is sent yet: delete them, or send them anyway under this patient.";
        $("#wrong-delete").textContent = `Delete ${what}`;
        $(".form-error", wrongDlg).textContent = "";
        discDlg.close(); wrongDlg.showModal();
      } else $(".form-error", discDlg).textContent = err.message;
    }
  }, { lock: true });
  for (const [id, choice] of [["#wrong-delete", "delete"], ["#wrong-send", "send"]]) {
    tap($(id), async () => {
      try { await discontinue(wrongReason, choice); }
      catch (err) { ending = false; $(".form-error", wrongDlg).textContent = err.message; }
    }, { lock: true });
  }

  on("object", e => { if (e.exam === examId) addThumb(e.object); });
  on("deleted", e => { if (e.exam === examId) removeThumb(e.object); });
  on("recording", e => { if (e.exam === examId && e.on !== recording) setRecording(e.on); });
  on("record_limit", e => {
    if (e.exam === examId) toast("Recording limit reached — tap Stop recording to save the clip", true);
  });
  on("pedal", e => {
    if (e.ok && e.action === "capture") flash();
    toast(e.ok ? `Pedal: ${e.action}` : `Pedal: ${e.message}`, !e.ok);
  });
  on("exam", e => {
    if (ending || e.exam !== examId || !["completed", "discontinued"].includes(e.kind)) return;
    sessionStorage.setItem("done", `This exam was ${e.kind} from another screen`);
    location.href = "/";
  });
  on("reconnect", async () => {
    preview.restart();
    try { sync(await api("GET", base)); }
    catch (err) {
      if (err.status === 404) {
        sessionStorage.setItem("done", "This exam is no longer open on the gateway");
        location.href = "/";
      }
    }
  });
}

/* -- settings ------------------------------------------------------------------------ */
function initSettings() {
  const pinForm = $("#pin-form"), form = $("#settings-form"), pin = $("#pin-input");
  const pinError = $("#pin-error");
  let pinSet = true, pinMin = 6, origCapture = {}, origWorklist = {}, waitTimer = null;
  function fill(fieldset, data) {
    for (const input of $$("input, select", fieldset)) {
      const v = ["ca", "cert", "key"].includes(input.name) ? (data.tls || {})[input.name] : data[input.name];
      if (input.type === "checkbox") input.checked = !!v; else input.value = v ?? "";
    }
  }
  /* What the fields say, over what the file held (keys the screen does not
     show, such as a DICOMweb destination's http_auth, are kept as they were). */
  function read(fieldset, original = {}) {
    const out = Object.assign({}, original), tls = Object.assign({}, original.tls || {});
    for (const input of $$("input, select", fieldset)) {
      if (input.closest(".dimse-only[hidden], .stow-only[hidden]")) continue; // another kind
      const v = input.type === "checkbox" ? input.checked : input.value.trim();
      if (["ca", "cert", "key"].includes(input.name)) { if (v) tls[input.name] = v; else delete tls[input.name]; }
      else if (input.name === "port") out.port = /^\d+$/.test(v) ? Number(v) : v;
      else out[input.name] = v;
    }
    if (Object.keys(tls).length) out.tls = tls; else delete out.tls;
    return out;
  }
  function showTab(id) {
    $$(".tab", form).forEach(t => t.setAttribute("aria-selected", String(t.dataset.tab === id)));
    $$("section[role=tabpanel]", form).forEach(s => { s.hidden = s.id !== id; });
  }
  $$(".tab", form).forEach(t => t.addEventListener("click", () => showTab(t.dataset.tab)));
  function renumber() {
    $$(".dest", form).forEach((d, i) => { d.dataset.path = `destinations.${i}`; $(".dest-title", d).textContent = `Destination ${i + 1}`; });
  }
  const original = new WeakMap(); // destination fieldset → what the file held
  function addDest(data) {
    const node = $("#dest-template").content.firstElementChild.cloneNode(true);
    const stow = (data || {}).protocol === "stow-rs";
    $(".dimse-only", node).hidden = stow; $(".stow-only", node).hidden = !stow;
    original.set(node, data || {});
    fill(node, data || {});
    $(".remove-dest", node).addEventListener("click", () => { node.remove(); renumber(); });
    tap($(".test-conn", node), async () => {
      const out = $(".echo-result", node); out.className = "echo-result"; out.textContent = "Testing…";
      try {
        const r = await api("POST", "/api/settings/echo", { name: $("input[name=name]", node).value.trim() });
        out.className = "echo-result " + (r.ok ? "ok" : "fail");
        out.textContent = r.ok ? `Connected: ${r.detail} (${r.seconds.toFixed(2)} s)` : `Failed: ${r.detail}`;
      } catch (err) { out.className = "echo-result fail"; out.textContent = err.message; }
    }, { lock: true });
    $("#dest-list").appendChild(node);
    renumber();
  }
  function clearErrors() {
    $$(".field-error", form).forEach(s => { s.textContent = ""; });
    $$("[aria-invalid=true]", form).forEach(i => i.setAttribute("aria-invalid", "false"));
    $$(".tab", form).forEach(t => t.classList.remove("has-error"));
    const top = $("#settings-problems"); top.hidden = true; top.textContent = "";
  }
  function showErrors(err) {
    const top = $("#settings-problems");
    top.hidden = false; top.textContent = err.message;
    let first = null;
    for (const [path, message] of Object.entries((err.data && err.data.fields) || {})) {
      const parts = path.split(".");
      const name = parts[parts.length - 1] === "tls" ? "ca" : parts[parts.length - 1];
      const scope = parts[0] === "destinations" ? $(`.dest[data-path="destinations.${parts[1]}"]`, form)
        : $(`fieldset[data-path="${parts[0]}"]`, form);
      if (!scope) continue;
      const span = $(`.field-error[data-for="${name}"]`, scope);
      if (!span) continue;
      span.textContent = message;
      const input = $(`[name="${name}"]`, scope); if (input) input.setAttribute("aria-invalid", "true");
      const panel = scope.closest("section[role=tabpanel]");
      const tab = $(`.tab[data-tab="${panel.id}"]`, form); tab.classList.add("has-error");
      if (!first) first = { panel, input };
    }
    if (first) { showTab(first.panel.id); if (first.input) first.input.scrollIntoView({ block: "center" }); }
  }
  form.addEventListener("input", ev => { // a fixed field loses its message
    const span = ev.target.closest(".field") && $(".field-error", ev.target.closest(".field"));
    if (span) span.textContent = "";
    ev.target.setAttribute("aria-invalid", "false");
  });
  async function open() {
    const s = await api("GET", "/api/settings");
    pinForm.hidden = true; form.hidden = false; $("#set-lock").hidden = false;
    $("#dest-list").replaceChildren();
    (s.destinations || []).forEach(addDest);
    origWorklist = s.worklist || {};
    fill($("#wl-fields"), origWorklist);
    origCapture = s.capture || {};
    fill($("#cap-fields"), origCapture);
    showTab("sec-dest");
  }
  async function start() {
    const sess = await api("GET", "/api/session");
    pinSet = sess.pin_set; pinMin = sess.pin_min_length || 6;
    if (sess.settings_unlocked) return open();
    pinForm.hidden = false; form.hidden = true;
    $("#pin-prompt").textContent = pinSet ? "Enter the PIN to open the settings." : `No PIN yet: choose a PIN (${pinMin} to 12 digits).`;
    pin.focus();
  }
  function lockPad(seconds) {
    clearInterval(waitTimer);
    let left = seconds;
    const keys = $$(".key", pinForm);
    const tick = () => {
      if (left <= 0) { clearInterval(waitTimer); keys.forEach(k => { k.disabled = false; }); pinError.textContent = "Try again now."; return; }
      keys.forEach(k => { k.disabled = true; });
      pinError.textContent = `Too many wrong PINs — try again in ${left} s`;
      left -= 1;
    };
    tick(); waitTimer = setInterval(tick, 1000);
  }
  async function submitPin() {
    pinError.textContent = "";
    try {
      await api("POST", pinSet ? "/api/pin/unlock" : "/api/pin/setup", { pin: pin.value });
      pin.value = ""; await open();
    } catch (e) {
      pin.value = "";
      const d = e.data || {};
      if (d.wait_seconds) lockPad(d.wait_seconds);
      else if (d.tries_left !== undefined) pinError.textContent = `Wrong PIN — ${d.tries_left} ${d.tries_left === 1 ? "try" : "tries"} left before a wait`;
      else pinError.textContent = e.message;
    }
  }
  $$(".key", pinForm).forEach(k => k.addEventListener("click", () => {
    const d = k.dataset.key;
    if (d === "OK") submitPin(); else if (d === "⌫") pin.value = pin.value.slice(0, -1); else pin.value += d;
  }));
  pinForm.addEventListener("submit", ev => { ev.preventDefault(); submitPin(); });
  $("#dest-add").addEventListener("click", () => addDest({}));
  $("#set-lock").addEventListener("click", async () => { await api("POST", "/api/pin/lock"); location.href = "/"; });
  tap($("#pin-change"), async () => {
    const span = $('.field-error[data-for="new_pin"]', form); span.textContent = "";
    try { await api("POST", "/api/pin/setup", { pin: $("#new-pin").value }); $("#new-pin").value = ""; toast("PIN changed"); }
    catch (e) { span.textContent = e.message[0].toUpperCase() + e.message.slice(1); }
  }, { lock: true });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    clearErrors();
    const wl = read($("#wl-fields"), origWorklist);
    const body = {
      destinations: $$(".dest", form).map(d => read(d, original.get(d))),
      worklist: wl.host ? wl : null,
      capture: Object.assign({}, origCapture, read($("#cap-fields"))),
    };
    try {
      await api("PUT", "/api/settings", body);
      $("#settings-note").textContent = "Saved. Restart the gateway to apply; nothing queued is lost.";
    } catch (e) { showErrors(e); }
  });
  start().catch(e => toast(e.message, true));
}

function initLogin() {
  const f = $("#login-form");
  f.addEventListener("submit", async ev => {
    ev.preventDefault();
    try { await api("POST", "/api/login", { pin: $("#login-pin").value }); location.href = "/"; }
    catch (e) {
      // The same words as the settings PIN pad: tries left, or the wait.
      const d = e.data || {};
      $("#login-pin").value = "";
      $(".form-error", f).textContent = d.wait_seconds ? `Too many wrong PINs — try again in ${d.wait_seconds} s`
        : d.tries_left !== undefined ? `Wrong PIN — ${d.tries_left} ${d.tries_left === 1 ? "try" : "tries"} left before a wait`
        : e.message;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  initStatusBar();
  if (page !== "login") connectEvents();
  ({ worklist: initWorklist, exam: initExam, settings: initSettings, login: initLogin }[page] || (() => {}))();
});
