// The kiosk: welcome screen → live camera → countdown → capture → upload → full-screen
// result → "start again". An idle timer wipes everything (photo, result, canvases, camera)
// and goes back to the welcome screen without reloading, so full-screen mode survives.

import { openPhoto, pageSettings, ParseError, parseImage } from "./api.js";
import { Compositor } from "./compositor.js";
import { ParseProgress } from "./progress.js";
import { decodeResult } from "./result.js";

const $ = (id) => document.getElementById(id);
const settings = pageSettings();
const IDLE_MS = settings.idleSeconds * 1000;
const WARN_MS = Math.min(10_000, IDLE_MS / 3);
// Never shorter than the server's own deadline (rendered into the page by web/pages.py): giving
// up first would throw away a parse the server still finishes.
const REQUEST_TIMEOUT_MS = (settings.parseTimeoutSeconds || 150) * 1000;
const MAX_SIDE = 1920;
const SCREENS = ["welcome", "camera", "working", "result", "failure"];

const kiosk = $("kiosk");
const video = $("video");
const capture = $("capture");
const compositor = new Compositor($("result-canvas"));

let state = "welcome";
let stream = null;
let inFlight = null;
let countdownTimer = 0;
let deadline = 0;
let generation = 0; // bumped by every wipe, so late async work from a wiped session is dropped

function announce(text) {
  $("status").textContent = text;
}

function show(next) {
  state = next;
  kiosk.dataset.state = next;
  for (const name of SCREENS) $(name).hidden = name !== next;
  touch();
}

// ---- idle timer ----------------------------------------------------------------------------

/** Any touch, click or key press starts the idle countdown over. */
function touch() {
  deadline = performance.now() + IDLE_MS;
  $("idle-warning").hidden = true;
}

function busy() {
  return state === "working" || countdownTimer !== 0;
}

setInterval(() => {
  if (state === "welcome") return;
  if (busy()) {
    touch(); // the machine is working, not the visitor: don't count it as idle
    return;
  }
  const left = deadline - performance.now();
  if (left <= 0) {
    wipe();
    announce("Back at the start. Nothing of the last photo is kept.");
  } else if (left <= WARN_MS) {
    const warning = $("idle-warning");
    const seconds = Math.ceil(left / 1000);
    warning.textContent = `Going back to the start in ${seconds} s. Touch the screen to stay.`;
    warning.hidden = false;
  }
}, 250);

for (const type of ["pointerdown", "keydown", "wheel", "touchstart"]) {
  document.addEventListener(type, touch, { passive: true, capture: true });
}

// ---- wiping --------------------------------------------------------------------------------

function stopCamera() {
  for (const track of stream?.getTracks() || []) track.stop();
  stream = null;
  video.pause();
  video.srcObject = null;
  video.removeAttribute("src");
}

function blank(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.width = 0;
  canvas.height = 0;
}

/** Forget the visitor: camera, photo, result, every canvas; back to the welcome screen. */
function wipe() {
  generation += 1;
  inFlight?.abort();
  inFlight = null;
  clearInterval(countdownTimer);
  countdownTimer = 0;
  stopCamera();
  compositor.clear();
  blank(capture);
  if (settings.fileFallback) $("file-input").value = "";
  $("legend").replaceChildren();
  $("result-title").textContent = "";
  $("countdown").hidden = true;
  $("flash").hidden = true;
  $("no-camera").hidden = true;
  $("failure-title").textContent = "";
  $("failure-detail").textContent = "";
  setPeek(false);
  show("welcome");
  $("start").focus({ preventScroll: true });
}

// ---- camera --------------------------------------------------------------------------------

async function openCamera() {
  const session = generation;
  show("camera");
  $("no-camera").hidden = true;
  $("shutter").hidden = false;
  $("camera-hint").hidden = false;
  if (!navigator.mediaDevices?.getUserMedia) {
    noCamera(
      window.isSecureContext
        ? "This browser can't use a camera."
        : "The camera only works over HTTPS.",
    );
    return;
  }
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "user", width: { ideal: 1920 }, height: { ideal: 1080 } },
      audio: false,
    });
    if (session !== generation || state !== "camera") {
      for (const track of media.getTracks()) track.stop();
      return;
    }
    stream = media;
    video.srcObject = media;
    await video.play().catch(() => {});
    announce("The camera is on. Press the round button to take the photo.");
  } catch (error) {
    if (session !== generation) return;
    const denied = error?.name === "NotAllowedError" || error?.name === "SecurityError";
    noCamera(denied ? "The camera is blocked on this device." : "No camera was found.");
  }
}

// The operator decides whether a kiosk without a camera offers the OS file dialog
// (M2FP_KIOSK_FILE_FALLBACK): on a public kiosk that dialog lets a stranger browse the machine.
const INSTEAD = settings.fileFallback ? "Choose a photo instead." : "Please ask a member of staff.";

function noCamera(reason) {
  const detail = `${reason} ${INSTEAD}`;
  stopCamera();
  $("no-camera-detail").textContent = detail;
  $("no-camera").hidden = false;
  $("shutter").hidden = true;
  $("camera-hint").hidden = true;
  announce(detail);
}

function startCountdown() {
  if (!stream || countdownTimer) return;
  let left = settings.countdownSeconds;
  const counter = $("countdown");
  const tick = () => {
    if (left === 0) {
      clearInterval(countdownTimer);
      countdownTimer = 0;
      counter.hidden = true;
      snap();
      return;
    }
    counter.textContent = String(left);
    counter.hidden = false;
    // Restart the pop animation for each number.
    counter.classList.remove("is-ticking");
    void counter.offsetWidth;
    counter.classList.add("is-ticking");
    left -= 1;
  };
  $("shutter").hidden = true;
  $("camera-hint").hidden = true;
  countdownTimer = setInterval(tick, 1000);
  tick();
}

function snap() {
  const width = video.videoWidth;
  const height = video.videoHeight;
  if (!width || !height) {
    noCamera("The camera gave no picture.");
    return;
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  capture.width = Math.round(width * scale);
  capture.height = Math.round(height * scale);
  // The live preview is mirrored (people expect a mirror while they pose); the photo is not,
  // so text in the scene reads the right way round in the result.
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  const flash = $("flash");
  flash.hidden = false;
  setTimeout(() => {
    flash.hidden = true;
  }, 350);
  stopCamera();
  const session = generation;
  capture.toBlob(
    (blob) => {
      if (session !== generation) return;
      if (!blob) {
        fail(new ParseError("The photo couldn't be taken.", "Please try again."));
        return;
      }
      upload(blob, capture);
    },
    "image/jpeg",
    0.92,
  );
}

// ---- upload and result ---------------------------------------------------------------------

const WORKING_TEXT = {
  upload: "Sending your photo…",
  queue: "Waiting for a turn…",
  parse: "Finding people and parts…",
};

/** The working screen in big type: what happens now, place in the queue, time left, elapsed. */
function showProgress(facts) {
  $("working-text").textContent = WORKING_TEXT[facts.phase];
  for (const [id, text] of [
    ["working-place", facts.placeText],
    ["working-left", facts.leftText],
  ]) {
    $(id).textContent = text;
    $(id).hidden = !text;
  }
  $("working-elapsed").textContent = facts.elapsedText;
}

async function upload(blob, photo) {
  const session = generation;
  const progress = new ParseProgress((facts) => {
    if (session === generation) showProgress(facts);
  });
  show("working");
  announce("Working on your photo.");
  const controller = new AbortController();
  inFlight = controller;
  const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const { json } = await parseImage(blob, {
      params: { instances: "false" },
      maxBytes: settings.maxBytes,
      signal: controller.signal,
      onProgress: (phase) => {
        if (phase === "parse") progress.uploaded();
      },
    });
    progress.stop();
    const result = await decodeResult(json);
    if (session !== generation) return;
    compositor.load(photo, result);
    blank(capture); // the compositor holds its own copy now
    showResult(result);
  } catch (error) {
    if (session !== generation) return;
    if (error.code === "aborted") {
      fail(new ParseError("This took too long.", "The service didn't answer in time."));
    } else {
      fail(error instanceof ParseError ? error : new ParseError("The result couldn't be shown."));
    }
  } finally {
    progress.stop();
    clearTimeout(timeout);
    if (photo instanceof ImageBitmap) photo.close();
    if (inFlight === controller) inFlight = null;
  }
}

function showResult(result) {
  const parts = result.classes.filter((c) => c.id !== 0);
  const legend = $("legend");
  legend.replaceChildren(
    ...parts.map((c) => {
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.setProperty("--swatch", c.color);
      const item = document.createElement("li");
      item.className = "chip";
      item.append(swatch, c.label);
      return item;
    }),
  );
  const people = result.persons.length;
  const kinds = parts.length === 1 ? "1 kind of part" : `${parts.length} kinds of part`;
  $("result-title").textContent = parts.length
    ? people
      ? `${people === 1 ? "1 person" : `${people} people`}, ${kinds}`
      : `${kinds}, but no person the model is sure of`
    : "Nobody found. Try again, closer to the camera";
  show("result");
  announce(`Your result is ready. ${$("result-title").textContent}.`);
  $("again").focus({ preventScroll: true });
}

function fail(error) {
  $("failure-title").textContent = error.title || "Something went wrong.";
  $("failure-detail").textContent = error.detail || "";
  show("failure");
  announce(error.title);
}

function setPeek(on) {
  $("peek").setAttribute("aria-pressed", String(on));
  compositor.update({ alpha: on ? 0 : 0.6 });
}

async function pickedFile(file) {
  try {
    const { blob, photo } = await openPhoto(file, settings.maxBytes);
    upload(blob, photo);
  } catch (error) {
    fail(error);
  }
}

// ---- wiring --------------------------------------------------------------------------------

$("start").addEventListener("click", openCamera);
$("welcome").addEventListener("click", (e) => {
  if (e.target.closest("button")) return;
  openCamera(); // touching anywhere on the welcome screen starts
});
$("shutter").addEventListener("click", startCountdown);
$("camera-back").addEventListener("click", wipe);
$("again").addEventListener("click", () => {
  wipe();
  openCamera();
});
$("failure-home").addEventListener("click", wipe);
// Cancel drops the request (the server drops a gone client's queued image) and the photo.
$("working-cancel").addEventListener("click", () => {
  wipe();
  announce("Cancelled. Back at the start; nothing of the photo is kept.");
});
$("retry").addEventListener("click", () => {
  wipe();
  openCamera();
});
if (settings.fileFallback) {
  let pickGeneration = -1;
  $("pick").addEventListener("click", () => {
    pickGeneration = generation;
    $("file-input").click();
  });
  $("file-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    // A picker left open past the idle reset must not start a session on the welcome screen.
    if (file && pickGeneration === generation && state === "camera") pickedFile(file);
    e.target.value = "";
  });
} else {
  $("no-camera-home").addEventListener("click", wipe);
}
const peek = $("peek");
peek.addEventListener("pointerdown", () => setPeek(true));
for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
  peek.addEventListener(type, () => setPeek(false));
}
peek.addEventListener("keydown", (e) => {
  if (e.key === " " || e.key === "Enter") setPeek(true);
});
peek.addEventListener("keyup", () => setPeek(false));

// Full screen needs a user gesture; the button hides itself when it can't help.
const fullscreenButton = $("fullscreen");
function syncFullscreen() {
  fullscreenButton.hidden = !document.fullscreenEnabled || document.fullscreenElement !== null;
}
fullscreenButton.addEventListener("click", () => {
  document.documentElement.requestFullscreen?.({ navigationUI: "hide" }).catch(() => {});
});
document.addEventListener("fullscreenchange", syncFullscreen);
syncFullscreen();

// A kiosk is not a place to save or copy pictures.
document.addEventListener("contextmenu", (e) => e.preventDefault());
document.addEventListener("dragstart", (e) => e.preventDefault());
window.addEventListener("pagehide", wipe);
