"""``python -m npnet.data fetch {mnist,fashion-mnist} [--root DIR]``

Fetches the dataset's four raw IDX files (SHA-256 checked) and prints the directory that
holds them on stdout; progress goes to stderr.  Exit status 1 if a file cannot be fetched.
"""
from __future__ import annotations

import argparse
import sys

from .mnist import DATASETS, FetchError, fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npnet.data",
                                     description="Fetch npnet's datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="fetch and check a dataset's files")
    fetch_cmd.add_argument("dataset", choices=sorted(DATASETS))
    fetch_cmd.add_argument("--root", default=None,
                           help="the dataset directory (default: $NPNET_DATA/<dataset>, "
                                "else ~/.cache/npnet/<dataset>)")
    args = parser.parse_args(argv)

    try:
        root = fetch(args.dataset, args.root)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name in DATASETS[args.dataset]:
        print(f"npnet.data: {root / name}", file=sys.stderr)
    print(root)  # the one line on stdout, for scripts: DIR=$(python -m npnet.data fetch mnist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
