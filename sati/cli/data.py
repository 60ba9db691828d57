"""``sati data synth | prepare | inspect``: generated data, importing other tools' files, inspecting a file."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a generated dataset with a learnable signal")
    synth.set_defaults(run=_synth)
    synth.add_argument("--out", required=True, help="output .h5 path")
    synth.add_argument("--preset", choices=["mosi", "mosei"], default="mosi")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", type=float, default=1.0, help="fraction of the preset's split sizes")
    synth.add_argument(
        "--text-features",
        type=int,
        default=0,
        metavar="DIM",
        help="also store precomputed text features of this dim (0: none)",
    )

    prep = data.add_parser("prepare", help="read MMSA / MISA / SDK / label.csv files, check, write one dataset file")
    prep.set_defaults(run=_prepare)
    prep.add_argument(
        "--from",
        dest="source_format",
        required=True,
        choices=["mmsa", "misa", "sdk", "csv"],
        help="mmsa: aligned_50.pkl; misa: folder of train/dev/test.pkl; sdk: folder of .csd "
        "files; csv: MMSA label.csv alone (text only)",
    )
    prep.add_argument("path", help="the input file or folder")
    prep.add_argument("--out", required=True, help="output .h5 path")
    prep.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        help="store the text tokenized by this tokenizer (the model.text_encoder you will train with)",
    )
    prep.add_argument(
        "--max-text-tokens",
        type=int,
        default=50,
        metavar="N",
        help="token budget per text, specials included (data.max_text_tokens; default 50)",
    )
    prep.add_argument("--name", help="dataset name stored in the file")
    prep.add_argument("--text", dest="text_csv", metavar="LABEL_CSV", help="sdk: text from an MMSA label.csv")
    prep.add_argument("--folds", help="sdk: 'standard' (CMU-MOSI's SDK folds) or a JSON file of video ids per split")
    prep.add_argument("--drop-missing-text", action="store_true", help="sdk: leave out segments without text")
    prep.add_argument("--audio-dim", type=int, metavar="N", help="sdk/csv: dim of zeros for absent audio (default 74)")
    prep.add_argument("--video-dim", type=int, metavar="N", help="sdk/csv: dim of zeros for absent video (default 47)")
    prep.add_argument(
        "--pool-unaligned",
        action="store_true",
        help="mmsa: average-pool unaligned audio/video to each sample's text length",
    )
    _add_expect(prep)

    insp = data.add_parser("inspect", help="splits, counts, dims, lengths, label histogram, checksum check")
    insp.set_defaults(run=_inspect)
    insp.add_argument("file", help="a SATI dataset .h5")
    _add_expect(insp)


def _add_expect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expect-audio-dim", type=int, metavar="N", help="fail unless audio features are N-d")
    p.add_argument("--expect-video-dim", type=int, metavar="N", help="fail unless video features are N-d")


def _synth(args) -> int:
    from sati.data.synth import write_synthetic

    if not 0 < args.scale <= 1:
        raise ValueError(f"--scale {args.scale}: expected a fraction in (0, 1]")
    checksum = write_synthetic(
        args.out, args.preset, seed=args.seed, scale=args.scale, text_feature_dim=args.text_features
    )
    print(f"wrote {args.out} (preset {args.preset}, seed {args.seed}, sha256 {checksum[:16]}…)")
    return 0


def _prepare(args) -> int:
    from sati.ingest.prepare import prepare_dataset

    print(f"reading {args.path} as {args.source_format}")
    prepare_dataset(
        args.source_format,
        args.path,
        args.out,
        tokenizer=args.tokenizer,
        max_text_tokens=args.max_text_tokens,
        name=args.name,
        expect_audio_dim=args.expect_audio_dim,
        expect_video_dim=args.expect_video_dim,
        text_csv=args.text_csv,
        folds=args.folds,
        drop_missing_text=args.drop_missing_text,
        audio_dim=args.audio_dim,
        video_dim=args.video_dim,
        pool_unaligned=args.pool_unaligned,
    )
    return 0


def _inspect(args) -> int:
    from sati.data.h5format import check_feature_dims, read_info
    from sati.ingest.inspection import inspect_dataset

    lines, ok = inspect_dataset(args.file)
    print("\n".join(lines))
    info = read_info(args.file)
    check_feature_dims(
        info.path,
        info.audio_dim,
        info.video_dim,
        expect_audio=args.expect_audio_dim,
        expect_video=args.expect_video_dim,
    )
    return 0 if ok else 1
