// Exports: the downloads and the copy to the clipboard, and their names. Drawn in the browser
// from the result on screen (its working size); with "The photo's own size" ticked, from a
// second parse of the same photo at its own size (`size=original`), made once on demand and
// forgotten with the result. Names come from the photo's name.

import { ParseError, parseImage } from "./api.js";
import { Compositor } from "./compositor.js";
import { $, announce, el, PHASE_TEXT, toast } from "./page.js";
import { ParseProgress } from "./progress.js";
import { decodeResult } from "./result.js";

/** The base of download names: `beach.jpg` → "beach"; no name (a pasted image) → "photo". */
export function baseName(name) {
  const stem = (name || "").replace(/\.[^.]*$/, "");
  const safe = stem
    .normalize("NFC")
    .replace(/[^\p{L}\p{N}._-]+/gu, "-")
    .replace(/^[-.]+|[-.]+$/g, "")
    .slice(0, 80);
  return safe || "photo";
}

/**
 * Wire the export controls. `current()` is the result on screen (index.js's session, or
 * null), `compositor` draws it, `applyPalette` recolours a freshly decoded result.
 */
export function createExports({ compositor, settings, current, applyPalette }) {
  const objectUrls = new Set();

  function renderExports(result) {
    const { width, height } = current().ownSize;
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
        const b = el("button", { type: "button", className: "btn btn-small btn-secondary" }, [
          text,
        ]);
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
    const session = current();
    if (!$("full-size").checked || $("full-size-row").hidden) {
      return { compositor, json: session.json, text: session.text, result: session.result };
    }
    if (!session.full) {
      const status = $("save-status");
      const progress = new ParseProgress((facts) => {
        if (current() !== session) return;
        const lines = [PHASE_TEXT[facts.phase] || "Sending the photo again…", facts.placeText];
        status.textContent = [...lines, facts.leftText, facts.elapsedText]
          .filter(Boolean)
          .join(" · ");
      });
      announce("Parsing the photo again at its own size.");
      let answer;
      try {
        answer = await parseImage(session.blob, {
          params: { instances: "true", mask_format: "rle", size: "original" },
          maxBytes: settings.maxBytes,
          onProgress: (phase, fraction) => {
            if (phase === "upload") progress.upload(fraction);
            else progress.uploaded();
          },
        });
      } finally {
        progress.stop();
        if (current() === session) status.textContent = "";
      }
      const { json, text } = answer;
      const result = applyPalette(await decodeResult(json));
      const photo = await createImageBitmap(session.blob, { imageOrientation: "from-image" });
      const full = new Compositor(new OffscreenCanvas(1, 1));
      try {
        full.load(photo, result);
      } finally {
        photo.close();
      }
      if (current() !== session) {
        full.clear(); // cleared while it was being made
        return null;
      }
      session.full = { compositor: full, json, text, result };
    }
    const { compositor: full } = session.full;
    full.alpha = compositor.alpha;
    full.hidden = new Set(compositor.hidden);
    return session.full;
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

  /** Run `make(source)` for a Blob and download it as `<photo>-<suffix>`. */
  async function save(suffix, make) {
    if (!current()) return;
    const name = `${current().name}-${suffix}`;
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

  async function copyOverlay() {
    if (!current()) return;
    if (!navigator.clipboard?.write || typeof ClipboardItem === "undefined") {
      toast("This browser can't copy images: use “Overlay PNG”.");
      return;
    }
    try {
      const item = new ClipboardItem({ "image/png": compositor.exportPng() });
      await navigator.clipboard.write([item]);
      toast("Overlay copied to the clipboard");
    } catch {
      toast("Copying was refused by the browser: use “Overlay PNG”.");
    }
  }

  function chosenParts() {
    return current()
      .result.classes.map((c) => c.id)
      .filter((id) => id !== 0 && !compositor.hidden.has(id));
  }

  /** Revoke the object URLs of downloads still starting. */
  function forget() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls.clear();
  }

  $("download-overlay").addEventListener("click", () =>
    save("overlay.png", (s) => s.compositor.exportPng()),
  );
  $("download-cutout").addEventListener("click", () => {
    if (!current()) return;
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
    if (!button || !current()) return;
    const id = Number(button.dataset.person);
    const kind = button.dataset.kind;
    save(`person-${id}-${kind}.png`, (s) =>
      kind === "mask" ? s.compositor.exportPersonMask(id) : s.compositor.exportPersonCutout(id),
    );
  });
  $("copy-overlay").addEventListener("click", copyOverlay);

  return { render: renderExports, copyOverlay, forget };
}
