"""The ``edgecxr`` command line: parse, call one pipeline stage, print.

Each command imports its stage inside the function, so ``edgecxr predict`` and ``edgecxr bench``
never load TensorFlow. The project's own errors become one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import sys

import click

from . import DEFAULT_MAX_DROP
from .errors import EdgeCXRError


def friendly_errors(func):
    """Turn EdgeCXRError (and Ctrl-C) into a one-line message and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgeCXRError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="edgecxr")
def main():
    """Chest X-ray classifier: train, quantize, export, benchmark and run it on the edge."""
    from .quiet import plain_warnings

    plain_warnings()


# --- data -------------------------------------------------------------------------------------


@main.group()
def data():
    """Inspect a chest X-ray collection."""


@data.command("check")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def data_check(path, as_json):
    """Counts, patients, sources, image sizes, unreadable files, duplicates, leaky patients."""
    from . import data as data_mod

    report = data_mod.check_data(path)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.usable:
        click.echo(f"error: {path}: data set not usable: {'; '.join(report.problems)}", err=True)
        sys.exit(1)


# --- train / evaluate (core: edgecxr.train, edgecxr.evaluate) ----------------------------------


# train options that are TrainConfig settings: their defaults are the config's, shown by --help, but
# only a value typed on the command line overrides a --config file or a resumed run's config.json.
_CONFIG_OPTIONS = ("weights", "epochs", "image_size", "batch_size", "seed", "architecture", "minimalistic",
                   "fine_tune", "learning_rate", "strategy")


def _config_default(name: str):
    from .config import TrainConfig

    return getattr(TrainConfig(), name)


@main.command()
@click.argument("data", required=False)
@click.option("--out", "out", required=True, type=click.Path(), help="Run directory to create (or resume).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="A config.json to start from.")
@click.option("--weights", default=_config_default("weights"),
              help="imagenet, none (train from scratch) or a local backbone weights .h5 file.")
@click.option("--epochs", type=int, default=_config_default("epochs"))
@click.option("--image-size", type=int, default=_config_default("image_size"), help="Input pixels (square).")
@click.option("--batch-size", type=int, default=_config_default("batch_size"))
@click.option("--seed", type=int, default=_config_default("seed"))
@click.option("--architecture", type=click.Choice(["small", "large"]), default=_config_default("architecture"))
@click.option("--minimalistic/--standard", default=_config_default("minimalistic"),
              help="MobileNetV3 minimalistic variant (ReLU, no SE).")
@click.option("--fine-tune", type=int, default=_config_default("fine_tune"),
              help="With pretrained weights, unfreeze the top N backbone layers.")
@click.option("--lr", "learning_rate", type=float, default=_config_default("learning_rate"))
@click.option("--extra-data", multiple=True, help="More data merged into the split (e.g. cxr_adult_pneumonia).")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False), help="Use this splits.csv.")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]),
              default=_config_default("strategy"),
              help="mirrored: several GPUs of one machine; multiworker: several machines (TF_CONFIG or --workers).")
@click.option("--workers", metavar="HOST:PORT,...",
              help="Every worker's address, the chief first; the same list on each worker (sets TF_CONFIG).")
@click.option("--worker-index", type=click.IntRange(min=0), help="This worker's place in --workers (0 = the chief).")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Distil from this predictions.csv (edgecxr evaluate RUN --split train); repeat to average.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other config setting.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Start over in a non-empty --out.")
@friendly_errors
def train(data, out, config_file, weights, epochs, image_size, batch_size, seed, architecture, minimalistic,
          fine_tune, learning_rate, extra_data, splits_file, strategy, workers, worker_index, teachers, overrides,
          resume, force):
    """Train a MobileNetV3 classifier on DATA (class folders or a manifest CSV)."""
    import json
    from pathlib import Path

    from . import distributed
    from .config import MINIMUMS, TrainConfig
    from .errors import EdgeCXRError

    ctx = click.get_current_context()
    typed = {name: ctx.params[name] for name in _CONFIG_OPTIONS
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    weights, epochs, image_size, batch_size, seed, architecture, minimalistic, fine_tune, learning_rate, strategy = (
        typed.get(name) for name in _CONFIG_OPTIONS)
    # Options checked by name before anything else (the config would say "invalid config: epochs ...").
    for name, value in (("epochs", epochs), ("image_size", image_size), ("batch_size", batch_size),
                        ("fine_tune", fine_tune)):
        if value is not None and value < MINIMUMS[name]:
            raise EdgeCXRError(f"--{name.replace('_', '-')} must be at least {MINIMUMS[name]}")
    if learning_rate is not None and not learning_rate > 0:
        raise EdgeCXRError("--lr must be a positive number")
    distributed.configure(workers, worker_index)
    if workers is not None:
        if strategy not in (None, "multiworker"):
            raise EdgeCXRError(f"--workers trains with --strategy multiworker, not {strategy}")
        strategy = "multiworker"
    if config_file:
        cfg = TrainConfig.load(config_file)
    elif resume and (Path(out) / "config.json").is_file():
        cfg = TrainConfig.load(Path(out) / "config.json")
    else:
        cfg = TrainConfig()
    given = dict(data=data, weights=weights, epochs=epochs, image_size=image_size, batch_size=batch_size,
                 seed=seed, architecture=architecture, minimalistic=minimalistic, fine_tune=fine_tune,
                 learning_rate=learning_rate, splits_file=splits_file, strategy=strategy,
                 extra_data=list(extra_data) or None,
                 teachers=[str(Path(t).resolve()) for t in teachers] or None)
    values = {**cfg.__dict__, **{k: v for k, v in given.items() if v is not None}}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise EdgeCXRError(f"--set takes KEY=VALUE, not {item!r}")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    # Absolute, so evaluate and export of the run work from any directory (extra data too).
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if Path(path).exists() else path

    if values.get("data"):
        values["data"] = absolute(values["data"])
    if values.get("extra_data"):
        values["extra_data"] = [absolute(p) for p in values["extra_data"]]
    cfg = TrainConfig.from_dict(values, source="command line")
    from .train import train as run_training

    run_training(cfg, out, resume=resume, force=force)


@main.command()
@click.argument("target", type=click.Path())
@click.option("--data", help="Data to evaluate on (default: the run's own data).")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]),
              help="Which split of --splits to score (default: test if there is a splits file, else all).")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False),
              help="A splits.csv (default: the run's own).")
@click.option("--extra-data", multiple=True, help="More labelled data merged into --data.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Where to write metrics.json, report.md and plots (default: RUN/eval-SPLIT for a run, "
                   "./eval-MODEL-SPLIT for a .tflite).")
@click.option("--threads", type=click.IntRange(min=1), help="Interpreter threads for a .tflite target.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json instead of the table.")
@click.option("--force", is_flag=True, help="Overwrite an earlier evaluation in --out.")
@friendly_errors
def evaluate(target, data, split, splits_file, extra_data, out, threads, as_json, force):
    """Accuracy, sensitivity, specificity (95% CIs), AUROC, calibration of a run or a .tflite."""
    import json

    from . import metrics as metrics_mod
    from .evaluate import evaluate as run_evaluation
    from .evaluate import written_files

    metrics, out_dir = run_evaluation(target, data=data, split=split, splits_file=splits_file, out=out,
                                      extra=tuple(extra_data), threads=threads, force=force)
    click.echo(json.dumps(metrics, indent=2) if as_json else metrics_mod.format_metrics(metrics))
    click.echo(f"wrote {out_dir}/: {', '.join(p.name for p in written_files(out_dir))}", err=True)


# --- export (edgecxr.export) -------------------------------------------------------------------


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--quantize", default="int8", show_default=True, type=click.Choice(["none", "float16", "dynamic", "int8"]),
              help="none = float32; float16 weights; dynamic = int8 weights; int8 = full integer (calibrated).")
@click.option("--io", type=click.Choice(["uint8", "int8", "float32"]),
              help="Input/output tensor type, --quantize int8 only (default uint8).")
@click.option("--force", is_flag=True,
              help="Overwrite an existing export of the same name; export a model that looks useless "
                   "(one class never predicted, or chance macro sensitivity on validation).")
@click.option("--max-drop", default=DEFAULT_MAX_DROP, show_default=True, type=float,
              help="Accuracy points the export may lose vs Keras, in total and in any subgroup.")
@click.option("--representative", type=click.IntRange(min=1),
              help="int8 calibration images from the training split, stratified by class and source (default 200).")
@click.option("--keep-float", metavar="auto|auto:K|LAYER,...",
              help="int8: keep layers in float: auto = those the quantization debugger finds >= 0.7 "
                   "quantization steps off (at most 3), auto:K = the worst K, or the named ones.")
@click.option("--qat", "qat_epochs", type=click.IntRange(min=1), metavar="EPOCHS",
              help="int8: quantization-aware fine-tuning for EPOCHS epochs first.")
@click.option("--data", multiple=True,
              help="Where the run's data is now, if it moved (repeat for extra data); default: RUN_DIR/splits.csv.")
@click.option("--name", default="edgecxr", show_default=True, help="The prefix of the exported file names.")
@friendly_errors
def export(run_dir, quantize, io, force, max_drop, representative, keep_float, qat_epochs, data, name):
    """Export RUN_DIR's best checkpoint to RUN_DIR/export/STEM.tflite, checked for accuracy.

    STEM is NAME_PRECISION[_IOio][_keepfloat|_qat], e.g. edgecxr_float16, edgecxr_int8_uint8io,
    edgecxr_int8_uint8io_qat: the I/O type is always named for int8, and each variant has its own
    name, so one export never overwrites another. The file carries its labels and preprocessing
    (also in STEM.json, whose name field is STEM) and its model card is STEM.md. The accuracy
    guard compares it with the Keras model on the validation split; if it loses more than
    --max-drop points (in total or in a subgroup) the command fails, keeps the file as
    STEM.guard-failed.tflite and says which remedy to try.
    """
    from .export import export as run_export

    result = run_export(run_dir, quantize, io=io, force=force, max_drop=max_drop, representative=representative,
                        keep_float=keep_float, qat_epochs=qat_epochs, data=data, name=name)
    click.echo(result.summary_line())
    if result.warning:
        click.echo(f"warning: {result.warning}; exported only because of --force", err=True)
    else:
        click.echo("next: " + "\n      ".join(result.next_commands()))


# --- predict / bench (edgecxr.runtime, edgecxr.bench) ------------------------------------------


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="A .tflite model (default: $EDGECXR_MODEL, else the shipped models/edgecxr_float16.tflite).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line and image (JSON Lines).")
@click.option("--threads", type=click.IntRange(min=1), help="Interpreter threads (default: the interpreter's).")
@friendly_errors
def predict(images, model_path, as_json, threads):
    """Classify chest X-ray IMAGES (files, or folders of images) with a .tflite model.

    Prints the label and every class probability; unreadable files get one line on stderr (and,
    with --json, a line {"file": ..., "error": ...}) and the rest still run (exit code 1 at the end
    if any failed). Research use only: not a diagnosis.
    """
    import json

    from .errors import ImageError
    from .runtime import Classifier, expand_images

    def report_failure(file, message):
        click.echo(f"error: {message}", err=True)
        if as_json:
            click.echo(json.dumps({"file": file, "error": message}))

    clf = Classifier(model_path, num_threads=threads)
    click.echo(f"model {clf.describe()}", err=True)
    files, problems = expand_images(images)
    for folder, message in problems:
        report_failure(folder, message)
    failed = len(problems)
    for file in files:
        try:
            prediction = clf.predict(file)
        except ImageError as exc:
            report_failure(file, str(exc))
            failed += 1
            continue
        if prediction.warning:  # same check as the app; still predicted, and in --json as "warning"
            click.echo(f"warning: {file}: {prediction.warning}", err=True)
        click.echo(json.dumps(prediction.to_dict()) if as_json else prediction.to_text())
    if failed:
        click.echo(f"{failed} of {len(files) + len(problems)} inputs failed", err=True)
        sys.exit(1)


def _thread_counts(ctx, param, value):
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"expected positive thread counts like 1,2,4, not {value!r}")
    return counts


def _command_line(ctx) -> str:
    """The command as typed, rebuilt from what came from the command line (for the report header)."""
    import shlex

    parts = ["edgecxr", *ctx.command_path.split()[1:], *ctx.params.get("models", ())]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name == "models":
            continue
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if param.is_flag:  # --json/--csv/--md share one name; keep the one that was chosen
            if value == param.flag_value:
                parts.append(param.opts[0])
        elif param.multiple:
            for v in value:
                parts += [param.opts[0], str(v)]
        else:
            raw = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts += [param.opts[0], raw]
    return shlex.join(parts)


@main.command()
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--data", help="Labelled images (class folders or manifest) for accuracy and end-to-end timing.")
@click.option("--extra-data", multiple=True, help="More labelled data merged into --data.")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]),
              help="Score only this split of --splits (default with --splits: test).")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False), help="A splits.csv, e.g. a run's.")
@click.option("--threads", default="1", show_default=True, callback=_thread_counts,
              help="Comma-separated thread counts to compare, e.g. 1,2,4.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(min=1), help="Timed runs.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(min=0), help="Warm-up runs before the timed ones (their mean is reported).")
@click.option("--limit", type=click.IntRange(min=1), help="Score at most N images (a seeded random sample).")
@click.option("--json", "fmt", flag_value="json", help="Print JSON.")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV, one row per model and thread count.")
@click.option("--md", "fmt", flag_value="md", help="Print Markdown (for BENCHMARKS.md).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a latency-vs-accuracy PNG (needs --data).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the report to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite --out / --plot if they exist.")
@click.option("--peers", is_flag=True,
              help="Also convert the float32 model to ONNX (tf2onnx) and bench ONNX Runtime float32 and static "
                   "int8 rows (pip install 'edgecxr[peers]').")
@click.option("--tolerance", default=DEFAULT_MAX_DROP, show_default=True, type=click.FloatRange(min=0),
              help="Accuracy points within which the closing recommendation calls two files equally accurate "
                   "(the export guard's --max-drop).")
@friendly_errors
def bench(models, data, extra_data, split, splits_file, threads, runs, warmup, limit, fmt, plot, out, force,
          peers, tolerance):
    """Latency, memory and accuracy of .tflite MODELS as one table (default: the shipped model).

    Latency follows TFLite's benchmark_model (init, first, warm-up, then mean/std/p50/p90/p99) for
    invoke() alone and end to end (decode + preprocess + invoke). A model that fails is a row, and
    the exit code is 1 if any did. With several models the last line recommends the fastest one
    within --tolerance points of the most accurate, on this machine.
    """
    from .bench import bench as run_bench
    from .errors import EdgeCXRError
    from .io import atomic_write_text, refuse_overwrite

    if plot and not data:
        raise EdgeCXRError("--plot draws latency against accuracy: it needs --data DATA")
    for path in (out, plot):
        if path:
            refuse_overwrite(path, force)
    report = run_bench(models, data=data, threads=threads, runs=runs, warmup=warmup, extra=extra_data,
                       split=split, splits_file=splits_file, limit=limit, progress=True,
                       command=_command_line(click.get_current_context()), peers=peers, tolerance=tolerance)
    render = {"json": report.to_json, "csv": report.to_csv, "md": report.to_markdown}.get(fmt, report.to_table)
    text = render()
    if out:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)
    if plot:
        from .report import plot_tradeoff

        ci = {row.name: row.metrics["accuracy"].get("ci") for row in report.rows if row.metrics}
        points = [{**row.flat(), "model": row.name, "accuracy_ci": ci.get(row.name)} for row in report.rows]
        written = plot_tradeoff(points, plot)
        click.echo(f"wrote {written}" if written else
                   "no plot: it needs --data (for accuracy), an ok row and matplotlib", err=True)
    failed = [row for row in report.rows if row.status != "ok"]
    if failed:
        click.echo(f"{len(failed)} of {len(report.rows)} rows failed", err=True)
        sys.exit(1)


# --- app (mobile_app) ---------------------------------------------------------------------------


def _window_size(_ctx, _param, value):
    if value is None:
        return None
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 800x480") from None
    return width, height


@main.command("app")
@click.argument("image", required=False, type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False), help="A .tflite model instead of the shipped one.")
@click.option("--threads", type=click.IntRange(1, 64), help="Interpreter threads (default: the app's setting).")
@click.option("--fullscreen", is_flag=True, help="Fill the screen (Raspberry Pi kiosk).")
@click.option("--size", callback=_window_size, metavar="WxH", help="Window size, e.g. 800x480.")
@friendly_errors
def app_command(image, model, threads, fullscreen, size):
    """Open the offline app: pick or drop an X-ray, see the prediction and its saliency map.

    With IMAGE, the app opens with that film analysed; the file chooser starts in the folder the
    last image came from.
    """
    import os
    from pathlib import Path

    from .errors import EdgeCXRError, require

    app_dir = Path(__file__).resolve().parents[2] / "mobile_app"
    if not (app_dir / "edgecxr_app" / "app.py").is_file():
        raise EdgeCXRError(
            f"the app is not importable: {app_dir} not found; run it from a source checkout of edgecxr"
        )
    if image and not Path(image).is_file():
        raise EdgeCXRError(f"{image}: image not found")
    if model:
        from .runtime import Classifier

        Classifier(model)  # a wrong model fails here, in one line, before a window opens
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # or Kivy parses --model itself and exits
    require("kivy", "app")
    sys.path.insert(0, str(app_dir))
    from edgecxr_app import run

    run(model=model, threads=threads, fullscreen=fullscreen, size=size,
        image=str(Path(image).resolve()) if image else None)


if __name__ == "__main__":
    main()
