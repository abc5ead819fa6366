// Talking to the service: client-side checks before an upload, the upload itself (with
// progress), and every failure turned into plain words.

export const ACCEPTED = {
  "image/jpeg": "JPEG",
  "image/png": "PNG",
  "image/webp": "WebP",
};

const EXTENSIONS = { "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp" };

/** A failure worth showing: `title` and `detail` in plain words; `retryAfter` in seconds. */
export class ParseError extends Error {
  constructor(title, detail = "", { status = 0, code = "", retryAfter = null, waitText } = {}) {
    super(title);
    this.title = title;
    this.detail = detail;
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    // For errors with a wait: the detail for `seconds` left, so a page can count it down.
    this.waitText = waitText || null;
  }
}

/** The type the first bytes say, or null (the server checks again: this only saves a trip). */
export function sniffType(head) {
  const starts = (sig, at = 0) => sig.every((b, i) => head[at + i] === b);
  if (starts([0xff, 0xd8, 0xff])) return "image/jpeg";
  if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "image/png";
  if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return "image/webp";
  if (starts([0x47, 0x49, 0x46, 0x38])) return "image/gif";
  if (starts([0x42, 0x4d])) return "image/bmp";
  if (starts([0x25, 0x50, 0x44, 0x46])) return "application/pdf";
  return null;
}

export function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(n >= 10 * 1024 * 1024 ? 0 : 1)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KB`;
  return `${n} bytes`;
}

export function formatWait(seconds) {
  if (seconds < 60) return `${seconds} second${seconds === 1 ? "" : "s"}`;
  const minutes = Math.ceil(seconds / 60);
  return `${minutes} minute${minutes === 1 ? "" : "s"}`;
}

const typeName = (mime) => ACCEPTED[mime] || (mime ? mime.replace("image/", "").toUpperCase() : "");

/**
 * Check a file before sending it. Resolves to its type; rejects with a ParseError saying why.
 * @param {Blob} file
 * @param {number} maxBytes
 */
export async function checkFile(file, maxBytes) {
  const wanted = "Choose a JPEG, PNG or WebP photo.";
  if (file.size === 0) throw new ParseError("This file is empty.", wanted);
  if (file.size > maxBytes) {
    throw new ParseError(
      `This photo is too large (${formatBytes(file.size)}).`,
      `The limit is ${formatBytes(maxBytes)}. Try a smaller or more compressed copy.`,
    );
  }
  const declared = file.type || "";
  if (declared && !ACCEPTED[declared]) {
    const kind = declared.startsWith("image/")
      ? `${typeName(declared)} images`
      : "This kind of file";
    throw new ParseError(`${kind} can't be parsed.`, wanted);
  }
  const sniffed = sniffType(new Uint8Array(await file.slice(0, 16).arrayBuffer()));
  if (declared && sniffed && declared !== sniffed) {
    throw new ParseError(
      `This file says it is ${typeName(declared)} but contains ${typeName(sniffed)}.`,
      ACCEPTED[sniffed] ? "Save it again in a standard format and retry." : wanted,
    );
  }
  if (!sniffed || !ACCEPTED[sniffed]) {
    const what = sniffed ? `a ${typeName(sniffed)} file` : "not an image that can be read";
    throw new ParseError(`This file is ${what}.`, wanted);
  }
  return sniffed;
}

/**
 * Check a picked, dropped or pasted file and decode it for drawing. Resolves to
 * {blob, photo}: `blob` carries the sniffed type (pasted files often have none), `photo` is an
 * ImageBitmap with the EXIF orientation applied, as the server applies it. Rejects with a
 * ParseError saying why.
 */
export async function openPhoto(file, maxBytes) {
  const mime = await checkFile(file, maxBytes);
  const blob = file.type === mime ? file : new Blob([file], { type: mime });
  try {
    const photo = await createImageBitmap(blob, { imageOrientation: "from-image" });
    return { blob, photo };
  } catch {
    throw new ParseError("This image couldn't be read.", "It may be damaged or cut short.");
  }
}

function retryAfterSeconds(xhr) {
  const value = xhr.getResponseHeader("Retry-After");
  if (!value) return null;
  const seconds = /^\d+$/.test(value.trim())
    ? Number(value)
    : Math.round((Date.parse(value) - Date.now()) / 1000);
  return Number.isFinite(seconds) ? Math.max(1, seconds) : null;
}

/** The plain-words version of an error answer from the API. */
export function describeError(status, body, retryAfter, maxBytes) {
  const code = body?.error?.code || "";
  const serverMessage = body?.error?.message || "";
  const opts = { status, code, retryAfter };
  const wait = retryAfter ? formatWait(retryAfter) : null;
  const counted = (text) => ({ ...opts, waitText: (s) => text(formatWait(s)) });
  switch (status) {
    case 413:
      return new ParseError(
        "This photo is too large for the service.",
        serverMessage.match(/pixel/i)
          ? "It has too many pixels. Try a smaller copy."
          : `The limit is ${formatBytes(maxBytes)}. Try a smaller or more compressed copy.`,
        opts,
      );
    case 415:
      return new ParseError(
        "This file isn't a JPEG, PNG or WebP image.",
        "The service looked at its content and refused it. Choose another photo.",
        opts,
      );
    case 422:
      return new ParseError(
        "This image couldn't be read.",
        "It may be damaged or cut short. Try opening and saving it again.",
        opts,
      );
    case 429:
      if (code === "temporarily_banned") {
        const later = (w) => `You can try again in ${w}.`;
        return new ParseError(
          "Too many files were refused, so uploads are paused.",
          wait ? later(wait) : "Try again later.",
          counted(later),
        );
      }
      {
        const later = (w) => `Please wait ${w}, then try again.`;
        return new ParseError(
          "Too many photos in a short time.",
          wait ? later(wait) : "Please wait a moment, then try again.",
          counted(later),
        );
      }
    case 503: {
      const later = (w) => `Try again in ${w}.`;
      return new ParseError(
        code === "not_ready" ? "The service is still starting." : "The service is busy right now.",
        wait ? later(wait) : "Try again in a moment.",
        counted(later),
      );
    }
    case 401:
    case 403:
      return new ParseError("This service needs an API key.", serverMessage, opts);
    default:
      return new ParseError(
        "Something went wrong on the server.",
        serverMessage || `It answered with status ${status}. Try again.`,
        opts,
      );
  }
}

/**
 * Upload an image to POST /api/v1/parse and resolve to {json, text}.
 * @param {Blob} blob
 * @param {{params?: object, maxBytes: number, signal?: AbortSignal,
 *   onProgress?: (phase: string, fraction: number) => void}} options
 */
export function parseImage(blob, { params = {}, maxBytes, onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const query = new URLSearchParams({ output: "json", ...params });
    xhr.open("POST", `/api/v1/parse?${query}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "text";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress?.("upload", e.loaded / e.total);
    };
    xhr.upload.onload = () => onProgress?.("parse", 1);
    xhr.onerror = () =>
      reject(
        new ParseError(
          "Couldn't reach the service.",
          "Check the connection (or whether the service is running) and try again.",
        ),
      );
    xhr.onabort = () => reject(new ParseError("Cancelled.", "", { code: "aborted" }));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status === 200 && body) resolve({ json: body, text: xhr.responseText });
      else if (xhr.status === 200) reject(new ParseError("The answer couldn't be read.", ""));
      else reject(describeError(xhr.status, body, retryAfterSeconds(xhr), maxBytes));
    };
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    // A neutral file name: the user's own name is nobody's business, not even the server's.
    const form = new FormData();
    form.append("image", blob, `image.${EXTENSIONS[blob.type] || "png"}`);
    xhr.send(form);
  });
}

/** The page's settings from data attributes on <body> (no inline script under the CSP). */
export function pageSettings() {
  const data = document.body.dataset;
  return {
    maxBytes: Number(data.maxUploadBytes) || 10 * 1024 * 1024,
    idleSeconds: Number(data.idleSeconds) || 60,
    countdownSeconds: Number(data.countdownSeconds) || 3,
    // The longest the server may take over one parse (its own deadline, upload and answer
    // included): a client deadline is never shorter than this.
    parseTimeoutSeconds: Number(data.parseTimeoutSeconds) || 0,
    fileFallback: data.fileFallback === "true",
    palettes: data.palettes ? JSON.parse(data.palettes) : {},
  };
}
