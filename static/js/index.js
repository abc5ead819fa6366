// The drag-and-drop parsing page: take a photo (drop, paste, pick), check it, upload it, then
// draw and explore the result in the browser. Nothing is stored: the result lives in this
// module's variables and the canvas until it is cleared or the tab closes. Its parts:
// highlight.js (the legend and persons lists), zoom.js and pointer.js (exploring the picture),
// exports.js (downloads and their names), page.js (shared helpers).

import { openPhoto, pageSettings, ParseError, parseImage } from "./api.js";
import { Compositor } from "./compositor.js";
import { baseName, createExports } from "./exports.js";
import { createHighlight } from "./highlight.js";
import { $, announce, foundText, PHASE_TEXT, toast } from "./page.js";
import { attachPointer } from "./pointer.js";
import { ParseProgress } from "./progress.js";
import { decodeResult, hexToRgb } from "./result.js";
import { createZoom } from "./zoom.js";

const settings = pageSettings();
const canvas = $("canvas");
const compositor = new Compositor(canvas);

// The result on screen: {json, text, result, blob, name, ownSize, full}. `name` is the base of
// download names, `ownSize` the photo's own {width, height} (EXIF orientation applied), `full`
// the same result at that size once asked for (a second parse, on demand).
let session = null;
let inFlight = null; // AbortController of the running request
let lastFile = null; // kept for "Try again" after a 429/503, dropped on clear
let lastName = ""; // its file name, for download names
let retryTimer = 0;

const current = () => session;
const highlight = createHighlight(compositor);
const zoom = createZoom(canvas, current);
const exporter = createExports({ compositor, settings, current, applyPalette });
attachPointer({ canvas, compositor, current, zoom, highlight });

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
    zoom.reset();
    fitCanvas();
    session = { json, text, result, blob, name: baseName(name), ownSize, full: null };
    highlight.renderLegend(result);
    highlight.renderPersons(result);
    exporter.render(result);
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
  exporter.forget();
  if (session?.full) session.full.compositor.clear();
  session = null;
  if (!keepFile) {
    lastFile = null;
    lastName = "";
  }
  $("save-status").textContent = "";
  highlight.reset();
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
$("show-all").addEventListener("click", () => highlight.setAllClasses(true));
$("show-none").addEventListener("click", () => highlight.setAllClasses(false));

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
    if (highlight.pinned !== null) highlight.pin(null);
    else if (inFlight) inFlight.abort();
  }
  const copying = (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "c";
  if (copying && session && !window.getSelection()?.toString() && !e.target.closest?.("input")) {
    e.preventDefault();
    exporter.copyOverlay();
  }
});

window.addEventListener("pagehide", () => clearResult());