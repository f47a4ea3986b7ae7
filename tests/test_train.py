"""Training end to end on an easy synthetic task: run directory, learning, resume, interruption."""

import csv
import json
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("tf_keras")

from click.testing import CliRunner

from edgecxr import train as train_mod
from edgecxr.cli import main
from edgecxr.config import TrainConfig
from edgecxr.data import Record
from edgecxr.errors import DataError
from edgecxr.evaluate import read_predictions, write_predictions
from synthetic import make_dataset

# Small enough for CI, large enough that MobileNetV3 from scratch learns the blob positions.
EASY = dict(image_size=48, head_width=16, weights="none", minimalistic=True, augment=False,
            bn_momentum=0.8, val_fraction=0.25, test_fraction=0.0, batch_size=16)


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("easy data"), per_class=40, size=48)


@pytest.fixture(scope="module")
def trained_run(easy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run one"
    cfg = TrainConfig(data=str(easy_data), epochs=8, **EASY)
    train_mod.train(cfg, run)
    return run


def history(run):
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_run_directory_holds_everything(trained_run):
    for name in ["config.json", "splits.csv", "history.csv", "model_spec.json", "metrics.json", "report.md",
                 "checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "plots/accuracy.png",
                 "plots/loss.png", "confusion_matrix.png"]:
        assert (trained_run / name).is_file(), name
    cfg = TrainConfig.load(trained_run / "config.json")
    assert cfg.epochs == 8 and cfg.image_size == 48
    spec = json.loads((trained_run / "model_spec.json").read_text())
    assert spec["class_names"] == ["normal", "covid19", "bacterial", "viral"] and spec["image_size"] == 48


def test_training_beats_chance_and_loss_decreases(trained_run):
    rows = history(trained_run)
    assert len(rows) == 8
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["accuracy"]["value"] > 0.5  # chance is 0.25 on four balanced classes
    assert metrics["training"]["seconds_per_epoch"] > 0
    # one time per epoch: the summary's s/epoch is the mean of the per-epoch times
    per_epoch = np.mean([float(r["epoch_seconds"]) for r in rows])
    assert metrics["training"]["seconds_per_epoch"] == round(per_epoch, 2)


def test_split_is_by_patient(trained_run):
    with open(trained_run / "splits.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_patient = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r["split"] for r in rows} == {"train", "val"}


def test_resume_continues_where_the_run_stopped(easy_data, tmp_path):
    run = tmp_path / "resumable"
    cfg = TrainConfig(data=str(easy_data), epochs=1, **EASY)
    train_mod.train(cfg, run)
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    # one named line per epoch, the best value explained (the epoch it came from survives --resume)
    line = next(line for line in result.output.splitlines() if line.startswith("epoch 2/2 "))
    assert "train loss " in line and "val acc " in line and " s/epoch" in line
    assert "| best val_accuracy " in line and ("(epoch 1)" in line or "(epoch 2, saved)" in line)
    assert "s/epoch (mean)" in result.output and "Epoch 2/2" not in result.output  # not Keras' own
    rows = history(run)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert json.loads((run / "checkpoints/state.json").read_text())["epoch"] == 2
    for row in rows:  # one header for both sessions, every value under its own column
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0 and float(row["loss"]) > 0
        assert row["best"] in ("0.0", "1.0") and float(row["epoch_seconds"]) > 0
    finished = (run / "metrics.json").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["train", "--out", str(run), "--resume"])
    assert again.exit_code == 0 and "already finished 2 of 2 epochs" in again.output
    assert (run / "metrics.json").stat().st_mtime_ns == finished and len(history(run)) == 2


def test_force_starts_over_with_a_new_split_and_no_stale_exports(easy_data, tmp_path):
    run = tmp_path / "redo"
    train_mod.train(TrainConfig(data=str(easy_data), epochs=1, **EASY), run)
    for stale in ("export/old.tflite", "eval-val/metrics.json"):
        (run / stale).parent.mkdir(exist_ok=True)
        (run / stale).write_text("from the earlier run")
    (run / "my notes.txt").write_text("mine")
    before = Counter(row["split"] for row in csv.DictReader(open(run / "splits.csv")))
    cfg = TrainConfig(data=str(easy_data), epochs=1, **{**EASY, "val_fraction": 0.5})
    train_mod.train(cfg, run, force=True)
    after = Counter(row["split"] for row in csv.DictReader(open(run / "splits.csv")))
    assert after["val"] > before["val"]
    assert not (run / "export").exists() and not (run / "eval-val").exists()
    assert (run / "my notes.txt").read_text() == "mine" and len(history(run)) == 1


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_behind(easy_data, tmp_path, monkeypatch):
    from edgecxr import model as model_mod
    from edgecxr.errors import WeightsError

    def no_download(cfg):
        raise WeightsError("could not download ImageNet weights (offline)")

    monkeypatch.setattr(model_mod, "build_model", no_download)
    new, existing = tmp_path / "new run", tmp_path / "existing"
    existing.mkdir()
    (existing / "my notes.txt").write_text("mine")
    for run in (new, existing):
        with pytest.raises(WeightsError):
            train_mod.train(TrainConfig(data=str(easy_data), epochs=1, **EASY), run, force=True)
    assert not new.exists()
    assert sorted(p.name for p in existing.iterdir()) == ["my notes.txt"]
    result = CliRunner().invoke(main, ["train", str(easy_data), "--out", str(new), "--weights", str(tmp_path / "no.h5")])
    assert result.exit_code == 1 and "weights file not found" in result.output and not new.exists()


def test_val_loss_as_monitor_keeps_the_lowest_loss():
    lowest = train_mod.Checkpointer.__new__(train_mod.Checkpointer)
    lowest.cfg = TrainConfig(monitor="val_loss")
    assert lowest.better(0.4, 0.5) and not lowest.better(0.6, 0.5)
    highest = train_mod.Checkpointer.__new__(train_mod.Checkpointer)
    highest.cfg = TrainConfig(monitor="val_macro_sensitivity")
    assert highest.better(0.6, 0.5) and not highest.better(0.4, 0.5)


def interrupt_at_epoch(monkeypatch, stop: int) -> None:
    """Make training raise KeyboardInterrupt (as Ctrl-C would) when epoch ``stop`` begins."""
    original = train_mod.EpochTimer.__new__

    def interrupting(cls, keras):
        timer = original(cls, keras)

        def on_epoch_begin(epoch, logs=None):
            if epoch == stop:
                raise KeyboardInterrupt
            timer.t0 = 0.0

        timer.on_epoch_begin = on_epoch_begin
        return timer

    monkeypatch.setattr(train_mod.EpochTimer, "__new__", interrupting)


def test_interrupt_leaves_a_usable_checkpoint(easy_data, tmp_path, monkeypatch):
    """Ctrl-C during epoch 2 keeps epoch 1's checkpoint, loadable and resumable."""
    from edgecxr.model import load_run_model

    interrupt_at_epoch(monkeypatch, 1)
    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(TrainConfig(data=str(easy_data), epochs=3, **EASY), run)
    assert json.loads((run / "checkpoints/state.json").read_text())["epoch"] == 1
    model, cfg = load_run_model(run, "last")
    assert model.output_shape == (None, 4)


def test_refuses_to_overwrite_a_run_without_force(trained_run, easy_data):
    result = CliRunner().invoke(main, ["train", str(easy_data), "--out", str(trained_run), "--weights", "none"])
    assert result.exit_code == 1
    assert "--force" in result.output and "Traceback" not in result.output


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
                                       "--weights", "none"])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and result.output.count("\n") == 1
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r2"), "--set", "nonsense=1"])
    assert result.exit_code == 1 and "nonsense" in result.output
    for setting, message in (("epochs=two", "epochs must be a whole number, not 'two'"),
                             ("class_names=normal", "class_names must be a JSON list of strings"),
                             ("monitor=val_acc", "monitor must be one of val_accuracy"),
                             ("dropout=1.5", "dropout and label_smoothing must be in [0, 1)")):
        result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r3"), "--set", setting])
        assert result.exit_code == 1 and message in result.output, setting
        assert result.output.count("\n") == 1 and not (tmp_path / "r3").exists()


def test_train_refuses_a_class_without_training_images(tmp_path, monkeypatch):
    """An empty viral/ folder used to give a 4-class model that never saw a viral film (exit 0)."""
    import shutil

    from edgecxr import data as data_mod

    root = make_dataset(tmp_path / "no viral", per_class=4, size=32)
    shutil.rmtree(root / "Virus")
    (root / "Virus").mkdir()

    def no_loading(*args, **kwargs):
        raise AssertionError("images were loaded before the empty class was refused")

    monkeypatch.setattr(data_mod, "load_split_arrays", no_loading)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(root), "--out", str(run), "--weights", "none", "--epochs", "1",
                                       "--image-size", "32"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and len(errors) == 1
    assert errors[0].startswith("error: no training images of class viral (training images per class: normal ")
    assert "viral 0" in errors[0]
    assert not run.exists()  # no half-made run left behind


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "error: --epochs must be at least 1"),
    ("--batch-size", "0", "error: --batch-size must be at least 1"),
    ("--image-size", "16", "error: --image-size must be at least 32"),
    ("--fine-tune", "-1", "error: --fine-tune must be at least 0"),
    ("--lr", "0", "error: --lr must be a positive number"),
])
def test_numeric_options_are_named_in_their_error(tmp_path, option, value, message):
    """--epochs 0 used to say 'batch_size and epochs must be positive'."""
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r"), option, value])
    assert result.exit_code == 1 and result.output == message + "\n"
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r"),
                                       "--set", "epochs=0"])
    assert result.output == "error: invalid config: epochs must be at least 1, not 0\n"


def test_train_help_shows_the_config_defaults_and_a_config_file_still_wins(tmp_path):
    result = CliRunner().invoke(main, ["train", "--help"])
    text = " ".join(result.output.split())
    for shown in ("--epochs INTEGER [default: 15]", "--batch-size INTEGER [default: 16]", "[default: 224]",
                  "[default: imagenet]", "[default: standard]"):
        assert shown in text, shown
    # a default shown by --help is not a value typed: a config file's epochs stay
    cfg = tmp_path / "config.json"
    TrainConfig(epochs=3, weights="none").save(cfg)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "no data"), "--out", str(tmp_path / "r"),
                                       "--config", str(cfg), "--set", "batch_size=0"])
    assert result.output == "error: invalid config: batch_size must be at least 1, not 0\n"


def test_offline_imagenet_fails_before_any_image_is_loaded(synthetic_folder, tmp_path, monkeypatch):
    """The download used to fail after half a minute of image loading."""
    import tf_keras as keras

    from edgecxr import data as data_mod

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example/w.h5: None -- [Errno -3] Temporary failure in name resolution")

    def noticed(*args, **kwargs):
        raise AssertionError("the data was read before the weights were checked")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(data_mod, "load_records", noticed)
    monkeypatch.setattr(data_mod, "load_split_arrays", noticed)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(synthetic_folder), "--out", str(run), "--weights", "imagenet",
                                       "--epochs", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == ("error: could not download ImageNet weights ([Errno -3] Temporary failure in name "
                             "resolution); use --weights PATH (a local MobileNetV3 no-top .h5 file) or --weights "
                             "none (train from scratch)\n")
    assert not run.exists()
    not_h5 = tmp_path / "weights.ckpt"
    not_h5.write_bytes(b"x")
    result = CliRunner().invoke(main, ["train", str(synthetic_folder), "--out", str(run), "--weights", str(not_h5)])
    assert result.exit_code == 1 and "not an .h5 weights file" in result.output and "--weights PATH" in result.output


def test_oversampling_balances_classes_and_age_groups():
    records = ([Record(f"/n{i}", "normal", f"n{i}", "kermany", "pediatric") for i in range(300)]
               + [Record(f"/a{i}", "normal", f"a{i}", "nih", "adult") for i in range(60)]
               + [Record(f"/c{i}", "covid19", f"c{i}", "ieee8023", "adult") for i in range(80)]
               + [Record(f"/p{i}", "pneumonia_unspecified", f"p{i}", "nih", "adult") for i in range(20)])
    cfg = TrainConfig(class_names=["normal", "covid19"], balance_groups=True, min_group=50, partial_share=0.5)
    arrays = train_mod.SplitArrays(np.zeros((len(records), 1)), None, records, cfg.class_names)
    order, weights = train_mod.epoch_indices(arrays, cfg, epoch=0)
    drawn = Counter((records[i].label, records[i].group) for i in order)
    assert drawn[("normal", "pediatric")] == drawn[("normal", "adult")] == 180
    assert drawn[("covid19", "adult")] == 360
    assert drawn[("pneumonia_unspecified", "adult")] == 180
    assert set(order[np.isin(order, range(300, 360))]) == set(range(300, 360))  # every adult normal is used
    again, _ = train_mod.epoch_indices(arrays, cfg, epoch=0)
    np.testing.assert_array_equal(order, again)  # a resumed run replays the same epoch


def test_mirrored_strategy_trains_on_two_logical_cpus(easy_data, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from edgecxr.config import TrainConfig
        from edgecxr.train import train
        cfg = TrainConfig(data={str(easy_data)!r}, epochs=1, strategy="mirrored", **{EASY!r})
        train(cfg, {str(tmp_path / 'mirrored')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training on 2 replica(s) with MirroredStrategy" in proc.stderr
    assert (tmp_path / "mirrored" / "checkpoints" / "best.weights.h5").is_file()


def test_evaluate_a_run_reproduces_its_validation_metrics(trained_run, tmp_path):
    out = tmp_path / "eval out"
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "--split", "val", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("accuracy ")
    evaluated = json.loads((out / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert evaluated["accuracy"]["k"] == trained["accuracy"]["k"]
    assert evaluated["accuracy"]["n"] == trained["accuracy"]["n"]
    assert (out / "report.md").is_file() and (out / "confusion_matrix.png").is_file()
    records, probs = read_predictions(out / "predictions.csv", ["normal", "covid19", "bacterial", "viral"])
    assert len({r.file for r in records}) == len(records) == evaluated["evaluated"]["images"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    index = {"normal": 0, "covid19": 1, "bacterial": 2, "viral": 3}
    with open(out / "predictions.csv") as fh:
        labels = [index[row["label"]] for row in csv.DictReader(fh)]
    assert int((probs.argmax(1) == np.array(labels)).sum()) == evaluated["accuracy"]["k"]


def test_evaluate_names_a_wrong_target(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nothing here"), "--split", "val"])
    assert result.exit_code == 1 and result.output.startswith("error:") and "Traceback" not in result.output


def test_split_seed_keeps_the_split_while_the_seed_changes(easy_data, tmp_path):
    def split_of(**settings):
        run = tmp_path / f"run {len(list(tmp_path.iterdir()))}"
        run.mkdir()
        _, splits = train_mod.prepare_splits(TrainConfig(data=str(easy_data), **{**EASY, **settings}), run)
        return splits

    assert split_of(seed=1, split_seed=7) == split_of(seed=2, split_seed=7) == split_of(seed=7)
    assert split_of(seed=1) != split_of(seed=7)


def test_distilled_targets_blend_the_mean_teacher_probability(tmp_path):
    records = [Record(f"/x/{i}.png", label, f"p{i}", "s", "adult")
               for i, label in enumerate(["normal", "covid19", "pneumonia_unspecified"])]
    names = ["normal", "covid19", "bacterial", "viral"]
    hard = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, -1]], np.float32)
    arrays = train_mod.SplitArrays(np.zeros((3, 1)), hard, records, names)
    teachers = []
    for t, probs in enumerate([[[.6, .2, .1, .1], [.3, .5, .1, .1], [.1, .1, .2, .6]],
                               [[.8, .0, .1, .1], [.1, .7, .1, .1], [.1, .1, .4, .4]]]):
        path = tmp_path / f"teacher{t}.csv"
        write_predictions(path, records[::-1], np.array(probs)[::-1], names)  # row order must not matter
        teachers.append(str(path))
    cfg = TrainConfig(class_names=names, teachers=teachers, distill_weight=0.25)
    targets = train_mod.distilled_targets(arrays, cfg)
    np.testing.assert_allclose(targets[0], .75 * hard[0] + .25 * np.array([.7, .1, .1, .1]), atol=1e-6)
    # a partial label keeps its allowed-class target: a teacher's subtype guess is what it does not know
    np.testing.assert_array_equal(targets[2], hard[2])
    np.testing.assert_allclose(targets[:2].sum(1), 1.0, atol=1e-6)

    write_predictions(tmp_path / "partial.csv", records[:2], np.full((2, 4), .25), names)
    cfg.teachers = [str(tmp_path / "partial.csv")]
    with pytest.raises(DataError, match="no prediction for 1 training image.*edgecxr evaluate RUN --split train"):
        train_mod.distilled_targets(arrays, cfg)

    # scored on another split (a run with another split_seed): the message says so
    other = [*records[:2], Record("/x/elsewhere.png", "normal", "q", "s", "adult")]
    write_predictions(tmp_path / "other split.csv", other, np.full((3, 4), .25), names)
    cfg.teachers = [str(tmp_path / "other split.csv")]
    with pytest.raises(DataError, match="1 image.*outside this run's training split.*split_seed"):
        train_mod.distilled_targets(arrays, cfg)


def test_a_student_learns_what_the_teacher_says_not_the_labels(trained_run, tmp_path):
    """The teacher calls every class by the next class's name; with distill_weight 1 the labels never
    reach the loss, so a student that learns the teacher's renaming was taught by the teacher."""
    names = ["normal", "covid19", "bacterial", "viral"]
    evaluated = tmp_path / "train split"
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "--split", "train", "--out", str(evaluated)])
    assert result.exit_code == 0, result.output
    records, _ = read_predictions(evaluated / "predictions.csv", names)
    renamed = np.eye(4)[[(names.index(r.label) + 1) % 4 for r in records]]
    write_predictions(tmp_path / "teacher.csv", records, renamed, names)

    student = tmp_path / "student"
    result = CliRunner().invoke(main, ["train", "--config", str(trained_run / "config.json"), "--out", str(student),
                                       "--teacher", str(tmp_path / "teacher.csv"), "--set", "distill_weight=1.0"])
    assert result.exit_code == 0, result.output
    cfg = TrainConfig.load(student / "config.json")
    assert cfg.teachers == [str((tmp_path / "teacher.csv").resolve())] and cfg.distill_weight == 1.0
    last = history(student)[-1]
    # training accuracy is measured against the targets, validation accuracy against the labels
    assert float(last["accuracy"]) > 0.5 and float(last["val_accuracy"]) < 0.25  # chance is 0.25

    # a teacher that never saw the training images is refused in one line
    write_predictions(tmp_path / "val.csv", records[:5], renamed[:5], names)
    result = CliRunner().invoke(main, ["train", "--config", str(trained_run / "config.json"), "--out",
                                       str(tmp_path / "refused"), "--teacher", str(tmp_path / "val.csv")])
    assert result.exit_code == 1 and "no prediction for" in result.output and "Traceback" not in result.output


def test_partial_label_loss_sums_the_allowed_classes():
    import tensorflow as tf

    probs = np.array([[0.1, 0.1, 0.6, 0.2], [0.1, 0.5, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1]], np.float32)
    targets = np.array([[0, 0, -1, -1], [0, 0, -1, -1], [1, 0, 0, 0]], np.float32)
    loss = train_mod.partial_label_loss(tf, 0.0, 4)(tf.constant(targets), tf.constant(probs)).numpy()
    # partial rows: -log(p_bacterial + p_viral), however the two share it; the class row: cross-entropy
    np.testing.assert_allclose(loss, [-np.log(0.8), -np.log(0.4), -np.log(0.7)], rtol=1e-5)
    assert train_mod.numpy_loss(targets, probs) == pytest.approx(loss.mean(), rel=1e-5)
    # label smoothing touches class targets only
    smooth = train_mod.partial_label_loss(tf, 0.2, 4)(tf.constant(targets), tf.constant(probs)).numpy()
    assert smooth[:2] == pytest.approx(loss[:2], rel=1e-6) and smooth[2] > loss[2]
    acc = train_mod.label_consistent_accuracy(tf)(tf.constant(targets), tf.constant(probs)).numpy()
    assert acc.tolist() == [1.0, 0.0, 1.0]  # bacterial is allowed; COVID-19 is not; normal is right


def test_partial_labels_are_drawn_per_label():
    labels = ["normal"] * 30 + ["covid19"] * 10 + ["pneumonia_unspecified"] * 4 + ["tuberculosis"] * 8
    records = [Record(f"/x/{i}.png", lab, f"p{i}") for i, lab in enumerate(labels)]
    arrays = train_mod.SplitArrays(np.zeros((len(records), 1)), np.zeros((len(records), 4)), records,
                                   ["normal", "covid19", "bacterial", "viral"])
    order, _ = train_mod.epoch_indices(arrays, TrainConfig(partial_share=0.5), epoch=0)
    drawn = Counter(labels[i] for i in order)
    assert drawn == {"normal": 30, "covid19": 30, "pneumonia_unspecified": 15, "tuberculosis": 15}


def test_training_stages():
    weights = "/some/weights.h5"
    one = train_mod.training_stages(TrainConfig(weights="none", epochs=5))
    assert [(s.start, s.end, s.trainable_top) for s in one] == [(0, 5, None)]
    frozen = train_mod.training_stages(TrainConfig(weights=weights, epochs=5))
    assert [(s.start, s.end, s.trainable_top) for s in frozen] == [(0, 5, 0)]
    two = train_mod.training_stages(TrainConfig(weights=weights, epochs=5, fine_tune=30, head_epochs=2,
                                                learning_rate=1e-3, backbone_lr_scale=0.1))
    assert [(s.start, s.end, s.trainable_top) for s in two] == [(0, 2, 0), (2, 5, 30)]
    assert two[1].learning_rate == pytest.approx(1e-4)
    with pytest.raises(Exception, match="head_epochs .* needs pretrained weights and fine_tune"):
        TrainConfig(weights="none", epochs=5, head_epochs=2).validate()


def test_two_stage_fine_tuning_freezes_then_trains_the_backbone(easy_data, tmp_path, monkeypatch):
    """Stage one (the head) leaves the pretrained backbone exactly as loaded; stage two, resumed
    after an interruption at the stage boundary, trains its top; worst-source is logged each epoch."""
    from edgecxr.model import build_backbone, load_run_model

    weights = tmp_path / "backbone.h5"
    build_backbone(TrainConfig(image_size=48, minimalistic=True, weights="none")).save_weights(str(weights))
    source = build_backbone(TrainConfig(image_size=48, minimalistic=True, weights=str(weights))).get_weights()

    def backbone_weights(run):
        model, _ = load_run_model(run, "last")
        return next(l for l in model.layers if l.name.lower().startswith("mobilenetv3")).get_weights()

    run = tmp_path / "two stage"
    cfg = TrainConfig(data=str(easy_data), epochs=2, head_epochs=1, fine_tune=20,
                      **{**EASY, "weights": str(weights)})
    interrupt_at_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, run)
    monkeypatch.undo()
    for a, b in zip(backbone_weights(run), source):
        np.testing.assert_array_equal(a, b)
    train_mod.train(cfg, run, resume=True)
    changed = [not np.array_equal(a, b) for a, b in zip(backbone_weights(run), source)]
    assert any(changed[-6:]) and not any(changed[:6])  # the top moved, the frozen bottom did not
    rows = history(run)
    assert len(rows) == 2 and all(float(r["val_worst_source"]) >= 0 for r in rows)


def test_train_cli_stores_data_and_extra_data_as_absolute_paths(tmp_path, monkeypatch):
    """A run trained with relative --extra-data must still find it when evaluated from elsewhere
    (the card of the shipped model showed the main data absolute and the extra data relative)."""
    (tmp_path / "main").mkdir()
    (tmp_path / "extra").mkdir()
    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda cfg, out, **kw: seen.update(cfg=cfg))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "main", "--extra-data", "extra", "--extra-data", "missing",
                                       "--out", "run", "--weights", "none"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].data == str(tmp_path / "main")
    assert list(seen["cfg"].extra_data) == [str(tmp_path / "extra"), "missing"]
