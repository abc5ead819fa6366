// Honest waiting: while a parse is in flight, the elapsed time, and — once the upload is done —
// the place in the engine's queue and the time left, from the server's own figures
// (GET /api/v1/queue: parses in flight, measured seconds per image). The server keeps nothing
// about this request, so the page works its place out: the smallest number of parses in
// flight seen since its upload finished (ours is one of them; a parse never moves back, and
// parses sent after it only make that an upper bound).

const QUEUE_URL = "/api/v1/queue";
const POLL_MS = 1500;
// The first look once the upload is done: time for a proxy that holds the body (nginx) to
// hand the request over, so that it is counted.
const FIRST_POLL_MS = 300;

/** 7 → "0:07", 65 → "1:05", 3700 → "1:01:40". */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const two = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

/** Seconds left in words: "about 12 s", "about 2 min". */
export function aboutTime(seconds) {
  if (seconds < 60) return `about ${Math.max(1, Math.round(seconds))} s`;
  const minutes = Math.round(seconds / 60);
  return `about ${minutes} min`;
}

/**
 * Follows one parse from its start to its answer. `onChange(facts)` gets, at least once a
 * second: {phase: "upload" | "queue" | "parse", place: number | null, placeText, leftText,
 * elapsedText, uploadFraction}. Call `uploaded()` when the upload is done, `stop()` at the end.
 */
export class ParseProgress {
  constructor(onChange, { pollMs = POLL_MS } = {}) {
    this.onChange = onChange;
    this.pollMs = pollMs;
    this.started = performance.now();
    this.phase = "upload";
    this.uploadFraction = 0;
    this.place = null;
    this.placeSince = 0;
    this.serviceSeconds = null;
    this.stopped = false;
    this.controller = new AbortController();
    this.ticker = setInterval(() => this.emit(), 1000);
    this.poller = 0;
    this.emit();
  }

  upload(fraction) {
    this.uploadFraction = fraction;
    this.emit();
  }

  uploaded() {
    if (this.stopped || this.phase !== "upload") return;
    this.phase = "queue";
    this.emit();
    this.poller = setTimeout(() => this.poll(), FIRST_POLL_MS);
  }

  async poll() {
    if (this.stopped) return;
    try {
      const answer = await fetch(QUEUE_URL, {
        cache: "no-store",
        signal: this.controller.signal,
      });
      if (answer.ok) this.learn(await answer.json());
    } catch {
      // No figures (an older server, a dropped connection): the elapsed time still runs.
    }
    if (!this.stopped) this.poller = setTimeout(() => this.poll(), this.pollMs);
  }

  learn(queue) {
    if (this.stopped) return;
    const counted = queue.in_flight ?? (queue.queued || 0) + (queue.running || 0);
    const inside = Math.max(1, counted);
    if (this.place === null || inside < this.place) {
      this.place = inside;
      this.placeSince = performance.now();
    }
    if (typeof queue.service_seconds === "number") this.serviceSeconds = queue.service_seconds;
    this.phase = this.place <= (queue.capacity || 1) ? "parse" : "queue";
    this.emit();
  }

  facts() {
    const now = performance.now();
    const elapsed = (now - this.started) / 1000;
    let placeText = "";
    let leftText = "";
    if (this.phase !== "upload") {
      if (this.place === null) placeText = "Asking the service…";
      else if (this.phase === "parse") placeText = "Your photo is being parsed now";
      else placeText = `Place in the queue: ${this.place}`;
      if (this.serviceSeconds === null) {
        leftText = this.place === null ? "" : "Time left: not measured yet";
      } else {
        const left = this.place * this.serviceSeconds - (now - this.placeSince) / 1000;
        leftText =
          left >= 1 ? `Time left: ${aboutTime(left)}` : "Time left: a little longer than usual";
      }
    }
    return {
      phase: this.phase,
      place: this.place,
      placeText,
      leftText,
      elapsedText: `Elapsed: ${clock(elapsed)}`,
      uploadFraction: this.uploadFraction,
    };
  }

  emit() {
    if (!this.stopped) this.onChange(this.facts());
  }

  stop() {
    this.stopped = true;
    clearInterval(this.ticker);
    clearTimeout(this.poller);
    this.controller.abort();
  }
}
