"""`genlab rate`: its flags, its checks (all before anything is served) and the server.

The app is served by waitress, a production WSGI server, bound to 127.0.0.1 unless `--host`
says otherwise; `--port 0` takes any free port. The address is printed once it is listening.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.errors import UserError

DEFAULT_PORT = 8000


def add_rate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs", nargs="+", required=True, metavar="WORKDIR", help="two or more run workdirs"
    )
    parser.add_argument(
        "--store", required=True, help="SQLite file of judgements (created if absent)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port (printed)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--rater", default=None, help="rater id for visits without ?rater=NAME (default: cookie)"
    )


def add_rate_parser(subparsers) -> argparse.ArgumentParser:
    """Register `rate` on the CLI's subparsers (launch/cli.py)."""
    parser = subparsers.add_parser(
        "rate", help="blind pairwise preference between runs' samples, in the browser"
    )
    add_rate_arguments(parser)
    parser.set_defaults(run=_rate_command)
    return parser


def _rate_command(args: argparse.Namespace, spec: str | None, overrides: dict) -> int:
    if spec is not None or overrides:
        raise UserError("rate: takes no --config; it reads each run's samples/")
    return run_rate(args)


def run_rate(args: argparse.Namespace) -> int:
    """Check the runs, the store and the address, then serve until interrupted."""
    from launch.rate.samples import comparisons, load_runs
    from launch.rate.store import Store

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port={args.port} is not allowed; allowed: 0 (any free) to 65535")
    if args.rater is not None:
        from launch.rate.app import RATER

        if not RATER.fullmatch(args.rater):
            raise UserError(f"--rater={args.rater!r}: use 1 to 64 letters, digits or . @ + - _")
    runs = load_runs(args.runs)
    todo = comparisons(list(runs.values()))
    store = Store(Path(args.store))
    try:
        import waitress

        from launch.rate.app import create_app
    except ImportError as error:
        raise UserError(f"rate needs {error.name}: pip install -e '.[rate]'") from None
    app = create_app(runs, store, args.rater)
    try:
        server = waitress.create_server(app, host=args.host, port=args.port, threads=4)
    except OSError as error:
        raise UserError(f"--host {args.host} --port {args.port}: {error.strerror}") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"genlab rate: serving http://{host}:{server.effective_port}/ ({len(runs)} runs, "
        f"{len(todo)} comparison{'s' * (len(todo) != 1)} per rater; judgements go to "
        f"{args.store}); Ctrl-C stops",
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        print("genlab rate: stopped", file=sys.stderr)
    finally:
        server.close()
    return 0
