// Draws the parsing result on a canvas from the photo and the label map, entirely in the
// browser: opacity, hidden classes, a highlighted person or class and the before/after split
// change the picture without asking the server again.

const DIM = 0.28; // brightness kept outside a highlighted person or class

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

  paint(out, { alpha, highlight, split }) {
    const { width, height, labels } = this.result;
    const photo = this.photo;
    const palette = this.palette;
    const tint = new Float32Array(256); // per class: overlay weight, 0 when hidden
    for (const c of this.result.classes) {
      if (c.id !== 0 && !this.hidden.has(c.id)) tint[c.id] = alpha;
    }
    const personMask = highlight?.kind === "person" ? this.personMasks.get(highlight.id) : null;
    const focusClass = highlight?.kind === "class" ? highlight.id : -1;
    const splitX = split === null ? -1 : Math.round(split * width);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        const o = i * 4;
        const id = labels[i];
        let r = photo[o];
        let g = photo[o + 1];
        let b = photo[o + 2];
        if (x >= splitX) {
          let a = tint[id];
          let keep = 1;
          if (personMask) keep = personMask[i] ? 1 : DIM;
          else if (focusClass >= 0) {
            if (id === focusClass) a = Math.max(a, 0.75);
            else keep = DIM;
          }
          if (a > 0) {
            r += (palette[id * 3] - r) * a;
            g += (palette[id * 3 + 1] - g) * a;
            b += (palette[id * 3 + 2] - b) * a;
          }
          r *= keep;
          g *= keep;
          b *= keep;
        }
        out[o] = r;
        out[o + 1] = g;
        out[o + 2] = b;
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
