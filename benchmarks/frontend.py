"""The front end side by side: serve against Triton 2.51 and the no-op floors, HTTP JSON and gRPC, h2load.

    python benchmarks/frontend.py --write-repository DIR   # the simple model: DIR/serve, DIR/triton
    python benchmarks/frontend.py --write-requests DIR     # DIR/infer.grpc and DIR/infer.json, the h2load bodies
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frontend_model import write_repository, write_requests


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-repository", type=Path, metavar="DIR",
                        help="write the simple model's repositories, DIR/serve and DIR/triton, and exit")
    parser.add_argument("--write-requests", type=Path, metavar="DIR",
                        help="write the h2load bodies, DIR/infer.grpc and DIR/infer.json, and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_repository or args.write_requests:
        if args.write_repository:
            serve, triton = write_repository(args.write_repository)
            print(f"serve: {serve}\ntriton: {triton}")
        if args.write_requests:
            grpc_file, json_file = write_requests(args.write_requests)
            print(f"grpc: {grpc_file}\njson: {json_file}")
        return 0
    print("the benchmark itself is not there yet: use --write-repository or --write-requests", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
