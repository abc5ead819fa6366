// The drag-and-drop parsing page: take a photo (drop, paste, pick), check it, upload it, then
// draw and explore the result in the browser. Nothing is stored: the result lives in this
// module's variables and the canvas until it is cleared or the tab closes.

import { openPhoto, pageSettings, ParseError, parseImage } from "./api.js";
import { Compositor } from "./compositor.js";
import { decodeResult } from "./result.js";

const $ = (id) => document.getElementById(id);
const settings = pageSettings();
const canvas = $("canvas");
const compositor = new Compositor(canvas);
const objectUrls = new Set();

let session = null; // {json, text, result} of the result on screen
let inFlight = null; // AbortController of the running request
let lastFile = null; // kept for "Try again" after a 429/503, dropped on clear
let retryTimer = 0;
let hoverHighlight = null;
let pinnedPerson = null;

// ---- small helpers -------------------------------------------------------------------------

function announce(text) {
  $("status").textContent = text;
}

let toastTimer = 0;
function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 3000);
}

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function percent(fraction) {
  const p = fraction * 100;
  if (p > 0 && p < 0.1) return "<0.1%";
  return `${p.toFixed(p < 10 ? 1 : 0)}%`;
}

// ---- page states ---------------------------------------------------------------------------

function showWorkspace(yes) {
  $("empty").hidden = yes;
  $("workspace").hidden = !yes;
  $("new-photo").hidden = !yes;
  $("clear").hidden = !yes;
  document.body.classList.toggle("has-result", yes);
}

function setBusy(text, fraction = null) {
  const busy = $("busy");
  busy.hidden = text === null;
  $("workspace").classList.toggle("is-busy", text !== null);
  if (text === null) return;
  $("busy-text").textContent = text;
  const bar = $("busy-progress");
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = Math.round(fraction * 100);
}

function showError(error) {
  const box = $("error");
  $("error-title").textContent = error.title || error.message;
  $("error-detail").textContent = error.detail || "";
  const retry = $("error-retry");
  clearInterval(retryTimer);
  const retryable = lastFile && (error.status === 429 || error.status === 503 || !error.status);
  retry.hidden = !retryable || error.code === "temporarily_banned";
  retry.disabled = false;
  if (retryable && error.retryAfter) {
    let left = error.retryAfter;
    retry.disabled = true;
    const tick = () => {
      if (left <= 0) {
        clearInterval(retryTimer);
        retry.disabled = false;
        $("error-detail").textContent = "You can try again now.";
        return;
      }
      if (error.waitText) $("error-detail").textContent = error.waitText(left);
      left -= 1;
    };
    tick();
    retryTimer = setInterval(tick, 1000);
  }
  box.hidden = false;
}

function hideError() {
  clearInterval(retryTimer);
  $("error").hidden = true;
}

/** Size the canvas on screen to fit the stage, keeping its aspect ratio. */
function fitCanvas() {
  if (!canvas.width || !canvas.height) return;
  const stage = $("stage");
  const style = getComputedStyle(stage);
  const padX = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
  const padY = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
  const wide = matchMedia("(min-width: 900px)").matches;
  const maxW = stage.clientWidth - padX;
  const maxH = wide ? stage.clientHeight - padY : window.innerHeight * 0.7;
  const scale = Math.max(0.01, Math.min(maxW / canvas.width, maxH / canvas.height));
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
  canvas.classList.toggle("is-pixelated", scale > 3);
}
new ResizeObserver(fitCanvas).observe($("stage"));

// ---- the result ----------------------------------------------------------------------------

function currentHighlight() {
  if (hoverHighlight) return hoverHighlight;
  return pinnedPerson === null ? null : { kind: "person", id: pinnedPerson };
}

function refreshHighlight() {
  compositor.update({ highlight: currentHighlight() });
}

function renderLegend(result) {
  const list = $("legend");
  list.replaceChildren();
  const parts = result.classes.filter((c) => c.id !== 0);
  $("legend-count").textContent = parts.length ? `(${parts.length})` : "";
  for (const c of parts) {
    const box = el("input", { type: "checkbox", checked: true, className: "legend-check" });
    box.dataset.id = c.id;
    box.setAttribute("aria-label", `Show ${c.label}`);
    const swatch = el("span", { className: "swatch" });
    swatch.style.setProperty("--swatch", c.color);
    const row = el("label", { className: "legend-row" }, [
      box,
      swatch,
      el("span", { className: "legend-name", textContent: c.label }),
      el("span", { className: "legend-pct", textContent: percent(c.fraction ?? 0) }),
    ]);
    const item = el("li", { className: "legend-item" }, [row]);
    item.dataset.id = c.id;
    const enter = () => {
      hoverHighlight = { kind: "class", id: c.id };
      refreshHighlight();
    };
    const leave = () => {
      hoverHighlight = null;
      refreshHighlight();
    };
    item.addEventListener("pointerenter", enter);
    item.addEventListener("pointerleave", leave);
    box.addEventListener("focus", enter);
    box.addEventListener("blur", leave);
    box.addEventListener("change", () => {
      if (box.checked) compositor.hidden.delete(c.id);
      else compositor.hidden.add(c.id);
      item.classList.toggle("is-off", !box.checked);
      compositor.update();
    });
    list.append(item);
  }
}

function setAllClasses(show) {
  for (const box of $("legend").querySelectorAll("input[type=checkbox]")) {
    box.checked = show;
    const id = Number(box.dataset.id);
    if (show) compositor.hidden.delete(id);
    else compositor.hidden.add(id);
    box.closest("li").classList.toggle("is-off", !show);
  }
  compositor.update();
}

function renderPersons(result) {
  const list = $("persons");
  list.replaceChildren();
  const names = new Map(result.classes.map((c) => [c.id, c]));
  $("persons-count").textContent = result.persons.length ? `(${result.persons.length})` : "";
  $("persons-empty").hidden = result.persons.length > 0;
  for (const p of result.persons) {
    const chips = el(
      "span",
      { className: "person-parts" },
      p.parts.slice(0, 12).map((id) => {
        const dot = el("span", { className: "dot", title: names.get(id)?.label || `class ${id}` });
        dot.style.setProperty("--swatch", names.get(id)?.color || "#888");
        return dot;
      }),
    );
    const partNames = p.parts.map((id) => names.get(id)?.label || `class ${id}`).join(", ");
    const button = el("button", { type: "button", className: "person" }, [
      el("span", { className: "person-badge", textContent: String(p.id) }),
      el("span", { className: "person-main" }, [
        el("span", { className: "person-name", textContent: `Person ${p.id}` }),
        el("span", {
          className: "person-meta",
          textContent: `${Math.round(p.score * 100)}% sure · ${plural(p.parts.length, "part")}`,
        }),
      ]),
      chips,
    ]);
    button.dataset.id = p.id;
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-label", `Person ${p.id}: ${partNames || "no parts"}. Highlight`);
    const enter = () => {
      hoverHighlight = { kind: "person", id: p.id };
      refreshHighlight();
    };
    const leave = () => {
      hoverHighlight = null;
      refreshHighlight();
    };
    button.addEventListener("pointerenter", enter);
    button.addEventListener("pointerleave", leave);
    button.addEventListener("focus", enter);
    button.addEventListener("blur", leave);
    button.addEventListener("click", () => pinPerson(pinnedPerson === p.id ? null : p.id));
    list.append(el("li", {}, [button]));
  }
}

function pinPerson(id) {
  pinnedPerson = id;
  for (const b of $("persons").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(Number(b.dataset.id) === id));
  }
  refreshHighlight();
}

function describeCanvas(result) {
  const people = result.persons.length;
  const parts = result.classes.filter((c) => c.id !== 0).length;
  canvas.setAttribute(
    "aria-label",
    `Photo with coloured parts: ${people} ${people === 1 ? "person" : "people"}, ` +
      `${parts} kinds of part. The lists beside it name them.`,
  );
}

function showTiming(json, result) {
  const t = json.timing_ms;
  const size = `${result.width} × ${result.height} px`;
  $("timing").textContent = t?.total
    ? `${size} · parsed in ${(t.total / 1000).toFixed(t.total < 10000 ? 2 : 1)} s`
    : size;
}

// ---- the flow ------------------------------------------------------------------------------

async function handleFile(file) {
  hideError();
  let blob;
  let photo;
  try {
    ({ blob, photo } = await openPhoto(file, settings.maxBytes));
  } catch (error) {
    showError(error);
    announce(error.title);
    return;
  }
  clearResult({ keepFile: true });
  lastFile = blob;
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  showWorkspace(true);
  compositor.preview(photo);
  fitCanvas();
  canvas.setAttribute("aria-label", "Your photo, being parsed");
  setBusy("Uploading…", 0);
  announce("Uploading the photo.");
  try {
    const { json, text } = await parseImage(blob, {
      params: { instances: "true", mask_format: "rle" },
      maxBytes: settings.maxBytes,
      signal: controller.signal,
      onProgress: (phase, fraction) => {
        if (phase === "upload") setBusy(`Uploading… ${Math.round(fraction * 100)}%`, fraction);
        else {
          setBusy("Finding people and parts…");
          announce("Parsing the photo.");
        }
      },
    });
    const result = await decodeResult(json);
    if (inFlight !== controller) return;
    compositor.alpha = Number($("opacity").value) / 100;
    compositor.load(photo, result);
    fitCanvas();
    session = { json, text, result };
    renderLegend(result);
    renderPersons(result);
    describeCanvas(result);
    showTiming(json, result);
    setBusy(null);
    const people = result.persons.length;
    announce(`Done. ${people} ${people === 1 ? "person" : "people"} found.`);
  } catch (error) {
    if (inFlight !== controller) return;
    clearResult({ keepFile: true });
    if (error.code !== "aborted") {
      const shown =
        error instanceof ParseError
          ? error
          : new ParseError("The result couldn't be shown.", String(error.message || error));
      showError(shown);
      announce(error.title || "Something went wrong.");
    } else {
      announce("Cancelled.");
    }
  } finally {
    photo.close();
    if (inFlight === controller) inFlight = null;
  }
}

/** Forget everything about the photo: pixels, result, object URLs, controls. */
function clearResult({ keepFile = false } = {}) {
  inFlight?.abort();
  inFlight = null;
  compositor.clear();
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls.clear();
  session = null;
  if (!keepFile) lastFile = null;
  hoverHighlight = null;
  pinnedPerson = null;
  $("legend").replaceChildren();
  $("persons").replaceChildren();
  $("legend-count").textContent = "";
  $("persons-count").textContent = "";
  $("timing").textContent = "";
  $("compare").setAttribute("aria-pressed", "false");
  $("split").hidden = true;
  $("file-input").value = "";
  $("tooltip").hidden = true;
  canvas.setAttribute("aria-label", "No result yet");
  canvas.style.width = "";
  canvas.style.height = "";
  setBusy(null);
  showWorkspace(false);
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  objectUrls.add(url);
  const link = el("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  // The download has its own copy once it starts; the URL is not needed for long.
  setTimeout(() => {
    URL.revokeObjectURL(url);
    objectUrls.delete(url);
  }, 10_000);
}

async function copyOverlay() {
  if (!session) return;
  if (!navigator.clipboard?.write || typeof ClipboardItem === "undefined") {
    toast("This browser can't copy images: use “Overlay PNG”.");
    return;
  }
  try {
    await navigator.clipboard.write([new ClipboardItem({ "image/png": compositor.exportPng() })]);
    toast("Overlay copied to the clipboard");
  } catch {
    toast("Copying was refused by the browser: use “Overlay PNG”.");
  }
}

// ---- wiring --------------------------------------------------------------------------------

const picker = $("file-input");
$("dropzone").addEventListener("click", () => picker.click());
$("new-photo").addEventListener("click", () => picker.click());
picker.addEventListener("change", () => {
  if (picker.files[0]) handleFile(picker.files[0]);
});
$("clear").addEventListener("click", () => {
  clearResult();
  hideError();
  announce("Cleared. Nothing of the photo is left in this page.");
  $("dropzone").focus();
});
$("cancel").addEventListener("click", () => {
  inFlight?.abort();
});
$("error-dismiss").addEventListener("click", hideError);
$("error-retry").addEventListener("click", () => {
  if (lastFile) handleFile(lastFile);
});

$("opacity").addEventListener("input", (e) => {
  const value = Number(e.target.value);
  $("opacity-value").textContent = `${value}%`;
  compositor.update({ alpha: value / 100 });
});
$("compare").addEventListener("click", (e) => {
  const button = e.currentTarget;
  const on = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", String(on));
  $("split").hidden = !on;
  compositor.update({ split: on ? Number($("split").value) / 100 : null });
});
$("split").addEventListener("input", (e) => {
  compositor.update({ split: Number(e.target.value) / 100 });
});
$("show-all").addEventListener("click", () => setAllClasses(true));
$("show-none").addEventListener("click", () => setAllClasses(false));
$("download-overlay").addEventListener("click", async () => {
  if (session) download(await compositor.exportPng(), "parsing-overlay.png");
});
$("download-labels").addEventListener("click", () => {
  if (!session) return;
  download(new Blob([session.result.labelPng], { type: "image/png" }), "parsing-labels.png");
});
$("download-json").addEventListener("click", () => {
  if (session) download(new Blob([session.text], { type: "application/json" }), "parsing.json");
});
$("copy-overlay").addEventListener("click", copyOverlay);

// Pointing at the picture names what is under the pointer; dragging moves the compare divider.
function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  return {
    x: Math.floor(((event.clientX - rect.left) / rect.width) * canvas.width),
    y: Math.floor(((event.clientY - rect.top) / rect.height) * canvas.height),
    fx: (event.clientX - rect.left) / rect.width,
  };
}
let dragging = false;
canvas.addEventListener("pointerdown", (e) => {
  if (compositor.split === null || !session) return;
  dragging = true;
  canvas.setPointerCapture(e.pointerId);
  const { fx } = canvasPoint(e);
  $("split").value = Math.round(Math.min(1, Math.max(0, fx)) * 100);
  compositor.update({ split: Number($("split").value) / 100 });
});
canvas.addEventListener("pointerup", () => {
  dragging = false;
});
canvas.addEventListener("pointermove", (e) => {
  if (!session) return;
  const point = canvasPoint(e);
  if (dragging) {
    $("split").value = Math.round(Math.min(1, Math.max(0, point.fx)) * 100);
    compositor.update({ split: Number($("split").value) / 100 });
    return;
  }
  const hit = compositor.pick(point.x, point.y);
  const tip = $("tooltip");
  for (const item of $("legend").querySelectorAll(".is-hot")) item.classList.remove("is-hot");
  if (!hit || hit.classId === 0) {
    tip.hidden = true;
    return;
  }
  const cls = session.result.classes.find((c) => c.id === hit.classId);
  const where = hit.personId ? ` · person ${hit.personId}` : "";
  tip.textContent = (cls?.label || `class ${hit.classId}`) + where;
  tip.hidden = false;
  const stage = $("stage").getBoundingClientRect();
  tip.style.setProperty("--x", `${e.clientX - stage.left}px`);
  tip.style.setProperty("--y", `${e.clientY - stage.top}px`);
  $("legend").querySelector(`li[data-id="${hit.classId}"]`)?.classList.add("is-hot");
});
canvas.addEventListener("pointerleave", () => {
  $("tooltip").hidden = true;
  for (const item of $("legend").querySelectorAll(".is-hot")) item.classList.remove("is-hot");
});

// Drop anywhere on the page.
let dragDepth = 0;
const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
document.addEventListener("dragenter", (e) => {
  if (!hasFiles(e)) return;
  dragDepth += 1;
  $("drop-overlay").hidden = false;
});
document.addEventListener("dragleave", (e) => {
  if (!hasFiles(e)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) $("drop-overlay").hidden = true;
});
document.addEventListener("dragover", (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = "copy";
});
document.addEventListener("drop", (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth = 0;
  $("drop-overlay").hidden = true;
  const files = [...e.dataTransfer.files];
  if (files.length > 1) toast("Only the first file is parsed.");
  if (files[0]) handleFile(files[0]);
});

// Paste an image from the clipboard (Ctrl/Cmd+V anywhere but a text field).
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])][0];
  if (file) {
    e.preventDefault();
    handleFile(file);
  } else if (!e.target.closest?.("input, textarea")) {
    toast("There is no image on the clipboard.");
  }
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    if (pinnedPerson !== null) pinPerson(null);
    else if (inFlight) inFlight.abort();
  }
  const copying = (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "c";
  if (copying && session && !window.getSelection()?.toString() && !e.target.closest?.("input")) {
    e.preventDefault();
    copyOverlay();
  }
});

window.addEventListener("pagehide", () => clearResult());
