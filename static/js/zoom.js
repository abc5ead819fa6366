// Zoom and pan of the result. The canvas keeps its fitted size; a CSS transform (origin top
// left) zooms and pans it inside its frame, which clips it. Wheel, pinch (pointer.js), the
// toolbar's buttons and keys (+ − arrows 0) drive it; pointer.js reads the transformed box, so
// picking stays right at every zoom.

import { $ } from "./page.js";

const ZOOM_MAX = 8;

/** Zoom and pan `canvas`; `active()` says whether a result is on screen to zoom. */
export function createZoom(canvas, active) {
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
    if (!active()) return;
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

  /** A point on screen in the frame's CSS pixels. */
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
      if (!active()) return;
      e.preventDefault();
      const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
      zoomAt(Math.exp((-e.deltaY * unit) / 500), ...framePoint(e.clientX, e.clientY));
    },
    { passive: false },
  );
  $("stage").addEventListener("keydown", (e) => {
    if (!active() || e.target !== e.currentTarget || e.ctrlKey || e.metaKey || e.altKey) return;
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

  return {
    zoomAt,
    panBy,
    reset: resetView,
    framePoint,
    get scale() {
      return view.scale;
    },
  };
}
