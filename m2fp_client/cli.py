"""Command line for the service's API.

    python -m m2fp_client parse photo.jpg --url https://localhost:8443 \\
        --ca-bundle var/tls/ca.pem --out overlay.png
    python -m m2fp_client parse photo.jpg --json --out result.json
    python -m m2fp_client classes --ca-bundle var/tls/ca.pem

The API key, when the service requires one, is read from --api-key or, better (a command line
is visible to other users of the machine), the M2FP_API_KEY environment variable. Exit status:
0 done, 1 the service refused or failed (the message says why, with its request id), 2 bad usage
or an unreachable service.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from m2fp_client.client import Client, ClientError, ConnectionFailed, ServiceError


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
    parse = sub.add_parser("parse", parents=[common], help="parse one image")
    parse.add_argument("image", type=Path, help="JPEG, PNG or WebP file")
    parse.add_argument("--out", type=Path, help="output file (default: stdout for --json)")
    parse.add_argument("--json", action="store_true", help="the JSON result, not an overlay")
    parse.add_argument("--cutout", metavar="IDS", help="transparent cutout of classes 5,9,…")
    parse.add_argument("--alpha", type=float, help="overlay opacity 0..1")
    parse.add_argument("--format", choices=("png", "webp"), help="image output format")
    parse.add_argument("--no-instances", action="store_true", help="JSON without persons")
    parse.add_argument("--include-overlay", action="store_true", help="overlay inside JSON")
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


def _parse(client: Client, args: argparse.Namespace) -> int:
    if args.json and args.cutout:
        raise ClientError("--json and --cutout are exclusive")
    if not args.json and args.out is None:
        raise ClientError("--out FILE is needed for an image result")
    if args.json:
        result = client.parse(
            args.image,
            output="json",
            instances=False if args.no_instances else None,
            include_overlay=True if args.include_overlay else None,
        )
        text = json.dumps(result, indent=2)
        if args.out is None:
            print(text)
        else:
            args.out.write_text(text + "\n")
        return 0
    classes = None
    if args.cutout:
        try:
            classes = [int(c) for c in args.cutout.split(",") if c.strip()]
        except ValueError:
            raise ClientError("--cutout takes class ids like 5,9,13") from None
    image = client.parse(
        args.image,
        output="cutout" if classes else "overlay",
        alpha=args.alpha,
        classes=classes,
        format=args.format,
    )
    args.out.write_bytes(image)
    print(f"wrote {args.out} ({len(image)} bytes)", file=sys.stderr)
    return 0
