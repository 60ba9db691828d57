"""``sati promote``, ``sati evaluate``, ``sati predict``: commands on registered models and trial runs."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from sati.cli.options import add_tracking_uri
from sati.tracking.store import TrackingStore


def add_parsers(sub: argparse._SubParsersAction) -> None:
    promote = sub.add_parser("promote", help="register the best trial of a search and move the champion alias")
    promote.add_argument(
        "source", nargs="?", help="a search's MLflow parent run id, or an experiment name (every finished search in it)"
    )
    promote.add_argument("--model-name", help="registered model name (default: the pipeline's registry.model_name)")
    promote.add_argument(
        "--top-k", type=int, default=1, metavar="K", help="with --seeds: retrain the K best configurations"
    )
    promote.add_argument(
        "--seeds",
        type=int,
        default=0,
        metavar="N",
        help="retrain with N fresh seeds each and choose by mean − std (mean + std for minimized metrics)",
    )
    promote.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        help="how much the new version must beat the champion's validation metric by",
    )
    promote.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="how closely the reloaded model must reproduce its logged validation metric",
    )
    promote.add_argument("--data", help="the search's dataset file, if not at the path the search used")
    promote.add_argument("--address", help="Ray cluster for the --seeds trials (default: the search's ray_address)")
    promote.add_argument("--rollback", action="store_true", help="move 'champion' back to the previous champion")
    add_tracking_uri(promote)
    promote.set_defaults(run=_with_tracking(_promote))

    evaluate = sub.add_parser("evaluate", help="the paper's table for one or more models on a split")
    evaluate.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_URI",
        help="models:/name@alias, models:/name/N, runs:/<id>/model, runs:/<trial run id>, a .pt file; "
        "several (e.g. seeds) give mean ± std",
    )
    evaluate.add_argument("--data", help="dataset file (default: the first model's data.path)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument(
        "--noise",
        type=float,
        action="append",
        default=[],
        metavar="SIGMA",
        help="add a row with Gaussian noise of this std on audio and video (repeatable)",
    )
    evaluate.add_argument(
        "--drop",
        action="append",
        default=[],
        choices=["text", "audio", "video"],
        help="add a row with this modality removed (repeatable)",
    )
    evaluate.add_argument(
        "--out-dir", help="where table.md, table.tex, metrics.json go (default: evaluation/<model>-<split>)"
    )
    evaluate.add_argument("--experiment", help="MLflow experiment of the evaluation run (default: the model's own)")
    evaluate.add_argument("--no-log", action="store_true", help="do not log an MLflow run")
    add_tracking_uri(evaluate)
    evaluate.set_defaults(run=_with_tracking(_evaluate))

    predict = sub.add_parser("predict", help="write predictions (id, score, seven-class label) to CSV")
    predict.add_argument("model", metavar="MODEL_URI")
    predict.add_argument("--data", required=True, help="a SATI dataset file")
    predict.add_argument("--split", action="append", default=[], help="split(s) to predict (default: all in the file)")
    predict.add_argument("--out", required=True, help="output CSV")
    add_tracking_uri(predict)
    predict.set_defaults(run=_with_tracking(_predict))


def _with_tracking(
    command: Callable[[argparse.Namespace, TrackingStore], int],
) -> Callable[[argparse.Namespace], int]:
    """``command(args, store)`` with the command's one tracking store, checked to answer."""

    def run(args: argparse.Namespace) -> int:
        import os

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return command(args, TrackingStore.open(args.tracking_uri))

    return run


def _promote(args, store: TrackingStore) -> int:
    from sati.promote import PromotionError, promote, rollback, select

    if args.rollback:
        if not args.model_name:
            raise PromotionError("--rollback needs --model-name")
        rollback(store, args.model_name)
        return 0
    if not args.source:
        raise PromotionError("sati promote: give a search run id or an experiment name (or --rollback)")
    if args.top_k < 1 or args.seeds < 0:
        raise PromotionError(f"--top-k must be >= 1 and --seeds >= 0, got {args.top_k} and {args.seeds}")
    if args.top_k > 1 and args.seeds == 0:
        raise PromotionError("--top-k K compares K configurations by retraining them: give --seeds N too")
    selection = select(store, args.source, args.model_name)
    chosen = confirmation = None
    if args.seeds:
        from sati.search.retrain import confirm_candidates

        candidates = selection.ranked[: args.top_k]
        search = selection.search_of(store, candidates[0][0])
        run, value, confirmation = confirm_candidates(
            store, search, candidates, args.seeds, selection.metric, selection.mode, args.address
        )
        chosen = (run, value)
    result = promote(
        store,
        selection,
        chosen=chosen,
        confirmation=confirmation,
        min_delta=args.min_delta,
        tolerance=args.tolerance,
        data=args.data,
    )
    print(
        f"\nload it:  sati.load_verified('models:/{result.model_name}@{result.alias}')  (its files checked first)\n"
        f"evaluate: sati evaluate models:/{result.model_name}/{result.version} --split test --tracking-uri {store.uri}"
    )
    return 0


def _evaluate(args, store: TrackingStore) -> int:
    from sati.data.h5format import read_info, read_split
    from sati.evaluation import (
        conditions,
        conditions_latex,
        conditions_markdown,
        evaluate_models,
        load_predictor,
        summarize,
    )
    from sati.tracking import contract
    from sati.tracking.registry import describe_model_uri
    from sati.tracking.runs import log_evaluation

    conds = conditions(args.noise, args.drop)
    predictors = [load_predictor(store, m) for m in args.models]
    data = args.data or predictors[0].cfg.data.path
    arrays = read_split(data, args.split)
    info = read_info(data)
    results = evaluate_models(predictors, arrays, args.split, conds)
    label = _slug(args.models[0]) + (f"-x{len(args.models)}" if len(args.models) > 1 else "")
    caption = f"{', '.join(args.models)} on {Path(data).name} ({args.split}, {len(arrays)} samples)"
    texts = {
        "table.md": conditions_markdown(results, args.split),
        "table.tex": conditions_latex(results, args.split, caption),
    }
    metrics = summarize(results, args.split)
    out_dir = Path(args.out_dir or Path("evaluation") / f"{label}-{args.split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (out_dir / name).write_text(text)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{caption}\n\n{texts['table.md']}\ntables: {out_dir}/table.md, {out_dir}/table.tex")
    if args.no_log:
        return 0
    models = [{"uri": m, **describe_model_uri(store, m)} for m in args.models]
    for m in models:
        evidence = m.get("evidence")
        if evidence is not None and evidence.data_checksum and evidence.data_checksum != info.checksum:
            print(f"note: {m['uri']} was validated on other data than {data} (data checksum differs)")
    # the evaluation nests under the run of the (first) model it evaluates, in that run's experiment
    source = next((m["run_id"] for m in models if m.get("run_id")), None)
    if source is None and (m := re.match(r"^runs:/([0-9a-f]{32})", args.models[0])):
        source = m.group(1)
    experiment = args.experiment or (store.experiment_name(source) if source else "sati-evaluation")
    one_version = (models[0]["name"], models[0]["version"]) if len(models) == 1 and models[0].get("name") else None
    values = (" ".join(args.models), args.noise, args.drop, args.split, len(arrays))
    run_id = log_evaluation(
        store,
        experiment=experiment,
        run_name=f"evaluate-{label}-{args.split}",
        metrics=metrics,
        texts=texts,
        tags=contract.evaluation_tags(args.split, info.checksum, str(data), args.models, one_version),
        params=dict(zip(contract.EVALUATION_PARAMS, values)),
        models=models,
        split=args.split,
        parent=source if source and store.experiment_name(source) == experiment else None,
    )
    print(f"logged to MLflow run {run_id} (experiment '{experiment}') at {store.uri}")
    return 0


def _predict(args, store: TrackingStore) -> int:
    import pandas as pd

    from sati.data.h5format import DataError, list_splits, read_split
    from sati.evaluation import load_predictor
    from sati.predictor import predictions_frame

    predictor = load_predictor(store, args.model)
    splits = args.split or list_splits(args.data)
    frames = []
    for split in splits:
        arrays = read_split(args.data, split)
        try:
            frame = predictions_frame(arrays.ids, predictor.predict_arrays(arrays))
        except DataError as err:
            raise DataError(f"{args.data}: split '{split}': {err}; nothing was written") from None
        frame.insert(1, "split", split)
        frames.append(frame)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out, index=False, float_format="%.6f")
    print(f"{len(table)} predictions ({', '.join(splits)}) written to {out}")
    return 0


def _slug(model_uri: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_uri.split(":", 1)[-1]).strip("-") or "model"
