/* The on-screen keyboard: the kiosk (cage + Chromium) has no keyboard of its
   own, so a field touched with a finger opens this one, in the page itself
   (no package, nothing to install in the image, works under cage).

   A field says which layout it wants with data-kb: "text" (the default),
   "name" (capital first letter), "digits" (a digit pad with a switch to
   letters, for IDs, ports and PINs), "date" (digits and "-", YYYY-MM-DD) or
   "none" (the field has its own pad). Keys are 48 px or more. A key press
   edits the field as typing would and fires "input", so every listener
   (the list filter, the form checks) sees it; Enter fires a keydown "Enter". */
"use strict";
(function () {
  const LETTERS = [
    ["q", "w", "e", "r", "t", "y", "u", "i", "o", "p"],
    ["a", "s", "d", "f", "g", "h", "j", "k", "l", "⌫"],
    ["⇧", "z", "x", "c", "v", "b", "n", "m", "-", "'"],
    ["123", "äöü", " ", ",", ".", "↵"],
  ];
  const ACCENTS = [
    ["à", "á", "â", "ä", "ã", "å", "æ", "ç", "è", "é"],
    ["ê", "ë", "ì", "í", "î", "ï", "ñ", "ò", "ó", "⌫"],
    ["⇧", "ô", "ö", "õ", "ø", "œ", "ß", "ù", "ú", "ü"],
    ["123", "abc", " ", "ý", "ÿ", "↵"],
  ];
  const DIGITS = [
    ["1", "2", "3", "-"],
    ["4", "5", "6", "⌫"],
    ["7", "8", "9", "abc"],
    [".", "0", "/", "↵"],
  ];
  const DATE = [
    ["1", "2", "3", "-"],
    ["4", "5", "6", "⌫"],
    ["7", "8", "9", "↵"],
    ["0"],
  ];
  const NAMES = { "⌫": "Backspace", "⇧": "Shift", "↵": "Enter", " ": "Space", "123": "Digits",
    "abc": "Letters", "äöü": "Accented letters" };

  let lastPointer = "mouse";
  let target = null, layout = "text", shift = false;
  const kb = document.createElement("div");
  kb.id = "kbd"; kb.className = "kbd"; kb.hidden = true;
  kb.setAttribute("role", "group"); kb.setAttribute("aria-label", "On-screen keyboard");

  function wants(el) {
    if (!el || !(el instanceof HTMLInputElement) || el.readOnly || el.disabled) return false;
    if (el.dataset.kb === "none") return false;
    return ["text", "search", "password", ""].includes(el.type) || el.type === "number";
  }

  function keyLabel(k) {
    if (k.length === 1 && shift && k !== " ") return k.toUpperCase();
    if (k === "↵") return target && target.type === "search" ? "Search" : "Done";
    return k;
  }

  function render() {
    const rows = { text: LETTERS, name: LETTERS, accents: ACCENTS, digits: DIGITS, date: DATE }[layout] || LETTERS;
    kb.replaceChildren(...rows.map(row => {
      const r = document.createElement("div"); r.className = "kbd-row";
      for (const k of row) {
        const b = document.createElement("button");
        b.type = "button"; b.className = "btn kbd-key"; b.dataset.key = k;
        b.textContent = keyLabel(k);
        b.setAttribute("aria-label", NAMES[k] || keyLabel(k));
        if (k === " ") b.classList.add("kbd-space");
        if (k === "⇧" && shift) b.setAttribute("aria-pressed", "true");
        r.appendChild(b);
      }
      return r;
    }));
  }

  function fire(el, type) { el.dispatchEvent(new Event(type, { bubbles: true })); }

  function insert(text) {
    const el = target; if (!el) return;
    if (el.maxLength > 0 && el.value.length >= el.maxLength && el.selectionStart === el.selectionEnd) return;
    const start = el.selectionStart ?? el.value.length, end = el.selectionEnd ?? el.value.length;
    el.setRangeText(text, start, end, "end");
    fire(el, "input");
  }

  function backspace() {
    const el = target; if (!el) return;
    let start = el.selectionStart ?? el.value.length; const end = el.selectionEnd ?? el.value.length;
    if (start === end) start = Math.max(0, start - 1);
    el.setRangeText("", start, end, "end");
    fire(el, "input");
  }

  function press(k) {
    if (!target) return;
    if (k === "⌫") backspace();
    else if (k === "⇧") { shift = !shift; render(); }
    else if (k === "123") { layout = "digits"; render(); }
    else if (k === "abc") { layout = target.dataset.kb === "name" ? "name" : "text"; render(); }
    else if (k === "äöü") { layout = "accents"; render(); }
    else if (k === "↵") {
      const el = target;
      hide(); // done typing: what the field is for comes into sight
      el.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
    } else {
      insert(shift ? k.toUpperCase() : k);
      if (shift) { shift = false; render(); }
    }
  }

  function show(el) {
    target = el;
    const kind = el.dataset.kb || (el.inputMode === "numeric" ? "digits" : "text");
    layout = kind;
    shift = kind === "name" && el.value === "";
    render();
    // Inside an open modal dialog, or the dialog makes the keyboard inert.
    const host = el.closest("dialog[open]") || document.body;
    if (kb.parentElement !== host) host.appendChild(kb);
    kb.hidden = false;
    document.documentElement.style.setProperty("--kb-h", kb.offsetHeight + "px");
    document.body.classList.add("kb-open");
    const dialog = el.closest("dialog"); if (dialog) dialog.classList.add("kb-open");
    requestAnimationFrame(() => el.scrollIntoView({ block: "nearest" }));
  }

  function hide() {
    if (kb.hidden) return;
    kb.hidden = true; target = null;
    document.body.classList.remove("kb-open");
    document.querySelectorAll("dialog.kb-open").forEach(d => d.classList.remove("kb-open"));
  }

  // Keys must not take the focus from the field they type into.
  kb.addEventListener("pointerdown", ev => ev.preventDefault());
  kb.addEventListener("mousedown", ev => ev.preventDefault());
  kb.addEventListener("click", ev => {
    const b = ev.target.closest(".kbd-key"); if (b) press(b.dataset.key);
  });
  document.addEventListener("pointerdown", ev => { lastPointer = ev.pointerType || "mouse"; }, true);
  document.addEventListener("focusin", ev => {
    if (kb.contains(ev.target)) return;
    const touch = lastPointer === "touch" || document.body.dataset.keyboard === "always";
    if (wants(ev.target) && touch) show(ev.target); // another field: the keys type there now
    else hide(); // a field chosen with a mouse has a keyboard of its own
  });
  // A touch on the field that has the focus already (after Done) brings it back.
  document.addEventListener("click", ev => {
    if (kb.hidden && lastPointer === "touch" && wants(ev.target) && ev.target === document.activeElement) {
      show(ev.target);
    }
  });
  document.addEventListener("focusout", ev => {
    // Give a tap on another field (or a key) the chance to keep it open.
    setTimeout(() => { if (!kb.hidden && !wants(document.activeElement)) hide(); }, 150);
  });
  document.addEventListener("close", () => hide(), true); // a dialog closed
  document.addEventListener("DOMContentLoaded", () => document.body.appendChild(kb));
  window.OnScreenKeyboard = { show, hide, get visible() { return !kb.hidden; } };
})();
