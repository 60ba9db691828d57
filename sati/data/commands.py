"""`sati data ...` subcommands (registered by sati.cli)."""
from __future__ import annotations

import argparse


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a generated dataset with a learnable signal")
    synth.add_argument("--out", required=True, help="output .h5 path")
    synth.add_argument("--preset", choices=["mosi", "mosei"], default="mosi")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", type=float, default=1.0, help="fraction of the preset's split sizes")
    synth.add_argument("--text-features", type=int, default=0, metavar="DIM",
                       help="also store precomputed text features of this dim (0: none)")


def run_data_command(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _synth(args)
    raise ValueError(f"unknown data command {args.data_command!r}")


def _synth(args) -> int:
    from sati.data.synth import write_synthetic
    if not 0 < args.scale <= 1:
        raise ValueError(f"--scale {args.scale}: expected a fraction in (0, 1]")
    checksum = write_synthetic(args.out, args.preset, seed=args.seed, scale=args.scale,
                               text_feature_dim=args.text_features)
    print(f"wrote {args.out} (preset {args.preset}, seed {args.seed}, sha256 {checksum[:16]}…)")
    return 0
