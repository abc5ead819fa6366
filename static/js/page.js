// Small helpers the parsing page's modules share: find an element, build one, say something
// to screen readers or in a toast, and put counts and shares into words.

export const $ = (id) => document.getElementById(id);

export function announce(text) {
  $("status").textContent = text;
}

let toastTimer = 0;
export function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 3000);
}

export function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

export function plural(n, word) {
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
export function foundText(result) {
  const persons = result.persons.length;
  const parts = result.classes.filter((c) => c.id !== 0).length;
  if (!parts) return "Nobody was found in this photo.";
  if (!persons) return `Found ${kindsOfPart(parts)}, but no person the model is sure of.`;
  return `Found ${people(persons)} and ${kindsOfPart(parts)}.`;
}

export function percent(fraction) {
  const p = fraction * 100;
  if (p > 0 && p < 0.1) return "<0.1%";
  return `${p.toFixed(p < 10 ? 1 : 0)}%`;
}

/** What the progress card (and the full-size export's status line) says in each phase. */
export const PHASE_TEXT = {
  queue: "Waiting for a turn…",
  parse: "Finding people and parts…",
};
