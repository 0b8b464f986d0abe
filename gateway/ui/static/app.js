/* The touchscreen's behaviour: every action goes through the JSON API with the
   CSRF token; the status bar and exam events arrive over Server-Sent Events. */
"use strict";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

async function api(method, path, body) {
  const opts = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let res;
  try { res = await fetch(path, opts); } catch (e) { throw new Error("The gateway is not answering"); }
  let data = {};
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) throw new Error(data.error || `failed (${res.status})`);
  return data;
}

let toastTimer = null;
function toast(text, error = false) {
  const t = $("#toast");
  t.textContent = text; t.className = error ? "error" : ""; t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, error ? 6000 : 2500);
}

function closeButtons(dialog) {
  $$("[data-close]", dialog).forEach(b => b.addEventListener("click", () => dialog.close()));
}

/* -- status bar ------------------------------------------------------------ */
function showStatus(s) {
  $("#sb-clock").textContent = s.clock.text;
  const q = s.queue;
  $("#sb-queue").textContent = `Queue: ${q.pending} waiting · ${q.sent} sent · ${q.failed} failed`;
  const link = $("#sb-link");
  const down = s.links.filter(l => l.state === "down");
  const up = s.links.length && s.links.every(l => l.state === "up");
  link.className = "sb-item pill " + (down.length ? "down" : up ? "up" : "");
  link.textContent = down.length ? "PACS down" : up ? "PACS OK" : (s.links.length ? "PACS idle" : "No PACS");
  $("#sb-disk").textContent = s.disk.free_mb >= 0 ? `${(s.disk.free_mb / 1024).toFixed(1)} GB free` : "";
  const msg = $("#sb-message");
  const first = s.messages.find(m => m.level === "error") || s.messages.find(m => m.level === "warning");
  msg.hidden = !first;
  if (first) {
    const more = s.messages.length > 1 ? ` (+${s.messages.length - 1} more)` : "";
    msg.textContent = first.text + more; msg.className = "sb-msg " + first.level;
    msg.title = s.messages.map(m => m.text).join("\n");
  }
}

const handlers = {};
function on(type, fn) { (handlers[type] = handlers[type] || []).push(fn); }
function connectEvents() {
  const es = new EventSource("/api/events");
  es.addEventListener("status", e => showStatus(JSON.parse(e.data)));
  for (const type of ["object", "deleted", "recording", "record_limit", "pedal", "exam"]) {
    es.addEventListener(type, e => (handlers[type] || []).forEach(fn => fn(JSON.parse(e.data))));
  }
  // Said on every screen: e.g. images a serial device sent with no exam open.
  es.addEventListener("notice", e => toast(JSON.parse(e.data).text));
  es.onerror = () => {
    const msg = $("#sb-message");
    msg.hidden = false;
    msg.textContent = "Lost contact with the gateway — reconnecting…"; msg.className = "sb-msg error";
  };
}

/* -- worklist ---------------------------------------------------------------- */
function personName(pn) {
  const [family, given] = (pn || "").split("=")[0].split("^");
  return given ? `${family}, ${given}` : family;
}

function initWorklist() {
  let entries = [];
  let pending = null; // what "Start exam" will start
  const list = $("#wl-list"), note = $("#wl-note");
  const confirmDlg = $("#dlg-confirm"), unschDlg = $("#dlg-unscheduled");
  closeButtons(confirmDlg); closeButtons(unschDlg);

  function render(data) {
    entries = data.entries;
    note.className = "note" + (data.cached_at ? " offline" : "");
    const bits = [];
    if (data.cached_at) bits.push(`Offline — worklist cached at ${data.cached_at.replace("T", " ")}`);
    if (data.error && !data.cached_at) bits.push(data.error);
    else if (data.error) bits.push(`(${data.error})`);
    if (data.configured && !entries.length) bits.push("No entries for today.");
    note.textContent = bits.join(" ");
    list.replaceChildren(...entries.map(e => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button"; b.className = "btn";
      b.setAttribute("aria-label", `${personName(e.patient_name)}, ID ${e.patient_id}`);
      const when = e.scheduled ? e.scheduled.slice(11, 16) : "";
      b.innerHTML = "<span></span><span></span>";
      b.children[0].textContent = personName(e.patient_name);
      const sub = document.createElement("div"); sub.className = "sub";
      sub.textContent = `ID ${e.patient_id} · ${e.procedure || ""} ${e.accession_number ? "· Acc " + e.accession_number : ""}${e.performed ? " · done" : ""}`;
      b.children[0].appendChild(sub);
      b.children[1].textContent = when;
      b.addEventListener("click", () => askConfirm({ worklist_key: e.key }, e));
      li.appendChild(b); return li;
    }));
  }

  async function load(refresh) {
    note.textContent = "Loading…";
    try {
      const text = $("#wl-search").value.trim();
      render(await api("POST", "/api/worklist/search", { text, refresh }));
    } catch (err) { note.textContent = err.message; }
  }

  function askConfirm(request, shown) {
    pending = request;
    const rows = [["Name", personName(shown.patient_name)], ["Patient ID", shown.patient_id],
      ["Birth date", shown.birth_date || "—"], ["Sex", shown.sex || "—"]];
    if (shown.accession_number) rows.push(["Accession", shown.accession_number]);
    if (shown.procedure) rows.push(["Procedure", shown.procedure]);
    const dl = $("#confirm-details"); dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      dl.append(dt, dd);
    }
    $(".form-error", confirmDlg).textContent = "";
    confirmDlg.showModal();
  }

  $("#confirm-start").addEventListener("click", async () => {
    try {
      const exam = await api("POST", "/api/exams", pending);
      location.href = `/exam/${exam.id}`;
    } catch (err) { $(".form-error", confirmDlg).textContent = err.message; }
  });

  $("#wl-unscheduled").addEventListener("click", () => {
    $("#unsch-form").reset(); $(".form-error", unschDlg).textContent = ""; unschDlg.showModal();
  });
  $("#unsch-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const patient = { family_name: f.get("family_name").trim(), given_name: f.get("given_name").trim(),
      id: f.get("id").trim(), sex: f.get("sex") };
    if (f.get("birth_date")) patient.birth_date = f.get("birth_date");
    if (!patient.family_name || !patient.id) {
      $(".form-error", unschDlg).textContent = "Family name and patient ID are needed"; return;
    }
    unschDlg.close();
    askConfirm({ patient }, { patient_name: patient.family_name + (patient.given_name ? "^" + patient.given_name : ""),
      patient_id: patient.id, birth_date: patient.birth_date, sex: patient.sex });
  });
  $("#wl-refresh").addEventListener("click", () => load(true));
  let timer = null;
  $("#wl-search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => load(false), 300); });
  const done = sessionStorage.getItem("done");
  if (done) { sessionStorage.removeItem("done"); toast(done); }
  load(false);
}

/* -- exam ------------------------------------------------------------------------ */
function initExam() {
  const root = $(".exam"), examId = root.dataset.exam;
  const base = `/api/exams/${examId}`;
  const thumbs = $("#thumbs"), reviewDlg = $("#dlg-review"), discDlg = $("#dlg-discontinue");
  closeButtons(reviewDlg); closeButtons(discDlg);
  let reviewing = null;
  let ending = false; // this screen asked to finish/discontinue: it navigates itself

  function flash() {
    const f = $("#flash"); f.classList.remove("on"); void f.offsetWidth; f.classList.add("on");
  }
  function addThumb(obj) {
    if ($(`.thumb[data-id="${obj.id}"]`)) return;
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.className = "thumb"; b.dataset.id = obj.id; b.dataset.kind = obj.kind;
    b.setAttribute("aria-label", `${obj.kind === "clip" ? "Clip" : "Image"} ${thumbs.children.length + 1}`);
    const img = document.createElement("img"); img.src = obj.thumb_url; img.alt = "";
    b.appendChild(img); li.appendChild(b); thumbs.appendChild(li);
    thumbs.scrollLeft = thumbs.scrollWidth;
  }
  function setRecording(on) {
    const b = $("#btn-record");
    b.setAttribute("aria-pressed", on ? "true" : "false");
    b.textContent = on ? "Stop recording" : "Record";
    $("#rec-badge").hidden = !on;
  }
  setRecording($("#btn-record").getAttribute("aria-pressed") === "true");

  thumbs.addEventListener("click", ev => {
    const b = ev.target.closest(".thumb"); if (!b) return;
    reviewing = b.dataset.id;
    $("#review-img").src = `${base}/objects/${reviewing}/image.jpg`;
    reviewDlg.showModal();
  });
  $("#review-delete").addEventListener("click", async () => {
    try {
      await api("DELETE", `${base}/objects/${reviewing}`);
      const b = $(`.thumb[data-id="${reviewing}"]`); if (b) b.parentElement.remove();
      reviewDlg.close(); toast("Deleted");
    } catch (err) { toast(err.message, true); }
  });

  $("#btn-capture").addEventListener("click", async () => {
    flash();
    try { addThumb(await api("POST", `${base}/capture`)); }
    catch (err) { toast(err.message, true); }
  });
  $("#btn-record").addEventListener("click", async () => {
    const on = $("#btn-record").getAttribute("aria-pressed") === "true";
    try {
      if (on) { setRecording(false); addThumb(await api("POST", `${base}/record/stop`)); toast("Clip saved"); }
      else { await api("POST", `${base}/record/start`); setRecording(true); }
    } catch (err) { toast(err.message, true); }
  });
  $("#btn-save-last").addEventListener("click", async () => {
    const seconds = $("#btn-save-last").dataset.seconds;
    try { addThumb(await api("POST", `${base}/save-last`)); toast(`Last ${seconds} s saved`); }
    catch (err) { toast(err.message, true); }
  });
  $("#btn-finish").addEventListener("click", async () => {
    ending = true;
    try {
      const r = await api("POST", `${base}/finish`);
      sessionStorage.setItem("done", `Exam finished — ${r.queued} object(s) queued for the PACS`);
      location.href = "/";
    } catch (err) { ending = false; toast(err.message, true); }
  });
  let reason = "";
  $$(".reason", discDlg).forEach(b => b.addEventListener("click", () => {
    $$(".reason", discDlg).forEach(x => x.setAttribute("aria-pressed", "false"));
    b.setAttribute("aria-pressed", "true"); reason = b.textContent; $("#disc-other").value = "";
    $(".form-error", discDlg).textContent = "";
  }));
  $("#btn-discontinue").addEventListener("click", () => { reason = ""; discDlg.showModal(); });
  $("#disc-confirm").addEventListener("click", async () => {
    const text = $("#disc-other").value.trim() || reason;
    if (!text) { $(".form-error", discDlg).textContent = "Choose or type a reason"; return; }
    ending = true;
    try {
      const r = await api("POST", `${base}/discontinue`, { reason: text });
      sessionStorage.setItem("done", `Exam discontinued — ${r.queued} object(s) queued`);
      location.href = "/";
    } catch (err) { ending = false; $(".form-error", discDlg).textContent = err.message; }
  });

  on("object", e => { if (e.exam === examId) addThumb(e.object); });
  on("deleted", e => {
    const b = $(`.thumb[data-id="${e.object}"]`); if (e.exam === examId && b) b.parentElement.remove();
  });
  on("recording", e => { if (e.exam === examId) setRecording(e.on); });
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
}

/* -- settings ------------------------------------------------------------------------ */
function initSettings() {
  const pinForm = $("#pin-form"), form = $("#settings-form"), pin = $("#pin-input");
  let pinSet = true, origCapture = {};
  function fill(fieldset, data) {
    for (const input of $$("input, select", fieldset)) {
      const v = ["ca", "cert", "key"].includes(input.name) ? (data.tls || {})[input.name] : data[input.name];
      if (input.type === "checkbox") input.checked = !!v; else input.value = v ?? "";
    }
  }
  function read(fieldset) {
    const out = {}, tls = {};
    for (const input of $$("input, select", fieldset)) {
      const v = input.type === "checkbox" ? input.checked : input.value.trim();
      if (["ca", "cert", "key"].includes(input.name)) { if (v) tls[input.name] = v; }
      else if (input.name === "port") out.port = /^\d+$/.test(v) ? Number(v) : v;
      else out[input.name] = v;
    }
    if (Object.keys(tls).length) out.tls = tls;
    return out;
  }
  function addDest(data) {
    const node = $("#dest-template").content.firstElementChild.cloneNode(true);
    fill(node, data || {});
    $(".remove-dest", node).addEventListener("click", () => node.remove());
    $(".test-conn", node).addEventListener("click", async () => {
      const out = $(".echo-result", node); out.className = "echo-result"; out.textContent = "Testing…";
      try {
        const r = await api("POST", "/api/settings/echo", { name: $("input[name=name]", node).value.trim() });
        out.className = "echo-result " + (r.ok ? "ok" : "fail");
        out.textContent = r.ok ? `Connected: ${r.detail} (${r.seconds.toFixed(2)} s)` : `Failed: ${r.detail}`;
      } catch (err) { out.className = "echo-result fail"; out.textContent = err.message; }
    });
    $("#dest-list").appendChild(node);
  }
  async function open() {
    const s = await api("GET", "/api/settings");
    pinForm.hidden = true; form.hidden = false; $("#set-lock").hidden = false;
    $("#dest-list").replaceChildren();
    (s.destinations || []).forEach(addDest);
    fill($("#wl-fields"), s.worklist || {});
    origCapture = s.capture || {};
    fill($("#cap-fields"), origCapture);
  }
  async function start() {
    const sess = await api("GET", "/api/session");
    pinSet = sess.pin_set;
    if (sess.settings_unlocked) return open();
    pinForm.hidden = false; form.hidden = true;
    $("#pin-prompt").textContent = pinSet ? "Enter the PIN to open the settings." : "No PIN yet: choose a PIN (4 to 12 digits).";
    pin.focus();
  }
  async function submitPin() {
    const err = $(".form-error", pinForm); err.textContent = "";
    try {
      await api("POST", pinSet ? "/api/pin/unlock" : "/api/pin/setup", { pin: pin.value });
      pin.value = ""; await open();
    } catch (e) { err.textContent = e.message; pin.value = ""; }
  }
  $$(".key", pinForm).forEach(k => k.addEventListener("click", () => {
    const d = k.dataset.key;
    if (d === "OK") submitPin(); else if (d === "⌫") pin.value = pin.value.slice(0, -1); else pin.value += d;
  }));
  pinForm.addEventListener("submit", ev => { ev.preventDefault(); submitPin(); });
  $("#dest-add").addEventListener("click", () => addDest({}));
  $("#set-lock").addEventListener("click", async () => { await api("POST", "/api/pin/lock"); location.href = "/"; });
  $("#pin-change").addEventListener("click", async () => {
    try { await api("POST", "/api/pin/setup", { pin: $("#new-pin").value }); $("#new-pin").value = ""; toast("PIN changed"); }
    catch (e) { toast(e.message, true); }
  });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const err = $(".form-error", form); err.textContent = "";
    const wl = read($("#wl-fields"));
    const body = {
      destinations: $$(".dest", form).map(read),
      worklist: wl.host ? wl : null,
      capture: Object.assign({}, origCapture, read($("#cap-fields"))),
    };
    try {
      await api("PUT", "/api/settings", body);
      $("#settings-note").textContent = "Saved. Restart the gateway to apply; nothing queued is lost.";
    } catch (e) { err.textContent = e.message; }
  });
  start().catch(e => toast(e.message, true));
}

function initLogin() {
  const f = $("#login-form");
  f.addEventListener("submit", async ev => {
    ev.preventDefault();
    try { await api("POST", "/api/login", { pin: $("#login-pin").value }); location.href = "/"; }
    catch (e) { $(".form-error", f).textContent = e.message; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page !== "login") connectEvents();
  ({ worklist: initWorklist, exam: initExam, settings: initSettings, login: initLogin }[page] || (() => {}))();
});
