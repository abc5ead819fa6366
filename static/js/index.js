// The drag-and-drop parsing page: take a photo (drop, paste, pick), check it, upload it, then
// draw and explore the result in the browser. Nothing is stored: the result lives in this
// module's variables and the canvas until it is cleared or the tab closes.

import { openPhoto, pageSettings, ParseError, parseImage } from "./api.js";
import { Compositor } from "./compositor.js";
import { ParseProgress } from "./progress.js";
import { decodeResult, hexToRgb } from "./result.js";

const $ = (id) => document.getElementById(id);
const settings = pageSettings();
const canvas = $("canvas");
const compositor = new Compositor(canvas);
const objectUrls = new Set();

// The result on screen: {json, text, result, blob, name, ownSize, full}. `name` is the base of
// download names, `ownSize` the photo's own {width, height} (EXIF orientation applied), `full`
// the same result at that size once asked for (a second parse, on demand).
let session = null;
let inFlight = null; // AbortController of the running request
let lastFile = null; // kept for "Try again" after a 429/503, dropped on clear
let lastName = ""; // its file name, for download names
let retryTimer = 0;
let hoverHighlight = null;
let pinned = null; // {kind: "person" | "class", id}: singled out by a click or a tap

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

function kindsOfPart(n) {
  return n === 1 ? "1 kind of part" : `${n} kinds of part`;
}

function people(n) {
  return n === 1 ? "1 person" : `${n} people`;
}

/** What a result holds, in words that agree with the overlay: parts can be painted where no
 * person was found with confidence, and then the page must not say that nothing was found. */
function foundText(result) {
  const persons = result.persons.length;
  const parts = result.classes.filter((c) => c.id !== 0).length;
  if (!parts) return "Nobody was found in this photo.";
  if (!persons) return `Found ${kindsOfPart(parts)}, but no person the model is sure of.`;
  return `Found ${people(persons)} and ${kindsOfPart(parts)}.`;
}

/** The base of download names: `beach.jpg` → "beach"; no name (a pasted image) → "photo". */
function baseName(name) {
  const stem = (name || "").replace(/\.[^.]*$/, "");
  const safe = stem
    .normalize("NFC")
    .replace(/[^\p{L}\p{N}._-]+/gu, "-")
    .replace(/^[-.]+|[-.]+$/g, "")
    .slice(0, 80);
  return safe || "photo";
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
  // While a new photo is on its way the kept result's controls rest: out of reach for the
  // pointer, the keyboard and screen readers alike (dimmed by CSS), until it arrives.
  for (const id of ["panel", "toolbar"]) $(id).inert = text !== null;
  if (text === null) return;
  $("busy-text").textContent = text;
  const bar = $("busy-progress");
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = Math.round(fraction * 100);
}

const PHASE_TEXT = {
  queue: "Waiting for a turn…",
  parse: "Finding people and parts…",
};

/** The progress card: what happens now, the place in the queue, time left, time elapsed. */
function showProgress(facts) {
  if (facts.phase === "upload") {
    const fraction = facts.uploadFraction;
    setBusy(`Uploading… ${Math.round(fraction * 100)}%`, fraction);
  } else {
    setBusy(PHASE_TEXT[facts.phase]);
  }
  for (const [id, text] of [
    ["busy-place", facts.placeText],
    ["busy-left", facts.leftText],
  ]) {
    $(id).textContent = text;
    $(id).hidden = !text;
  }
  $("busy-elapsed").textContent = facts.elapsedText;
}

function showError(error, { kept = false } = {}) {
  const box = $("error");
  $("error-kept").hidden = !kept;
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
  return hoverHighlight || pinned;
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
    swatch.dataset.class = c.id;
    swatch.style.setProperty("--swatch", c.color);
    const share = percent(c.fraction ?? 0);
    // The row's button singles the part out (pointer, keyboard and touch alike); the
    // checkbox beside it shows or hides it.
    const pickButton = el("button", { type: "button", className: "legend-pick" }, [
      swatch,
      el("span", { className: "legend-name", textContent: c.label }),
      el("span", { className: "legend-pct", textContent: share }),
    ]);
    pickButton.dataset.id = c.id;
    pickButton.setAttribute("aria-pressed", "false");
    pickButton.setAttribute("aria-label", `${c.label}, ${share} of the picture. Highlight`);
    const item = el("li", { className: "legend-item" }, [box, pickButton]);
    item.dataset.id = c.id;
    const enter = () => {
      hoverHighlight = { kind: "class", id: c.id };
      refreshHighlight();
    };
    const leave = () => {
      hoverHighlight = null;
      refreshHighlight();
    };
    item.addEventListener("pointerenter", (e) => {
      if (e.pointerType === "mouse") enter();
    });
    item.addEventListener("pointerleave", leave);
    for (const control of [box, pickButton]) {
      control.addEventListener("focus", enter);
      control.addEventListener("blur", leave);
    }
    pickButton.addEventListener("click", () => {
      const same = pinned?.kind === "class" && pinned.id === c.id;
      pin(same ? null : { kind: "class", id: c.id });
    });
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
  const empty = $("persons-empty");
  empty.hidden = result.persons.length > 0;
  empty.textContent = result.classes.some((c) => c.id !== 0)
    ? "No person was found with confidence. The coloured parts stand on their own: " +
      "they belong to no outlined person."
    : "Nobody was found in this photo.";
  for (const p of result.persons) {
    const chips = el(
      "span",
      { className: "person-parts" },
      p.parts.slice(0, 12).map((id) => {
        const dot = el("span", { className: "dot", title: names.get(id)?.label || `class ${id}` });
        dot.dataset.class = id;
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
    button.addEventListener("pointerenter", (e) => {
      if (e.pointerType === "mouse") enter();
    });
    button.addEventListener("pointerleave", leave);
    button.addEventListener("focus", enter);
    button.addEventListener("blur", leave);
    button.addEventListener("click", () => {
      const same = pinned?.kind === "person" && pinned.id === p.id;
      pin(same ? null : { kind: "person", id: p.id });
    });
    list.append(el("li", {}, [button]));
  }
}

/** Single out a person or a part until it is clicked (tapped) again, or Escape. */
function pin(target) {
  pinned = target;
  for (const [listId, kind] of [
    ["persons", "person"],
    ["legend", "class"],
  ]) {
    for (const b of $(listId).querySelectorAll("button[data-id]")) {
      const on = pinned?.kind === kind && pinned.id === Number(b.dataset.id);
      b.setAttribute("aria-pressed", String(on));
    }
  }
  refreshHighlight();
}

function describeCanvas(result) {
  canvas.setAttribute(
    "aria-label",
    `Photo with coloured parts. ${foundText(result)} The lists beside it name them.`,
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

async function handleFile(file, { name = file.name } = {}) {
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
  lastFile = blob;
  lastName = name;
  const ownSize = { width: photo.width, height: photo.height };
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  // A result on screen stays there until the new one arrives: a failed or cancelled upload
  // must not cost the user what they already had. Without one, the new photo is shown bare.
  const kept = session !== null;
  if (!kept) {
    showWorkspace(true);
    compositor.preview(photo);
    fitCanvas();
    canvas.setAttribute("aria-label", "Your photo, being parsed");
  }
  const progress = new ParseProgress((facts) => {
    if (inFlight === controller) showProgress(facts);
  });
  announce("Uploading the photo.");
  // Never shorter than the server's own deadline (web/pages.py renders it into the page):
  // giving up first would throw away a parse the server still finishes.
  let timedOut = false;
  const deadline = settings.parseTimeoutSeconds
    ? setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, settings.parseTimeoutSeconds * 1000)
    : 0;
  try {
    const { json, text } = await parseImage(blob, {
      params: { instances: "true", mask_format: "rle" },
      maxBytes: settings.maxBytes,
      signal: controller.signal,
      onProgress: (phase, fraction) => {
        if (phase === "upload") progress.upload(fraction);
        else {
          progress.uploaded();
          announce("Uploaded. Waiting for the result.");
        }
      },
    });
    progress.stop();
    const result = await decodeResult(json);
    if (inFlight !== controller) return;
    inFlight = null;
    clearResult({ keepFile: true }); // only now does the previous result go
    showWorkspace(true);
    compositor.alpha = Number($("opacity").value) / 100;
    compositor.load(photo, applyPalette(result));
    resetView();
    fitCanvas();
    session = { json, text, result, blob, name: baseName(name), ownSize, full: null };
    renderLegend(result);
    renderPersons(result);
    renderExports(result);
    describeCanvas(result);
    showTiming(json, result);
    setBusy(null);
    announce(`Done. ${foundText(result)}`);
    // The result is what the user came for: focus it, so keys zoom and screen readers read it.
    $("stage").focus({ preventScroll: false });
  } catch (error) {
    if (inFlight !== controller) return;
    inFlight = null;
    setBusy(null);
    if (!kept) clearResult({ keepFile: true });
    if (timedOut) {
      const late = new ParseError(
        "This took too long.",
        "The service didn't answer in time. Try again, perhaps with a smaller photo.",
      );
      showError(late, { kept });
      announce(late.title + (kept ? " The previous result is kept." : ""));
    } else if (error.code !== "aborted") {
      const shown =
        error instanceof ParseError
          ? error
          : new ParseError("The result couldn't be shown.", String(error.message || error));
      showError(shown, { kept });
      announce(
        (error.title || "Something went wrong.") + (kept ? " The previous result is kept." : ""),
      );
    } else {
      const said = kept ? "Cancelled. The previous result is kept." : "Cancelled.";
      toast(said);
      announce(said);
    }
  } finally {
    progress.stop();
    clearTimeout(deadline);
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
  if (session?.full) session.full.compositor.clear();
  session = null;
  if (!keepFile) {
    lastFile = null;
    lastName = "";
  }
  $("save-status").textContent = "";
  hoverHighlight = null;
  pinned = null;
  $("legend").replaceChildren();
  $("persons").replaceChildren();
  $("export-list").replaceChildren();
  $("exports").open = false;
  $("full-size").checked = false;
  $("full-size-row").hidden = true;
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
// The sample photo (generated, CC0: static/samples/README.md) goes through the same flow.
$("sample").addEventListener("click", async () => {
  try {
    const answer = await fetch($("sample").dataset.src || "/static/samples/sample-photo.jpg");
    if (!answer.ok) throw new Error(String(answer.status));
    handleFile(new File([await answer.blob()], "sample-photo.jpg", { type: "image/jpeg" }));
  } catch {
    showError(new ParseError("The sample photo couldn't be loaded.", "Try again, or use your own."));
  }
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
  if (lastFile) handleFile(lastFile, { name: lastName });
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
// ---- exports -------------------------------------------------------------------------------
// Drawn in the browser from the result on screen (its working size); with "The photo's own
// size" ticked, from a second parse of the same photo at its own size (`size=original`), made
// once on demand and forgotten with the result. Names come from the photo's name.

function renderExports(result) {
  const { width, height } = session.ownSize;
  const larger = width !== result.width || height !== result.height;
  $("full-size-row").hidden = !larger;
  $("full-size-label").textContent = `${width} × ${height} px`;
  $("work-size-label").textContent = `${result.width} × ${result.height} px`;
  const list = $("export-list");
  list.replaceChildren();
  if (!result.persons.length) {
    list.append(el("li", { className: "panel-hint", textContent: "No person was found." }));
  }
  for (const p of result.persons) {
    const button = (kind, text) => {
      const b = el("button", { type: "button", className: "btn btn-small btn-secondary" }, [text]);
      b.dataset.person = p.id;
      b.dataset.kind = kind;
      b.setAttribute("aria-label", `Person ${p.id}: ${text.toLowerCase()} PNG`);
      return b;
    };
    list.append(
      el("li", { className: "export-row" }, [
        el("span", { textContent: `Person ${p.id}` }),
        button("mask", "Mask"),
        button("cutout", "Cutout"),
      ]),
    );
  }
}

/** The result to export from: the one on screen, or the same at the photo's own size. */
async function exportSource() {
  const current = session;
  if (!$("full-size").checked || $("full-size-row").hidden) {
    return { compositor, json: current.json, text: current.text, result: current.result };
  }
  if (!current.full) {
    const status = $("save-status");
    const progress = new ParseProgress((facts) => {
      if (session !== current) return;
      const lines = [PHASE_TEXT[facts.phase] || "Sending the photo again…", facts.placeText];
      status.textContent = [...lines, facts.leftText, facts.elapsedText]
        .filter(Boolean)
        .join(" · ");
    });
    announce("Parsing the photo again at its own size.");
    let answer;
    try {
      answer = await parseImage(current.blob, {
        params: { instances: "true", mask_format: "rle", size: "original" },
        maxBytes: settings.maxBytes,
        onProgress: (phase, fraction) => {
          if (phase === "upload") progress.upload(fraction);
          else progress.uploaded();
        },
      });
    } finally {
      progress.stop();
      if (session === current) status.textContent = "";
    }
    const { json, text } = answer;
    const result = applyPalette(await decodeResult(json));
    const photo = await createImageBitmap(current.blob, { imageOrientation: "from-image" });
    const full = new Compositor(new OffscreenCanvas(1, 1));
    try {
      full.load(photo, result);
    } finally {
      photo.close();
    }
    if (session !== current) {
      full.clear(); // cleared while it was being made
      return null;
    }
    current.full = { compositor: full, json, text, result };
  }
  const { compositor: full } = current.full;
  full.alpha = compositor.alpha;
  full.hidden = new Set(compositor.hidden);
  return current.full;
}

/** Run `make(source)` for a Blob and download it as `<photo>-<suffix>`. */
async function save(suffix, make) {
  if (!session) return;
  const name = `${session.name}-${suffix}`;
  let blob;
  try {
    const source = await exportSource();
    if (!source) return;
    blob = await make(source);
  } catch (error) {
    const why = error instanceof ParseError ? error.detail || error.title : String(error);
    toast(`The full-size file couldn't be made. ${why}`);
    return;
  }
  if (blob) download(blob, name);
}

function chosenParts() {
  return session.result.classes
    .map((c) => c.id)
    .filter((id) => id !== 0 && !compositor.hidden.has(id));
}

$("download-overlay").addEventListener("click", () =>
  save("overlay.png", (s) => s.compositor.exportPng()),
);
$("download-cutout").addEventListener("click", () => {
  if (!session) return;
  const parts = chosenParts();
  if (!parts.length) {
    toast("Tick at least one part for the cutout.");
    return;
  }
  save("cutout.png", (s) => s.compositor.exportCutout(parts));
});
$("download-labels").addEventListener("click", () =>
  save("labels.png", (s) => new Blob([s.result.labelPng], { type: "image/png" })),
);
$("download-json").addEventListener("click", () =>
  save("parsing.json", (s) => new Blob([s.text], { type: "application/json" })),
);
$("export-list").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-person]");
  if (!button || !session) return;
  const id = Number(button.dataset.person);
  const kind = button.dataset.kind;
  save(`person-${id}-${kind}.png`, (s) =>
    kind === "mask" ? s.compositor.exportPersonMask(id) : s.compositor.exportPersonCutout(id),
  );
});
$("copy-overlay").addEventListener("click", copyOverlay);

// ---- zoom and pan --------------------------------------------------------------------------
// The canvas keeps its fitted size; a CSS transform (origin top left) zooms and pans it inside
// its frame, which clips it. Wheel, pinch, the toolbar's buttons and keys (+ − arrows 0) drive
// it; `canvasPoint` reads the transformed box, so picking stays right at every zoom.

const ZOOM_MAX = 8;
const view = { scale: 1, x: 0, y: 0 };

function clampView() {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  view.scale = Math.min(ZOOM_MAX, Math.max(1, view.scale));
  view.x = Math.min(0, Math.max(width - width * view.scale, view.x));
  view.y = Math.min(0, Math.max(height - height * view.scale, view.y));
}

function applyView() {
  clampView();
  const zoomed = view.scale > 1;
  canvas.style.transform = zoomed
    ? `translate(${view.x}px, ${view.y}px) scale(${view.scale})`
    : "";
  $("stage").classList.toggle("is-zoomed", zoomed);
  $("zoom-value").textContent = `${Math.round(view.scale * 100)}%`;
  $("zoom-out").disabled = !zoomed;
  $("zoom-reset").disabled = !zoomed;
  $("zoom-in").disabled = view.scale >= ZOOM_MAX;
}

/** Zoom by `factor` keeping the point (fx, fy), in the frame's CSS pixels, where it is. */
function zoomAt(factor, fx = canvas.clientWidth / 2, fy = canvas.clientHeight / 2) {
  if (!session) return;
  const next = Math.min(ZOOM_MAX, Math.max(1, view.scale * factor));
  view.x = fx - ((fx - view.x) * next) / view.scale;
  view.y = fy - ((fy - view.y) * next) / view.scale;
  view.scale = next;
  applyView();
}

function panBy(dx, dy) {
  view.x += dx;
  view.y += dy;
  applyView();
}

function resetView() {
  view.scale = 1;
  view.x = 0;
  view.y = 0;
  applyView();
}

function framePoint(clientX, clientY) {
  const rect = $("stage-frame").getBoundingClientRect();
  return [clientX - rect.left, clientY - rect.top];
}

$("zoom-in").addEventListener("click", () => zoomAt(1.5));
$("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5));
$("zoom-reset").addEventListener("click", resetView);
$("stage").addEventListener(
  "wheel",
  (e) => {
    if (!session) return;
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    zoomAt(Math.exp((-e.deltaY * unit) / 500), ...framePoint(e.clientX, e.clientY));
  },
  { passive: false },
);
$("stage").addEventListener("keydown", (e) => {
  if (!session || e.target !== e.currentTarget || e.ctrlKey || e.metaKey || e.altKey) return;
  const step = canvas.clientWidth * 0.1;
  const actions = {
    "+": () => zoomAt(1.5),
    "=": () => zoomAt(1.5),
    "-": () => zoomAt(1 / 1.5),
    _: () => zoomAt(1 / 1.5),
    0: resetView,
    ArrowLeft: () => panBy(step, 0),
    ArrowRight: () => panBy(-step, 0),
    ArrowUp: () => panBy(0, step),
    ArrowDown: () => panBy(0, -step),
  };
  const action = actions[e.key];
  if (!action) return;
  e.preventDefault();
  action();
});

// ---- pointing, tapping, dragging ----------------------------------------------------------
// Pointing at the picture names what is under the pointer. A click or a tap singles out the
// part under it (again: let go). One finger or the mouse drags the compare divider, or pans
// when zoomed in; two fingers pinch to zoom.

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  return {
    x: Math.floor(((event.clientX - rect.left) / rect.width) * canvas.width),
    y: Math.floor(((event.clientY - rect.top) / rect.height) * canvas.height),
    fx: (event.clientX - rect.left) / rect.width,
  };
}

function showTip(hit, clientX, clientY) {
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
  tip.style.setProperty("--x", `${clientX - stage.left}px`);
  tip.style.setProperty("--y", `${clientY - stage.top}px`);
  $("legend").querySelector(`li[data-id="${hit.classId}"]`)?.classList.add("is-hot");
}

function moveSplit(event) {
  const { fx } = canvasPoint(event);
  $("split").value = Math.round(Math.min(1, Math.max(0, fx)) * 100);
  compositor.update({ split: Number($("split").value) / 100 });
}

const pointers = new Map(); // pointerId → {x, y} while down
let gesture = null; // {mode: "tap" | "split" | "pan" | "pinch", ...}

function pinchState() {
  const [a, b] = [...pointers.values()];
  return {
    distance: Math.hypot(a.x - b.x, a.y - b.y) || 1,
    mid: framePoint((a.x + b.x) / 2, (a.y + b.y) / 2),
  };
}

canvas.addEventListener("pointerdown", (e) => {
  if (!session) return;
  canvas.setPointerCapture(e.pointerId);
  pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
  if (pointers.size === 2) {
    gesture = { mode: "pinch", ...pinchState() };
    return;
  }
  if (pointers.size > 2) return;
  gesture = { mode: "tap", x: e.clientX, y: e.clientY };
  if (compositor.split !== null) {
    gesture.mode = "split";
    moveSplit(e);
  }
});

canvas.addEventListener("pointermove", (e) => {
  if (!session) return;
  const known = pointers.get(e.pointerId);
  if (!known) {
    if (e.pointerType === "mouse") showTip(compositor.pick(...xy(e)), e.clientX, e.clientY);
    return;
  }
  const dx = e.clientX - known.x;
  const dy = e.clientY - known.y;
  known.x = e.clientX;
  known.y = e.clientY;
  if (gesture?.mode === "pinch" && pointers.size === 2) {
    const now = pinchState();
    zoomAt(now.distance / gesture.distance, ...now.mid);
    panBy(now.mid[0] - gesture.mid[0], now.mid[1] - gesture.mid[1]);
    Object.assign(gesture, now);
    return;
  }
  if (gesture?.mode === "split") {
    moveSplit(e);
    return;
  }
  if (gesture?.mode === "tap" && Math.hypot(e.clientX - gesture.x, e.clientY - gesture.y) > 6) {
    gesture.mode = view.scale > 1 ? "pan" : "none";
  }
  if (gesture?.mode === "pan") panBy(dx, dy);
});

function xy(event) {
  const { x, y } = canvasPoint(event);
  return [x, y];
}

function pointerEnd(e) {
  if (!pointers.delete(e.pointerId)) return;
  if (gesture?.mode === "tap" && e.type === "pointerup") {
    const hit = compositor.pick(...xy(e));
    const id = hit?.classId || 0;
    const same = pinned?.kind === "class" && pinned.id === id;
    pin(id === 0 || same ? null : { kind: "class", id });
    showTip(id === 0 || same ? null : hit, e.clientX, e.clientY);
  }
  if (pointers.size === 0) gesture = null;
  else if (gesture?.mode === "pinch") gesture = { mode: "none" };
}
canvas.addEventListener("pointerup", pointerEnd);
canvas.addEventListener("pointercancel", pointerEnd);
canvas.addEventListener("pointerleave", (e) => {
  if (e.pointerType !== "mouse" || pointers.size) return;
  $("tooltip").hidden = true;
  for (const item of $("legend").querySelectorAll(".is-hot")) item.classList.remove("is-hot");
});

// ---- palette -------------------------------------------------------------------------------
// The server sends the CIHP colours; the page can repaint with any palette it was given
// (`data-palettes` on <body>, from m2fp/labels.py), without asking the server again.

function applyPalette(result) {
  const colours = settings.palettes[$("palette").value];
  if (!colours) return result;
  for (const c of result.classes) {
    if (colours[c.id]) {
      c.color = colours[c.id];
      c.rgb = hexToRgb(c.color);
    }
  }
  return result;
}

$("palette").addEventListener("change", () => {
  if (!session) return;
  applyPalette(session.result);
  compositor.recolour(session.result.classes);
  if (session.full) {
    session.full.compositor.clear(); // made again, in the new colours, when next asked for
    session.full = null;
  }
  const colours = new Map(session.result.classes.map((c) => [c.id, c.color]));
  for (const node of document.querySelectorAll("#legend .swatch, #persons .dot")) {
    node.style.setProperty("--swatch", colours.get(Number(node.dataset.class)) || "#888");
  }
  announce(`Colours: ${$("palette").selectedOptions[0].textContent}.`);
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
    // A pasted image has no name of its own (browsers call it "image.png"): "photo-…".
    handleFile(file, { name: "" });
  } else if (!e.target.closest?.("input, textarea")) {
    toast("There is no image on the clipboard.");
  }
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    if (pinned !== null) pin(null);
    else if (inFlight) inFlight.abort();
  }
  const copying = (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "c";
  if (copying && session && !window.getSelection()?.toString() && !e.target.closest?.("input")) {
    e.preventDefault();
    copyOverlay();
  }
});

window.addEventListener("pagehide", () => clearResult());
