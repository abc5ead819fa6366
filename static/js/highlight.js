// The legend (the parts found) and the persons list, and what they single out on the picture:
// the row under the pointer or the focus while it is there, the one clicked (tapped) until it
// is clicked again. Ticking a part off the legend hides it from the overlay and the cutout.

import { $, el, percent, plural } from "./page.js";

/** The two lists over `compositor`; `pinned` is {kind: "person" | "class", id} or null. */
export function createHighlight(compositor) {
  let hoverHighlight = null;
  let pinned = null;

  function refreshHighlight() {
    compositor.update({ highlight: hoverHighlight || pinned });
  }

  /** Pointer, focus and click on `node` highlight `target`: for a while, or until let go. */
  function follow(node, target, focusables = [node]) {
    const enter = () => {
      hoverHighlight = target;
      refreshHighlight();
    };
    const leave = () => {
      hoverHighlight = null;
      refreshHighlight();
    };
    node.addEventListener("pointerenter", (e) => {
      if (e.pointerType === "mouse") enter();
    });
    node.addEventListener("pointerleave", leave);
    for (const control of focusables) {
      control.addEventListener("focus", enter);
      control.addEventListener("blur", leave);
    }
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
      follow(item, { kind: "class", id: c.id }, [box, pickButton]);
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
          const label = names.get(id)?.label || `class ${id}`;
          const dot = el("span", { className: "dot", title: label });
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
      follow(button, { kind: "person", id: p.id });
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

  /** Forget what is highlighted (the lists themselves are emptied by the caller). */
  function reset() {
    hoverHighlight = null;
    pinned = null;
  }

  return {
    renderLegend,
    renderPersons,
    setAllClasses,
    pin,
    reset,
    get pinned() {
      return pinned;
    },
  };
}
