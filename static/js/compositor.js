// Draws the parsing result on a canvas from the photo and the label map, entirely in the
// browser: opacity, hidden classes, a highlighted person or class and the before/after split
// change the picture without asking the server again.

const DIM = 0.28; // brightness kept outside a highlighted person or class

// Untinted blend tables (value → value, and value → dimmed value) for 256 ids × 3 channels.
const IDENTITY = (() => {
  const lit = new Uint8ClampedArray(256 * 768);
  const dim = new Uint8ClampedArray(256 * 768);
  for (let i = 0; i < lit.length; i++) {
    lit[i] = i & 255;
    dim[i] = (i & 255) * DIM;
  }
  return { lit, dim };
})();

export class Compositor {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.alpha = 0.6;
    this.hidden = new Set(); // class ids not tinted
    this.highlight = null; // {kind: "person" | "class", id}
    this.split = null; // null, or 0..1: left of it shows the photo, right the overlay
    this.photo = null;
    this.result = null;
    this.frame = 0;
  }

  /**
   * @param {ImageBitmap | HTMLCanvasElement} photo drawn at the label map's size
   * @param {{width, height, labels, classes, persons}} result from decodeResult
   */
  load(photo, result) {
    const { width, height } = result;
    const scratch = new OffscreenCanvas(width, height);
    const sctx = scratch.getContext("2d", { willReadFrequently: true });
    sctx.fillStyle = "#fff"; // transparent photos are shown, and blended, on white
    sctx.fillRect(0, 0, width, height);
    sctx.drawImage(photo, 0, 0, width, height);
    this.photo = sctx.getImageData(0, 0, width, height).data;
    this.result = result;
    this.palette = new Uint8Array(256 * 3);
    for (const c of result.classes) this.palette.set(c.rgb, c.id * 3);
    this.personMasks = new Map(result.persons.map((p) => [p.id, p.mask]));
    this.canvas.width = width;
    this.canvas.height = height;
    this.image = this.ctx.createImageData(width, height);
    this.draw();
  }

  /** Paint with other colours: `classes` as in `load` (`id`, `rgb`). */
  recolour(classes) {
    if (!this.result) return;
    for (const c of classes) this.palette.set(c.rgb, c.id * 3);
    this.update();
  }

  /** Show the bare photo (while the server works), at most `maxSide` pixels on its long side. */
  preview(photo, maxSide = 1920) {
    const scale = Math.min(1, maxSide / Math.max(photo.width, photo.height));
    this.canvas.width = Math.round(photo.width * scale);
    this.canvas.height = Math.round(photo.height * scale);
    this.ctx.drawImage(photo, 0, 0, this.canvas.width, this.canvas.height);
  }

  /** Ask for a redraw on the next animation frame (slider drags fire faster than that). */
  update(changes = {}) {
    Object.assign(this, changes);
    if (!this.result || this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    if (!this.result) return;
    this.paint(this.image.data, {
      alpha: this.alpha,
      highlight: this.highlight,
      split: this.split,
    });
    this.ctx.putImageData(this.image, 0, 0);
    if (this.split !== null) this.drawDivider();
  }

  /**
   * Blend tables: for each class id and channel, photo value → output value, once for pixels
   * in the light and once for dimmed ones. Per pixel that leaves three table look-ups.
   */
  tables({ alpha, highlight }) {
    const focusClass = highlight?.kind === "class" ? highlight.id : -1;
    const lit = IDENTITY.lit.slice();
    const dim = IDENTITY.dim.slice();
    for (const c of this.result.classes) {
      let a = c.id === 0 || this.hidden.has(c.id) ? 0 : alpha;
      if (c.id === focusClass) a = Math.max(a, 0.75);
      if (a === 0) continue;
      for (let ch = 0; ch < 3; ch++) {
        const colour = this.palette[c.id * 3 + ch];
        const at = c.id * 768 + ch * 256;
        for (let v = 0; v < 256; v++) {
          const blended = v + (colour - v) * a;
          lit[at + v] = blended;
          dim[at + v] = blended * DIM;
        }
      }
    }
    return { lit, dim, focusClass };
  }

  paint(out, { alpha, highlight, split }) {
    const { width, height, labels } = this.result;
    const photo = this.photo;
    const { lit, dim, focusClass } = this.tables({ alpha, highlight });
    const personMask = highlight?.kind === "person" ? this.personMasks.get(highlight.id) : null;
    const splitX = split === null ? 0 : Math.round(split * width);
    for (let y = 0; y < height; y++) {
      const row = y * width;
      // Left of the divider: the bare photo.
      out.set(photo.subarray(row * 4, (row + splitX) * 4), row * 4);
      for (let i = row + splitX; i < row + width; i++) {
        const id = labels[i];
        let table = lit;
        if (personMask) table = personMask[i] ? lit : dim;
        else if (focusClass >= 0 && id !== focusClass) table = dim;
        const o = i * 4;
        const at = id * 768;
        out[o] = table[at + photo[o]];
        out[o + 1] = table[at + 256 + photo[o + 1]];
        out[o + 2] = table[at + 512 + photo[o + 2]];
        out[o + 3] = 255;
      }
    }
  }

  drawDivider() {
    const { width, height } = this.result;
    const x = Math.round(this.split * width);
    const ctx = this.ctx;
    const unit = Math.max(1, Math.round(Math.max(width, height) / 600));
    ctx.save();
    ctx.fillStyle = "rgba(255,255,255,0.95)";
    ctx.fillRect(x - unit, 0, 2 * unit, height);
    ctx.beginPath();
    ctx.arc(x, height / 2, 14 * unit, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#333";
    ctx.beginPath();
    for (const dir of [-1, 1]) {
      ctx.moveTo(x + dir * 9 * unit, height / 2);
      ctx.lineTo(x + dir * 3 * unit, height / 2 - 6 * unit);
      ctx.lineTo(x + dir * 3 * unit, height / 2 + 6 * unit);
    }
    ctx.fill();
    ctx.restore();
  }

  /** What is under a canvas pixel: {classId, personId | null}. */
  pick(x, y) {
    if (!this.result) return null;
    const { width, height, labels, persons } = this.result;
    if (x < 0 || y < 0 || x >= width || y >= height) return null;
    const i = y * width + x;
    const person = persons.find((p) => p.mask?.[i]);
    return { classId: labels[i], personId: person ? person.id : null };
  }

  /** The overlay as shown (opacity and hidden classes), without highlight or split, as PNG. */
  async exportPng() {
    const { width, height } = this.result;
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(width, height);
    this.paint(image.data, { alpha: this.alpha, highlight: null, split: null });
    ctx.putImageData(image, 0, 0);
    return canvas.convertToBlob({ type: "image/png" });
  }

  /** A PNG of `width` × `height` whose pixel i gets `fill(out, i * 4, i)`. */
  async #pngOf(fill) {
    const { width, height } = this.result;
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(width, height);
    const out = image.data;
    for (let i = 0; i < width * height; i++) fill(out, i * 4, i);
    ctx.putImageData(image, 0, 0);
    return canvas.convertToBlob({ type: "image/png" });
  }

  /** The photo's own pixels where `keep(i)`, transparent elsewhere, as PNG. */
  #cutout(keep) {
    const photo = this.photo;
    return this.#pngOf((out, o, i) => {
      if (!keep(i)) return; // stays 0: transparent
      out[o] = photo[o];
      out[o + 1] = photo[o + 1];
      out[o + 2] = photo[o + 2];
      out[o + 3] = 255;
    });
  }

  /** The photo where the label map holds one of `classIds`, transparent elsewhere (PNG). */
  exportCutout(classIds) {
    const wanted = new Uint8Array(256);
    for (const id of classIds) wanted[id] = 1;
    const labels = this.result.labels;
    return this.#cutout((i) => wanted[labels[i]] === 1);
  }

  /** Person `id`'s pixels of the photo, transparent elsewhere (PNG). */
  exportPersonCutout(id) {
    const mask = this.personMasks.get(id);
    return this.#cutout((i) => mask[i] === 1);
  }

  /** Person `id`'s mask: white inside, black outside, opaque (PNG). */
  exportPersonMask(id) {
    const mask = this.personMasks.get(id);
    return this.#pngOf((out, o, i) => {
      const v = mask[i] ? 255 : 0;
      out[o] = v;
      out[o + 1] = v;
      out[o + 2] = v;
      out[o + 3] = 255;
    });
  }

  /** Forget the photo and the result and blank the canvas (its size goes to 0). */
  clear() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (this.image) this.image.data.fill(0);
    if (this.photo) this.photo.fill(0);
    if (this.result) this.result.labels.fill(0);
    this.photo = this.result = this.image = this.personMasks = null;
    this.hidden.clear();
    this.highlight = null;
    this.split = null;
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.canvas.width = 0;
    this.canvas.height = 0;
  }
}
