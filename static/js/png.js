// A small PNG decoder for label maps and masks.
//
// Why not <img> + canvas.getImageData? Canvas read-back is not exact everywhere: browsers with
// anti-fingerprinting (Brave, Firefox resistFingerprinting) add noise to it, and colour
// management may touch the values. Class ids must survive bit for bit, so the bytes are
// inflated here with the browser's own DecompressionStream and unfiltered in plain JS.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }; // colour type -> samples per pixel

export class PngError extends Error {}

function u32(bytes, at) {
  return ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
}

function readChunks(bytes) {
  for (let i = 0; i < SIGNATURE.length; i++) {
    if (bytes[i] !== SIGNATURE[i]) throw new PngError("not a PNG");
  }
  const header = {};
  const idat = [];
  let palette = null;
  let pos = 8;
  while (pos + 12 <= bytes.length) {
    const length = u32(bytes, pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    pos += 12 + length;
    if (type === "IHDR") {
      header.width = u32(data, 0);
      header.height = u32(data, 4);
      header.bitDepth = data[8];
      header.colorType = data[9];
      header.interlace = data[12];
    } else if (type === "PLTE") {
      palette = data.slice();
    } else if (type === "IDAT") {
      idat.push(data);
    } else if (type === "IEND") {
      break;
    }
  }
  if (!header.width || !idat.length) throw new PngError("PNG without header or image data");
  return { header, idat, palette };
}

async function inflate(parts) {
  const stream = new Blob(parts).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

// Undo the per-row filters in place into `out` (rows of `stride` bytes, no filter byte).
function unfilter(raw, out, height, stride, bpp) {
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const src = y * (stride + 1) + 1;
    const row = y * stride;
    const prev = row - stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? out[row + x - bpp] : 0;
      const b = y > 0 ? out[prev + x] : 0;
      const c = x >= bpp && y > 0 ? out[prev + x - bpp] : 0;
      let v = raw[src + x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) v += paeth(a, b, c);
      else if (filter !== 0) throw new PngError(`bad PNG filter ${filter}`);
      out[row + x] = v & 0xff;
    }
  }
}

/**
 * Decode a non-interlaced PNG.
 * @param {Uint8Array} bytes
 * @returns {Promise<{width: number, height: number, channels: number, colorType: number,
 *   data: Uint8Array, palette: Uint8Array | null}>} `data` holds one byte per sample, row-major
 *   (width * height * channels); 16-bit samples keep their high byte; palette images keep indices.
 */
export async function decodePng(bytes) {
  const { header, idat, palette } = readChunks(bytes);
  const { width, height, bitDepth, colorType, interlace } = header;
  const channels = CHANNELS[colorType];
  if (!channels) throw new PngError(`unsupported PNG colour type ${colorType}`);
  if (interlace !== 0) throw new PngError("interlaced PNGs are not supported");
  const bitsPerPixel = channels * bitDepth;
  const stride = Math.ceil((width * bitsPerPixel) / 8);
  const raw = await inflate(idat);
  if (raw.length < height * (stride + 1)) throw new PngError("truncated PNG data");
  const rows = new Uint8Array(stride * height);
  unfilter(raw, rows, height, stride, Math.max(1, bitsPerPixel >> 3));

  const data = new Uint8Array(width * height * channels);
  if (bitDepth === 8) {
    data.set(rows.subarray(0, data.length));
  } else if (bitDepth === 16) {
    for (let i = 0; i < data.length; i++) data[i] = rows[2 * i];
  } else {
    // 1, 2 or 4 bits, one channel (grey or palette): unpack, scaling grey to 0..255.
    const perByte = 8 / bitDepth;
    const mask = (1 << bitDepth) - 1;
    const scale = colorType === 3 ? 1 : 255 / mask;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const byte = rows[y * stride + Math.floor(x / perByte)];
        const shift = 8 - bitDepth * ((x % perByte) + 1);
        data[y * width + x] = ((byte >> shift) & mask) * scale;
      }
    }
  }
  return { width, height, channels, colorType, data, palette };
}

/** Base64 (standard alphabet) to bytes, without fetch(data:) which a strict CSP refuses. */
export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
