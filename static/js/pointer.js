// Pointing, tapping and dragging on the result. Pointing at the picture names what is under
// the pointer. A click or a tap singles out the part under it (again: let go). One finger or
// the mouse drags the compare divider, or pans when zoomed in; two fingers pinch to zoom.

import { $ } from "./page.js";

/**
 * Wire the pointer on `canvas`. `current()` is the result on screen (or null), `zoom` the
 * view from zoom.js, `highlight` the lists from highlight.js.
 */
export function attachPointer({ canvas, compositor, current, zoom, highlight }) {
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
    const cls = current().result.classes.find((c) => c.id === hit.classId);
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
      mid: zoom.framePoint((a.x + b.x) / 2, (a.y + b.y) / 2),
    };
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (!current()) return;
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
    if (!current()) return;
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
      zoom.zoomAt(now.distance / gesture.distance, ...now.mid);
      zoom.panBy(now.mid[0] - gesture.mid[0], now.mid[1] - gesture.mid[1]);
      Object.assign(gesture, now);
      return;
    }
    if (gesture?.mode === "split") {
      moveSplit(e);
      return;
    }
    if (gesture?.mode === "tap" && Math.hypot(e.clientX - gesture.x, e.clientY - gesture.y) > 6) {
      gesture.mode = zoom.scale > 1 ? "pan" : "none";
    }
    if (gesture?.mode === "pan") zoom.panBy(dx, dy);
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
      const pinned = highlight.pinned;
      const same = pinned?.kind === "class" && pinned.id === id;
      highlight.pin(id === 0 || same ? null : { kind: "class", id });
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
}
