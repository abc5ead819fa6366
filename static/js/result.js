// Turn the JSON answer of POST /api/v1/parse into typed arrays the compositor draws from:
// the label map (one class id per pixel) and one 0/1 mask per person.

import { base64ToBytes, decodePng } from "./png.js";

/**
 * Decode a COCO run-length encoding: {size: [h, w], counts: "compressed" | [runs]}.
 * Runs alternate 0s and 1s, starting with 0s, in column-major order (pycocotools' layout).
 * @returns {Uint8Array} row-major h * w, 1 inside the mask
 */
export function decodeRle(rle) {
  const [height, width] = rle.size;
  const runs = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  const mask = new Uint8Array(height * width);
  let index = 0; // column-major position
  for (let r = 0; r < runs.length; r++) {
    const end = Math.min(index + runs[r], height * width);
    if (r % 2 === 1) {
      for (let i = index; i < end; i++) mask[(i % height) * width + Math.floor(i / height)] = 1;
    }
    index = end;
  }
  return mask;
}

// pycocotools' compressed counts: 5-bit groups in ASCII (offset 48) with a continuation bit and
// sign extension; from the third run on, each value is stored as a delta to the run two back.
function rleCounts(text) {
  const runs = [];
  let p = 0;
  while (p < text.length) {
    let value = 0;
    let shift = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p++) - 48;
      value |= (c & 0x1f) << shift;
      more = (c & 0x20) !== 0;
      shift += 5;
      if (!more && c & 0x10) value |= -1 << shift;
    }
    if (runs.length > 2) value += runs[runs.length - 2];
    runs.push(value);
  }
  return runs;
}

async function decodeMask(mask, width, height) {
  if (!mask) return null;
  if (mask.format === "rle") {
    const rle = mask.rle || mask;
    return decodeRle({ size: rle.size || [height, width], counts: rle.counts });
  }
  if (mask.format === "png") {
    const png = await decodePng(base64ToBytes(mask.data));
    const out = new Uint8Array(png.width * png.height);
    for (let i = 0; i < out.length; i++) out[i] = png.data[i * png.channels] ? 1 : 0;
    return out;
  }
  throw new Error(`unknown mask format ${mask.format}`);
}

/** "UpperClothes" → "Upper clothes", "Left-arm" → "Left arm": the CIHP names, for reading. */
export function prettyName(name) {
  const words = name.replace(/-/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2");
  return words.charAt(0) + words.slice(1).toLowerCase();
}

export function hexToRgb(hex) {
  const n = parseInt(hex.replace("#", ""), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/**
 * @param {object} json the API answer
 * @returns {Promise<{width, height, labels: Uint8Array, labelPng: Uint8Array,
 *   classes: Array<{id, name, color, rgb, pixels, fraction}>,
 *   persons: Array<{id, score, bbox, parts, mask: Uint8Array | null}>}>}
 */
export async function decodeResult(json) {
  const labelPng = base64ToBytes(json.label_map.data);
  const png = await decodePng(labelPng);
  const { width, height } = png;
  let labels = png.data;
  if (png.channels > 1) {
    labels = new Uint8Array(width * height);
    for (let i = 0; i < labels.length; i++) labels[i] = png.data[i * png.channels];
  }
  const classes = (json.classes || []).map((c) => ({
    ...c,
    label: prettyName(c.name),
    rgb: hexToRgb(c.color),
  }));
  const persons = await Promise.all(
    (json.persons || []).map(async (p) => ({
      id: p.id,
      score: p.score,
      bbox: p.bbox,
      parts: p.parts || [],
      mask: await decodeMask(p.mask, width, height),
    })),
  );
  return { width, height, labels, labelPng, classes, persons };
}
