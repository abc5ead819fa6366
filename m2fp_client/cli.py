"""Command line for the service's API.

    python -m m2fp_client parse photo.jpg --url https://localhost:8443 \\
        --ca-bundle var/tls/ca.pem --out overlay.png
    python -m m2fp_client parse photo.jpg --json --out result.json
    python -m m2fp_client parse photos/ more.jpg --out parsed/ --output cutout --classes 5,9
    python -m m2fp_client classes --ca-bundle var/tls/ca.pem

`parse` with one image file and an `--out` that is not a directory writes that one file (JSON
to stdout without `--out`); with several inputs, a directory, or `--out DIR/` it is a batch
(m2fp_client/batch.py): a progress bar, a summary, output files named after the inputs.

The API key, when the service requires one, is read from --api-key or, better (a command line
is visible to other users of the machine), the M2FP_API_KEY environment variable. Exit status:
0 done, 1 the service refused or failed (the message says why, with its request id; in a
batch: any file failed), 2 bad usage or an unreachable service (a batch stops at the first
file that cannot reach it), 130 a batch interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from m2fp_client.batch import EXISTS, FAILED, WRITTEN, BatchRunner, Outcome, Report, plan_batch
from m2fp_client.client import Client, ClientError, ConnectionFailed, ServiceError

PLAIN_PROGRESS_EVERY_S = 5.0
LISTED_SKIPS = 10


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="https://localhost:8443", help="service base URL")
    common.add_argument("--ca-bundle", type=Path, help="CA file to trust (var/tls/ca.pem)")
    common.add_argument("--api-key", help="API key (default: $M2FP_API_KEY)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt")
    common.add_argument("--retries", type=int, default=3, help="retries on 429/502/503/504")

    parser = argparse.ArgumentParser(
        prog="python -m m2fp_client", description="Client for the human-parsing service."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    parse = sub.add_parser("parse", parents=[common], help="parse images")
    parse.add_argument("inputs", nargs="+", type=Path, help="JPEG, PNG or WebP files, folders")
    # a string: Path() would drop the trailing "/" that asks for a folder
    parse.add_argument("--out", help="output file, or folder for a batch (DIR/)")
    parse.add_argument("--output", help="overlay (default), json, cutout, or another output")
    parse.add_argument("--json", action="store_true", help="same as --output json")
    parse.add_argument("--cutout", metavar="CLASSES", help="same as --output cutout --classes")
    parse.add_argument("--alpha", type=float, help="overlay opacity 0..1")
    parse.add_argument("--classes", help="classes of a cutout or overlay: 5,9,…")
    parse.add_argument("--format", help="image output format: png, webp")
    parse.add_argument("--no-instances", action="store_true", help="JSON without persons")
    parse.add_argument("--include-overlay", action="store_true", help="overlay inside JSON")
    parse.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other query option of /api/v1/parse (repeatable)",
    )
    batch = parse.add_argument_group("batch")
    batch.add_argument("--concurrency", type=int, default=2, help="requests in flight (2)")
    batch.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    batch.add_argument(
        "--max-wait", type=float, default=120.0, help="longest Retry-After honoured (120 s)"
    )
    batch.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    sub.add_parser("classes", parents=[common], help="print the class legend as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = Client(
            args.url,
            ca_bundle=args.ca_bundle,
            api_key=args.api_key,
            timeout=args.timeout,
            retries=args.retries,
            max_retry_after=getattr(args, "max_wait", 30.0),
        )
        if args.command == "classes":
            print(json.dumps(client.classes(), indent=2))
            return 0
        return _parse(client, args)
    except ServiceError as exc:
        print(f"m2fp_client: the service answered {exc}", file=sys.stderr)
        return 1
    except ConnectionFailed as exc:
        print(f"m2fp_client: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"m2fp_client: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a batch, which handles its own
        print("m2fp_client: interrupted", file=sys.stderr)
        return 130


def query_params(args: argparse.Namespace) -> dict[str, str]:
    """The query parameters of /api/v1/parse from the command line, as they will be sent."""
    outputs = {args.output} - {None}
    if args.json:
        outputs.add("json")
    if args.cutout:
        outputs.add("cutout")
    if len(outputs) > 1:
        raise ClientError("--output, --json and --cutout name different outputs")
    if args.cutout and args.classes:
        raise ClientError("--cutout CLASSES and --classes are the same option: give one")
    named = {
        "alpha": args.alpha,
        "classes": args.cutout or args.classes,
        "format": args.format,
        "instances": "false" if args.no_instances else None,
        "include_overlay": "true" if args.include_overlay else None,
    }
    params = {k: str(v) for k, v in named.items() if v is not None}
    if outputs:
        params["output"] = outputs.pop()
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--param takes KEY=VALUE, not {item!r}")
        if key in params:
            raise ClientError(f"{key} is given twice (once by --param)")
        params[key] = value
    return {"output": "overlay", **params}


def _parse(client: Client, args: argparse.Namespace) -> int:
    params = query_params(args)
    out = Path(args.out) if args.out is not None else None
    out_is_folder = out is not None and (out.is_dir() or args.out.endswith(("/", os.sep)))
    if len(args.inputs) > 1 or args.inputs[0].is_dir() or out_is_folder:
        return _batch(client, args, params)
    if params["output"] != "json" and out is None:
        raise ClientError("--out FILE is needed for an image result")
    try:
        data = args.inputs[0].read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {args.inputs[0]}: {exc.strerror}") from None
    response = client.parse_response(data, params)
    if params["output"] == "json":
        text = json.dumps(response.json(), indent=2)
        if out is None:
            print(text)
        else:
            out.write_text(text + "\n")
        return 0
    out.write_bytes(response.content)
    print(f"wrote {out} ({len(response.content)} bytes)", file=sys.stderr)
    return 0


def _batch(client: Client, args: argparse.Namespace, params: dict[str, str]) -> int:
    if args.out is None:
        raise ClientError("--out DIR is needed for several images or a folder")
    out_dir = Path(args.out)
    plan = plan_batch(args.inputs, out_dir=out_dir, params=params)
    if not plan.jobs and not plan.conflicts:
        raise ClientError("no .jpg, .jpeg, .png or .webp file in the inputs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"cannot create {out_dir}: {exc.strerror}") from None
    runner = BatchRunner(
        plan,
        client_factory=lambda: Client(
            client.url,
            ca_bundle=client.verify if isinstance(client.verify, str) else None,
            api_key=client.api_key,
            timeout=client.timeout,
            retries=0,
        ),
        concurrency=args.concurrency,
        overwrite=args.overwrite,
        retries=args.retries,
        backoff=client.backoff,
        max_retry_after=args.max_wait,
    )
    total = len(plan.jobs) + len(plan.conflicts)
    progress = _progress(total, quiet=args.quiet, stream=sys.stderr)
    try:
        report = runner.run(progress.update, progress.waiting)
    finally:
        progress.close()
    print_summary(report, out_dir=out_dir, stream=sys.stdout)
    if report.interrupted:
        return 130
    if report.unreachable:
        return 2
    return 0 if report.ok else 1


class _Progress:
    """Plain progress lines (not a terminal): one at most every few seconds, and the last."""

    def __init__(self, total: int, stream: TextIO, every: float = PLAIN_PROGRESS_EVERY_S):
        self.total, self.stream, self.every = total, stream, every
        self.counts = {WRITTEN: 0, EXISTS: 0, FAILED: 0}
        self.done = 0
        self._last = time.monotonic()

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        if outcome.state in self.counts:
            self.counts[outcome.state] += 1
        now = time.monotonic()
        if now - self._last >= self.every or self.done == self.total:
            self._last = now
            print(f"progress: {self.done}/{self.total} {self._tally()}", file=self.stream)

    def waiting(self, seconds: float, why: str) -> None:
        self.note(f"waiting {seconds:.0f} s: {why}")

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _tally(self) -> str:
        names = {WRITTEN: "written", EXISTS: "already there", FAILED: "failed"}
        return ", ".join(f"{n} {names[state]}" for state, n in self.counts.items())

    def close(self) -> None:
        self.stream.flush()


class _Bar(_Progress):
    """tqdm's bar on a terminal; failures are printed above it as they happen."""

    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total, stream)
        self.bar = tqdm(total=total, unit="img", file=stream, dynamic_ncols=True)

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        if outcome.state in self.counts:
            self.counts[outcome.state] += 1
        if outcome.state == FAILED:
            self.note(f"failed: {outcome.describe()}")
        self.bar.set_postfix_str(self._tally(), refresh=False)
        self.bar.update(1)

    def note(self, text: str) -> None:
        self.bar.write(text, file=self.stream)

    def close(self) -> None:
        self.bar.close()


class _Quiet(_Progress):
    def update(self, outcome: Outcome) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def _progress(total: int, *, quiet: bool, stream: TextIO) -> _Progress:
    if quiet:
        return _Quiet(total, stream)
    if stream.isatty():
        return _Bar(total, stream)
    return _Progress(total, stream)


def print_summary(report: Report, *, out_dir: Path, stream: TextIO) -> None:
    """What was written, what was already there, what failed and why, what was skipped."""
    failed = [o for o in report.outcomes if o.state == FAILED]
    exists = [o for o in report.outcomes if o.state == EXISTS]
    cancelled = [o for o in report.outcomes if o.state not in (WRITTEN, EXISTS, FAILED)]
    print(
        f"{report.count(WRITTEN)} written, {len(exists)} already there, {len(failed)} failed"
        + (f", {len(cancelled)} cancelled" if cancelled else "")
        + f" ({len(report.outcomes)} files, {report.seconds:.1f} s) in {out_dir}",
        file=stream,
    )
    if report.interrupted:
        print("interrupted: no request was started after Ctrl-C", file=stream)
    if report.stopped_because:
        print(f"stopped: {report.stopped_because}", file=stream)
    for title, items in (("failed", failed), ("already there", exists)):
        if items:
            print(f"{title}:", file=stream)
            for outcome in items:
                print(f"  {outcome.describe()}", file=stream)
    if cancelled:
        print(f"cancelled: {len(cancelled)} (the same command again finishes them)", file=stream)
    if report.skipped:
        print(f"skipped (not .jpg, .jpeg, .png or .webp): {len(report.skipped)}", file=stream)
        for path in report.skipped[:LISTED_SKIPS]:
            print(f"  {path}", file=stream)
        if len(report.skipped) > LISTED_SKIPS:
            print(f"  … and {len(report.skipped) - LISTED_SKIPS} more", file=stream)
