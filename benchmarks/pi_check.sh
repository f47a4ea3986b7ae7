#!/usr/bin/env bash
# Prove the Raspberry Pi path on an x86 machine: install edgecxr with its runtime dependencies only
# into an emulated Debian 12 (bookworm) arm64 system - the userland of Raspberry Pi OS Bookworm
# 64-bit (PI_SUITE=trixie: Debian 13, Pi OS Trixie) - then predict, bench and start the app there,
# and check the arm64 predictions against x86.
#
#   sudo bash benchmarks/pi_check.sh [MODEL.tflite ...]
#
# MODEL defaults to the shipped models/edgecxr_float16.tflite; when that does not exist yet, two small
# test models (MobileNetV3Small minimalistic, 96 px, int8 and float32, briefly trained on synthetic
# images) are made on x86 with TensorFlow and used instead, and the report says so.
#
# Writes benchmarks/PI_CHECK.md (set PI_CHECK_OUT to write elsewhere). Exit code 0 only if every
# check passed. Needs root (debootstrap, chroot, binfmt_misc) and, on the host, a Python with
# edgecxr's runtime (HOST_PYTHON, default python3; plus TensorFlow only to make the test models).
#
# Environment knobs (all optional):
#   PI_SUITE     Debian release                     (default bookworm = Pi OS Bookworm; trixie = Pi OS Trixie)
#   PI_ROOT      cached arm64 root, built once      (default /var/cache/edgecxr-pi-root, -trixie etc. for others)
#   PI_WORK      images, test models, run outputs   (default /var/cache/edgecxr-pi-work)
#   PI_MIRROR    Debian mirror URL                  (default: the one this machine's apt uses)
#   PI_CPUS      emulated CPUs to predict on        (default "cortex-a72 cortex-a76": Pi 4, Pi 5)
#   PI_REBUILD=1 throw the cached root away and bootstrap it again
#   PI_SKIP_APP=1 skip the Kivy part
#   HOST_PYTHON  the x86 Python that runs the reference predictions
#
# Emulation (qemu-user) makes every latency here meaningless: the bench step proves that the
# benchmark runs, nothing more. Real Raspberry Pi numbers come from users: benchmarks/pi_results/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=${PI_SUITE:-bookworm}
PI_ROOT=${PI_ROOT:-/var/cache/edgecxr-pi-root$([[ $SUITE == bookworm ]] || echo "-$SUITE")}
PI_WORK=${PI_WORK:-/var/cache/edgecxr-pi-work}
PI_CPUS=${PI_CPUS:-cortex-a72 cortex-a76}
OUT=${PI_CHECK_OUT:-$REPO/benchmarks/PI_CHECK.md}
HOST_PYTHON=${HOST_PYTHON:-python3}
VENV=/opt/edgecxr-venv                      # inside the arm64 root
ROOT_PACKAGES=ca-certificates,python3,python3-venv,python3-pip
# Software OpenGL/EGL for a headless Kivy start, and libmtdev1 for the Pi touchscreen (mobile_app/README.md).
APP_PACKAGES="libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri libmtdev1"
KIVY_PIN="kivy==2.3.1"
INT8_TOL=0.02                               # int8 kernels may round differently per CPU
FLOAT_TOL=0.0001                            # float32 kernels differ only in FMA/summation order
APP_TIMEOUT=${APP_TIMEOUT:-900}

RUN=$PI_WORK/run                            # this run's outputs (replaced every run)
STEPS=$RUN/steps.tsv                        # name, status, seconds, note
# What to undo on exit. Kept in files because every step runs in a subshell (for `set -e`).
MOUNTS=$PI_WORK/mounts                      # mount points, in order of mounting
BINFMT_UNDO=$PI_WORK/binfmt-undo            # "disable" and/or "umount"
START=$(date +%s)

log() { printf '[pi_check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# A setup step failed after the run started: still write the report, which names the failed step.
fail() { log "error: $*"; cleanup; write_report || true; exit 1; }

# --- bookkeeping ---------------------------------------------------------------------------------

# step NAME NOTE CMD...: run CMD with its output in $RUN/logs/NAME.log, record status and seconds;
# `passed` then tells how it went. CMD runs in a subshell with `set -e` of its own, and step is never
# called as a condition (`step ... || x`), because bash ignores errexit in everything a condition runs.
step() {
    local name=$1 note=$2 t0 rc
    shift 2
    log "$name: $note"
    t0=$(date +%s)
    set +e
    (set -e; "$@") >"$RUN/logs/$name.log" 2>&1
    rc=$?
    set -e
    LAST_STATUS=$([[ $rc == 0 ]] && echo ok || echo FAILED)
    printf '%s\t%s\t%s\t%s\n' "$name" "$LAST_STATUS" "$(($(date +%s) - t0))" "$note" >>"$STEPS"
    if [[ $LAST_STATUS != ok ]]; then
        log "$name failed (exit $rc); last lines of $RUN/logs/$name.log:"
        tail -n 15 "$RUN/logs/$name.log" >&2
    fi
}
passed() { [[ $LAST_STATUS == ok ]]; }

cleanup() {
    local m
    if [[ -f $MOUNTS ]]; then
        while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
        done < <(tac "$MOUNTS")
        rm -f "$MOUNTS"
    fi
    if grep -qx disable "$BINFMT_UNDO" 2>/dev/null; then update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true; fi
    if grep -qx umount "$BINFMT_UNDO" 2>/dev/null; then umount /proc/sys/fs/binfmt_misc 2>/dev/null || log "could not unmount binfmt_misc"; fi
    rm -f "$BINFMT_UNDO"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- host side -----------------------------------------------------------------------------------

host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if ((${#missing[@]})); then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    dpkg-query -W debootstrap qemu-user-static binfmt-support
}

# The Debian mirror this machine's apt uses (a bookworm entry first, else any non-security one).
debian_mirror() {
    local uri
    uri=$(awk 'BEGIN { RS = "" }
        /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ && /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ {
            if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u; exit }
        }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n $uri ]] || uri=$(awk '$1 == "deb" && / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [[ -n $uri ]] || uri=$(grep -hoE '(https?|file)://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v security | head -n 1 || true)
    [[ -n $uri ]] || return 1
    echo "$uri"
}

# qemu-user-static registers itself with binfmt_misc; in a VM without it mounted, mount it (undone on exit).
enable_binfmt() {
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        echo umount >>"$BINFMT_UNDO"
    fi
    if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        update-binfmts --enable qemu-aarch64
        echo disable >>"$BINFMT_UNDO"
    fi
    cat /proc/sys/fs/binfmt_misc/qemu-aarch64
}

host_python_ok() {
    PYTHONPATH=$REPO/toolkit "$HOST_PYTHON" -c 'import numpy, PIL, click, edgecxr.runtime as r; r.interpreter_backend()' 2>/dev/null
}

# --- the arm64 root --------------------------------------------------------------------------------

build_root() {
    local tmp=$PI_ROOT.partial
    if [[ ${PI_REBUILD:-0} == 1 && -d $PI_ROOT ]]; then
        findmnt -rn -o TARGET | grep -q "^$PI_ROOT/" && die "something is still mounted under $PI_ROOT"
        rm -rf "$PI_ROOT"
    fi
    if [[ -f $PI_ROOT/.edgecxr-root ]]; then
        echo "cached root ($PI_ROOT): $(cat "$PI_ROOT/.edgecxr-root")" | tee "$RUN/root-cache.txt"
        return 0
    fi
    findmnt -rn -o TARGET | grep -q "^$tmp/" && die "something is still mounted under $tmp"
    rm -rf "$tmp"
    local t0=$(date +%s)
    debootstrap --arch=arm64 --variant=minbase --include="$ROOT_PACKAGES" "$SUITE" "$tmp" "$MIRROR"
    echo "debootstrap $SUITE arm64 minbase +$ROOT_PACKAGES, built $(date -u +%Y-%m-%dT%H:%MZ) in $(($(date +%s) - t0)) s" >"$tmp/.edgecxr-root"
    mv "$tmp" "$PI_ROOT"
    echo "root built by this run ($PI_ROOT): $(cat "$PI_ROOT/.edgecxr-root")" | tee "$RUN/root-cache.txt"
}

bind() {  # bind SRC DST [ro]
    [[ -e $2 ]] || mkdir -p "$2"
    mount --bind "$1" "$2"
    echo "$2" >>"$MOUNTS"
    [[ ${3:-} != ro ]] || mount -o remount,bind,ro "$2"
}

mount_root() {
    mount -t proc proc "$PI_ROOT/proc"
    echo "$PI_ROOT/proc" >>"$MOUNTS"
    mount -t sysfs sysfs "$PI_ROOT/sys"
    echo "$PI_ROOT/sys" >>"$MOUNTS"
    bind /dev "$PI_ROOT/dev"
    bind /dev/pts "$PI_ROOT/dev/pts"
    if mountpoint -q /dev/shm; then bind /dev/shm "$PI_ROOT/dev/shm"; fi
    cp -L /etc/resolv.conf "$PI_ROOT/etc/resolv.conf"
    cp /etc/hosts "$PI_ROOT/etc/hosts"
    findmnt -rn -o TARGET | grep "^$PI_ROOT" || true
}

# Make pip inside behave like pip here: same config files, same environment, and the files and
# local indexes they point to (certificates copied, directories bind-mounted read-only).
mirror_pip_config() {
    local f path
    for f in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [[ -f $f ]] || continue
        mkdir -p "$PI_ROOT$(dirname "$f")"
        cp "$f" "$PI_ROOT$f"
        echo "copied $f"
    done
    while read -r path; do
        path=${path#file://}
        if [[ -f $path ]]; then
            mkdir -p "$PI_ROOT$(dirname "$path")"
            cp "$path" "$PI_ROOT$path"
            echo "copied $path"
        elif [[ -d $path ]]; then
            # A local "simple" index links to ../../files/: mount the whole repository it belongs to.
            [[ $(basename "$path") != simple ]] || path=$(dirname "$path")
            if ! mountpoint -q "$PI_ROOT$path"; then
                bind "$path" "$PI_ROOT$path" ro
                echo "bind-mounted $path read-only"
            fi
        fi
    done < <({ cat /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" 2>/dev/null
               env | grep '^PIP_'; } | grep -oE '(file://)?/[^ "=]+' | sort -u)
    env | grep '^PIP_' | sed 's/=.*//' | sed 's/^/passed through: /' || true
}

# in_pi CPU CMD...: run CMD in the arm64 root with a clean environment, emulating CPU.
in_pi() {
    local cpu=$1
    shift
    local pip_env=()
    mapfile -t pip_env < <(env | grep '^PIP_' || true)
    QEMU_CPU=$cpu chroot "$PI_ROOT" /usr/bin/env -i QEMU_CPU="$cpu" HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${pip_env[@]}" "$@"
}

pi_sh() { in_pi "$PI_CPU" /bin/bash -euo pipefail -c "$1"; }

# qemu-user (7.2) shows arm64 programs the x86 host's /proc/cpuinfo. The cpuinfo library inside
# ai-edge-litert (XNNPACK) cannot parse it and dereferences NULL while creating any Interpreter -
# an emulation artifact: a Pi's kernel writes an ARM /proc/cpuinfo. So the root gets what
# Raspberry Pi OS shows for the emulated core (one block per host CPU, matching /sys), bind-mounted
# over /proc/cpuinfo, with a Model line that says it is emulated.
CPUINFO=$PI_WORK/cpuinfo
write_cpuinfo() {  # write_cpuinfo CPU: rewritten in place, so the bind mount follows
    local cpu=$1 features variant part revision model i
    case $cpu in
        cortex-a72) features="fp asimd evtstrm crc32 cpuid"; variant=0x0; part=0xd08; revision=3
                    model="Raspberry Pi 4 Model B (emulated by qemu-user on x86: not a real Pi)" ;;
        cortex-a76) features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
                    variant=0x4; part=0xd0b; revision=1
                    model="Raspberry Pi 5 Model B (emulated by qemu-user on x86: not a real Pi)" ;;
        *) die "no /proc/cpuinfo template for PI_CPUS entry $cpu (use cortex-a72 or cortex-a76)" ;;
    esac
    {
        for ((i = 0; i < $(nproc); i++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$features"
            printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$variant" "$part" "$revision"
        done
        printf 'Model\t\t: %s\n' "$model"
    } >"$CPUINFO.new"
    cat "$CPUINFO.new" >"$CPUINFO"
    rm -f "$CPUINFO.new"
}

fake_cpuinfo() {
    : >"$CPUINFO"
    write_cpuinfo "$PI_CPU"
    bind "$CPUINFO" "$PI_ROOT/proc/cpuinfo" ro
    pi_sh 'grep -m1 "CPU part" /proc/cpuinfo; grep Model /proc/cpuinfo'
}

root_facts() {
    pi_sh 'echo "uname -m: $(uname -m)"; . /etc/os-release; echo "os: $PRETTY_NAME"; echo "debian_version: $(cat /etc/debian_version)";
           echo "python: $(/usr/bin/python3 --version)"; echo "pip (Debian python3-pip): $(/usr/bin/python3 -m pip --version | cut -d" " -f1-2)";
           echo "hwcaps ($QEMU_CPU): $(LD_SHOW_AUXV=1 /bin/true | grep -E "^AT_HWCAP2?:" | tr -s " " | tr "\n" ";")"'
}

apt_in_root() {
    # shellcheck disable=SC2086
    if pi_sh "dpkg-query -W $APP_PACKAGES" >/dev/null 2>&1; then
        echo "already installed: $APP_PACKAGES"
    else
        pi_sh "apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $APP_PACKAGES; apt-get clean"
    fi
    pi_sh "dpkg-query -W $APP_PACKAGES"
}

# A copy of the working tree (the state under test, uncommitted work included) without run
# outputs or git history: pip builds in the source tree, which must not be the developer's.
copy_repo() {
    rm -rf "$PI_ROOT/repo"
    mkdir -p "$PI_ROOT/repo"
    tar -C "$REPO" --exclude=./.git --exclude=./runs --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=./.benchmarks \
        -cf - . | tar -C "$PI_ROOT/repo" -xf -
    du -sh "$PI_ROOT/repo"
}

install_runtime() {
    pi_sh "rm -rf $VENV; python3 -m venv $VENV; pip install /repo 2>&1 | tee /work/out/pip-install.log
           pip freeze --all > /work/out/pip-freeze.txt"
    # Anything compiled here would be compiled on every Pi: only edgecxr itself (pure Python) may be.
    grep -o "Building wheel for [^ ]*" "$PI_ROOT/work/out/pip-install.log" | sort -u >"$PI_ROOT/work/out/built.txt" || true
    cat "$PI_ROOT/work/out/pip-freeze.txt" "$PI_ROOT/work/out/built.txt"
}

check_no_tensorflow() {
    pi_sh 'if python -c "import tensorflow" 2>/dev/null; then echo "import tensorflow WORKED"; exit 1; fi
           echo "import tensorflow: fails (as it must)"
           if pip list 2>/dev/null | grep -iE "^(tensorflow|tf-keras|tf_keras|keras|tensorflow-model-optimization)[ -]"; then exit 1; fi
           echo "pip list: no tensorflow, tf-keras, keras"
           python -c "import sys, edgecxr.runtime as r; r.interpreter_backend(); bad = [m for m in sys.modules if m.split(\".\")[0] in (\"tensorflow\", \"keras\", \"tf_keras\")]; print(\"modules after importing edgecxr.runtime:\", bad or \"no TensorFlow\"); sys.exit(bool(bad))"'
}

# What a user who ran `pip install .` (not -e) gets without --model: the shipped model must be found
# or the command must say in one line what to do. Recorded, not judged: it is a packaging question.
default_model_noneditable() {
    pi_sh 'set +e; cd /tmp; image=$(ls /work/images/* | head -n 1)
           edgecxr predict "$image" > /work/out/default-model.txt 2>&1; echo "exit $?" >> /work/out/default-model.txt'
    cat "$PI_ROOT/work/out/default-model.txt"
}

# --- models and images (made on x86) ----------------------------------------------------------------

make_images() {
    PYTHONPATH=$REPO/toolkit:$REPO/tests "$HOST_PYTHON" - "$RUN/images" "$RUN/bench-data" "$REPO/../shared/data/cxr" <<'PY'
import shutil, sys
from pathlib import Path
import numpy as np
from PIL import Image
from synthetic import CLASSES, make_dataset, synthetic_image

images, bench_data, real = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
images.mkdir(parents=True)
rng = np.random.default_rng(2024)
for label in CLASSES:
    arr = synthetic_image(label, rng, 256)
    Image.fromarray(arr).save(images / f"synthetic_{label}.png")
    if label in ("covid19", "viral"):  # JPEG decoding (libjpeg-turbo, SIMD per CPU) is on the path too
        Image.fromarray(arr).convert("RGB").save(images / f"synthetic_{label}.jpg", quality=90)
# A few real radiographs when the shared data set sits beside the repository (read, never copied into it).
for label in CLASSES:
    folder = real / label
    if folder.is_dir():
        first = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:1]
        for p in first:
            shutil.copy(p, images / f"real_{label}{p.suffix.lower()}")
make_dataset(bench_data, per_class=4, size=128, seed=7)
print("\n".join(sorted(p.name for p in images.iterdir())))
PY
}

# Two small test models, int8 (uint8 I/O) and float32, with the spec embedded - used only while no
# shipped model exists. Cached in $PI_WORK/test-models (a minute of x86 CPU to make).
make_test_models() {
    local dir=$PI_WORK/test-models
    if [[ -f $dir/test_mnv3s96_int8.tflite && -f $dir/test_mnv3s96_float32.tflite ]]; then
        echo "cached test models in $dir"
        return 0
    fi
    mkdir -p "$dir"
    PYTHONPATH=$REPO/toolkit:$REPO/tests nice -n 10 "$HOST_PYTHON" - "$dir" <<'PY'
import sys, warnings
from pathlib import Path
import numpy as np
from PIL import Image
import tensorflow as tf
import tf_keras as keras
from synthetic import CLASSES, synthetic_image
from edgecxr.config import TrainConfig
from edgecxr.io import atomic_write_bytes
from edgecxr.model import build_model, model_spec
from edgecxr.preprocess import load_image
from edgecxr.spec import embed_spec

out, size = Path(sys.argv[1]), 96
cfg = TrainConfig(architecture="small", minimalistic=True, image_size=size, weights="none",
                  head_width=64, equalize=True, class_names=list(CLASSES),
                  bn_momentum=0.9)  # 48 steps are too few for the default 0.99 moving statistics
rng = np.random.default_rng(0)
labels = np.arange(128) % len(CLASSES)
x = np.stack([load_image(Image.fromarray(synthetic_image(CLASSES[i], rng, 128)), size, equalize=True)
              for i in labels]).astype("float32")
keras.utils.set_random_seed(0)
model = build_model(cfg)
model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, labels, epochs=6, batch_size=16, verbose=2)
# From-scratch BatchNorm statistics lag the weights after so few steps (inference accuracy at
# chance); a few full-batch passes in training mode bring them up to date.
for _ in range(30):
    model(x, training=True)
print("inference-mode accuracy on its training images:", model.evaluate(x, labels, verbose=0)[1])
serve = tf.function(lambda t: model(t, training=False))
concrete = serve.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))
for name, io_type in (("int8", tf.uint8), ("float32", None)):
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if io_type is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[i : i + 1]] for i in range(0, len(x), 2))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = io_type
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        flat = conv.convert()
    spec = model_spec(cfg, quantization="int8" if io_type else "none", io_dtype="uint8" if io_type else "float32",
                      name=f"test_mnv3s96_{name}",  # the file stem, as edgecxr export names models
                      notes={"purpose": "emulated-Pi check only; trained 6 epochs on synthetic images, not a diagnostic model"})
    atomic_write_bytes(out / f"test_mnv3s96_{name}.tflite", embed_spec(flat, spec))
    print(name, len(flat), "bytes")
PY
}

# --- checks in the arm64 root ------------------------------------------------------------------------

predict_x86() {
    local m
    for m in "${MODELS[@]}"; do
        PYTHONPATH=$REPO/toolkit "$HOST_PYTHON" -m edgecxr.cli predict --json --model "$m" "$RUN/images" \
            >"$RUN/predict-x86-$(basename "$m" .tflite).jsonl" 2>>"$RUN/describe-x86.txt"
    done
    cat "$RUN/describe-x86.txt"
}

predict_arm64() {
    local cpu=$1 m name
    write_cpuinfo "$cpu"
    for m in "${MODELS[@]}"; do
        name=$(basename "$m" .tflite)
        in_pi "$cpu" /bin/bash -c "edgecxr predict --json --model '/work/models/$name.tflite' /work/images \
            > '/work/out/predict-arm64-$cpu-$name.jsonl' 2>> '/work/out/describe-arm64-$cpu.txt'"
    done
    cat "$PI_ROOT/work/out/describe-arm64-$cpu.txt"
}

bench_args() { echo "--data $1 --threads 1,4 --runs 20 --warmup 3 --json"; }

bench_x86() {
    # shellcheck disable=SC2046
    PYTHONPATH=$REPO/toolkit nice -n 10 "$HOST_PYTHON" -m edgecxr.cli bench "${MODELS[@]}" $(bench_args "$RUN/bench-data") \
        --out "$RUN/bench-x86.json"
}

bench_arm64() {
    local names=() m
    for m in "${MODELS[@]}"; do names+=("/work/models/$(basename "$m")"); done
    pi_sh "edgecxr bench ${names[*]} $(bench_args /work/bench-data) --out /work/out/bench-arm64.json"
    cp "$PI_ROOT/work/out/bench-arm64.json" "$RUN/bench-arm64.json"
}

install_kivy() {
    pi_sh "pip install --only-binary=:all: $KIVY_PIN; pip freeze --all > /work/out/pip-freeze-app.txt
           python -c 'import kivy; print(\"kivy\", kivy.__version__)'"
}

app_help() {
    pi_sh 'edgecxr app --help'
    # A non-editable install has no mobile_app/ beside the package: the command must say so in one line.
    pi_sh 'set +e; edgecxr app > /work/out/app-noneditable.txt 2>&1; echo "exit $?" >> /work/out/app-noneditable.txt'
    cat "$PI_ROOT/work/out/app-noneditable.txt"
}

# The real app, headless, through its autopilot: open an image, wait for the result, record the UI, screenshot.
app_headless() {
    local model=/work/models/$(basename "${MODELS[0]}") image
    image=/work/images/synthetic_covid19.png  # synthetic, so the screenshot can be shared
    cat >"$PI_ROOT/work/app/script.json" <<JSON
{"model": "$model", "size": [800, 480], "timeout": $((APP_TIMEOUT - 60)),
 "steps": [["drop", "$image"], ["wait"], ["state"], ["screenshot", "/work/app/arm64-800x480.png"]]}
JSON
    pi_sh "cd /repo/mobile_app; export SDL_VIDEODRIVER=offscreen KIVY_HOME=\$(mktemp -d) XDG_CONFIG_HOME=\$(mktemp -d)
           timeout $APP_TIMEOUT python -m edgecxr_app.autopilot /work/app/script.json /work/app/result.json"
    cp "$PI_ROOT/work/app/result.json" "$RUN/app-result.json"
    cp "$PI_ROOT"/work/app/*.png "$RUN/" 2>/dev/null || true
}

# --- the report ------------------------------------------------------------------------------------

write_report() {
    PYTHONPATH=$REPO/toolkit "$HOST_PYTHON" - "$RUN" "$OUT" "$INT8_TOL" "$FLOAT_TOL" "$MODEL_ORIGIN" \
        "$(($(date +%s) - START))" "$PI_CPU" "$PI_CPUS" "$REPO" "$SUITE" "${MODELS[@]}" <<'PY'
import datetime, json, os, platform, subprocess, sys
from pathlib import Path
from edgecxr.spec import read_spec
from edgecxr.io import atomic_write_text

run, out = Path(sys.argv[1]), Path(sys.argv[2])
int8_tol, float_tol = float(sys.argv[3]), float(sys.argv[4])
origin, total_s, bench_cpu, cpus, models = sys.argv[5], int(sys.argv[6]), sys.argv[7], sys.argv[8].split(), sys.argv[11:]
steps = [line.split("\t") for line in (run / "steps.tsv").read_text().splitlines() if line.strip()]
failed = [s[0] for s in steps if s[1] != "ok"]
checks = []  # (what, ok)

def text(name, default="(not produced)"):
    p = run / name
    return p.read_text().strip() if p.is_file() else default

def model_line(name, model):
    # predict's header names the model as Classifier.name does: the spec's name (the file stem for an
    # export), with "(file NAME)" added when the two differ
    lines = [l for l in text(name, "").splitlines()
             if l.startswith(f"model {Path(model).stem}:") or f" (file {Path(model).name}): " in l]
    return lines[0][len("model "):] if lines else "(not produced)"

def jsonl(path):
    if not path.is_file():
        return {}
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return {Path(r["file"]).name: r for r in rows}

repo, suite = Path(sys.argv[9]), sys.argv[10]
def git(*args):
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"

L = ["# Raspberry Pi path: emulated arm64 check", "",
     "Generated by `sudo bash benchmarks/pi_check.sh` - do not edit by hand; run it again.", "",
     "**What this proves:** edgecxr installs with its runtime dependencies only (no TensorFlow) on "
     f"Debian {suite} arm64 - the userland of Raspberry Pi OS {suite.capitalize()} 64-bit (same Debian release, "
     "Python and glibc) - and its `predict`, `bench` and app run there with the same answers "
     "as on x86. **What it does not prove:** anything about speed, or the Pi's kernel, GPU, camera "
     "or touchscreen. It runs under qemu-user emulation on an x86 machine.", "",
     "> **Latency under emulation means nothing.** qemu translates every arm64 instruction, so the "
     "timings below are 10-100x slower than a real Pi and not even proportional to it. They only show "
     "that `edgecxr bench` runs. Real Raspberry Pi numbers: [pi_results/README.md](pi_results/README.md).", "",
     "## Run", "",
     f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
     f"host: {platform.machine()} {platform.platform(terse=True)}, {os.cpu_count()} cores "
     f"(load average {os.getloadavg()[0]:.1f} when the report was written: other work slows emulation too)",
     f"- tree: commit {git('rev-parse', '--short', 'HEAD')}"
     f"{' with uncommitted changes' if git('status', '--porcelain', '--untracked-files=no') else ''}",
     f"- models: {origin}",
     f"- emulated CPUs: {', '.join(cpus)} (qemu-user `QEMU_CPU`; Cortex-A72 = Pi 4 without dot-product "
     f"instructions, Cortex-A76 = Pi 5 with them, so XNNPACK takes each Pi's kernel paths); bench, "
     f"install and app on {bench_cpu}",
     f"- total: {total_s // 60} min {total_s % 60} s", "",
     "| step | status | seconds | what |", "|---|---|---|---|",
     *(f"| {n} | {st} | {sec} | {note} |" for n, st, sec, note in steps), "",
     "## The arm64 system", "", "```", text("root-facts.txt"), text("root-cache.txt"), "```", "",
     "**`/proc/cpuinfo` is replaced.** qemu-user 7.2 passes the x86 host's `/proc/cpuinfo` to arm64 "
     "programs. The cpuinfo library that ai-edge-litert's XNNPACK uses cannot parse it and creating any "
     "`Interpreter` then dies with SIGSEGV (NULL dereference right after reading `/proc/cpuinfo` and "
     "`/sys/devices/system/cpu`; seen with `QEMU_CPU` cortex-a72 and max, with and without the default delegate, "
     "from a file or from bytes). That is an emulation artifact: on a Pi the kernel writes an ARM `/proc/cpuinfo`. "
     "The script therefore bind-mounts what Raspberry Pi OS shows for the emulated core (implementer 0x41, "
     "part 0xd08 = Cortex-A72 / 0xd0b = Cortex-A76, one block per host CPU so it agrees with `/sys`), with a "
     "`Model` line saying it is emulated - which is also the CPU name `edgecxr bench` reports below:", "",
     "```", text("logs/cpuinfo.log"), "```", "",
     "## Runtime-only install", "",
     "`python3 -m venv /opt/edgecxr-venv && pip install /repo` (no extras), then:", "", "```",
     text("no-tensorflow.txt"), "```", "",
     "Compiled during the install (anything but edgecxr itself would be compiled on every Pi too): "
     + (", ".join(f"`{l.split()[-1]}`" for l in text("built.txt", "").splitlines()) or "nothing")
     + "; every dependency came as an aarch64 or pure-Python wheel unless listed here.", "",
     "`pip freeze --all` inside:", "", "```", text("pip-freeze.txt"), "```", ""]
checks.append(("no TensorFlow in the runtime install", "no-tensorflow" not in failed and (run / "no-tensorflow.txt").is_file()))

# Predictions x86 vs arm64
L += ["## Predictions: x86 vs arm64", "",
      f"`edgecxr predict --json --model MODEL images/` on both. Pass: same label for every image and "
      f"every probability within {int8_tol} (int8 models) or {float_tol} (float models).", "",
      "Images: `synthetic_*` made by `tests/synthetic.py` for this run (PNG, and JPEG for two classes); "
      "`real_*` the first file of each class folder of `../shared/data/cxr` when that data set sits beside the "
      "repository (read at run time, never copied into it).", ""]
for m in models:
    name = Path(m).stem
    quant = read_spec(m).quantization
    tol = float_tol if quant in ("none", "float16") else int8_tol
    x86 = jsonl(run / f"predict-x86-{name}.jsonl")
    for cpu in cpus:
        arm = jsonl(run / f"predict-arm64-{cpu}-{name}.jsonl")
        L += [f"### {name} ({quant}) on {cpu}", "",
              f"- x86: `{model_line('describe-x86.txt', m)}`",
              f"- arm64: `{model_line(f'describe-arm64-{cpu}.txt', m)}`", "",
              "| image | x86 label | arm64 label | x86 probabilities | arm64 probabilities | max abs diff |",
              "|---|---|---|---|---|---|"]
        worst, same = 0.0, bool(x86) and set(x86) == set(arm)
        for img in sorted(x86):
            a, b = x86[img], arm.get(img)
            pa = " ".join(f"{v:.4f}" for v in a["probabilities"].values())
            if b is None:
                L.append(f"| {img} | {a['label']} | (missing) | {pa} | | |")
                same = False
                continue
            diff = max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"])
            worst = max(worst, diff)
            same &= a["label"] == b["label"]
            pb = " ".join(f"{v:.4f}" for v in b["probabilities"].values())
            L.append(f"| {img} | {a['label']} | {b['label']} | {pa} | {pb} | {diff:.2e} |")
        ok = same and worst <= tol
        checks.append((f"{name} on {cpu}: same labels, max diff {worst:.2e} <= {tol}", ok))
        L += ["", f"Result: **{'PASS' if ok else 'FAIL'}** - labels {'identical' if same else 'DIFFER or missing'}, "
              f"largest probability difference {worst:.2e} (tolerance {tol}). Probability order: "
              f"{', '.join(read_spec(m).class_names)}.", ""]

L += ["### Without --model, from the non-editable install", "",
      "`cd /tmp && edgecxr predict IMAGE` in the venv made by `pip install /repo` (the wheel carries no model):", "",
      "```", text("default-model.txt"), "```", ""]

# Bench
def bench_rows(path):
    if not path.is_file():
        return []
    return json.loads(path.read_text())["rows"]
x86b, armb = bench_rows(run / "bench-x86.json"), bench_rows(run / "bench-arm64.json")
L += ["## Bench (emulated: latency meaningless)", "",
      "`edgecxr bench MODELS --data bench-data --threads 1,4 --runs 20 --warmup 3 --json` on a synthetic "
      "labelled set (16 images). The accuracy on these synthetic images says nothing about a model trained "
      "on radiographs; it only has to be the same on both machines. Latency is shown only to prove the "
      "benchmark runs and how far emulation is from anything real.", "",
      "| model | threads | arm64 status | accuracy x86 | accuracy arm64 | p50 ms x86 (real) | p50 ms arm64 (**emulated, meaningless**) | XNNPACK arm64 | peak RSS MB arm64 |",
      "|---|---|---|---|---|---|---|---|---|"]
bench_ok = bool(armb)
for i, r in enumerate(armb):
    xr = x86b[i] if i < len(x86b) else {}
    p50 = lambda row: f"{row['model_only']['p50_ms']:.2f}" if row.get("model_only") else "-"
    acc = lambda row: f"{row['accuracy']:.3f}" if row.get("accuracy") is not None else "-"
    L.append(f"| {r['name']} | {r['threads']} | {r['status']} | {acc(xr)} | {acc(r)} | {p50(xr)} | {p50(r)} | {r['xnnpack']} | {r['peak_rss_mb'] and round(r['peak_rss_mb'])} |")
    bench_ok &= r["status"] == "ok" and xr.get("accuracy") == r.get("accuracy")
checks.append(("bench runs on arm64 with the x86 accuracy", bench_ok))
if armb:
    h = json.loads((run / "bench-arm64.json").read_text())["header"]
    L += ["", f"arm64 bench header: interpreter {h['interpreter']} {h['interpreter_version']}, XNNPACK {h['xnnpack']}, "
          f"CPU `{h['cpu']}` ({h['cores']} cores, the host's, seen through emulation), {h['platform']}, Python {h['python']}."]
L.append("")

# App
L += ["## App extra (Kivy) on arm64", ""]
if (run / "SKIPPED-app").exists():
    L += ["Skipped (PI_SKIP_APP=1).", ""]
else:
    freeze_app = text("pip-freeze-app.txt", "")
    new = sorted(set(freeze_app.splitlines()) - set(text("pip-freeze.txt", "").splitlines()))
    L += ["`pip install --only-binary=:all: kivy==2.3.1` (wheels only, nothing compiled) added:", "", "```",
          "\n".join(new) or "(nothing: install failed, see the step table)", "```", "",
          "`edgecxr app` from this non-editable install (no `mobile_app/` beside the package):", "", "```",
          text("app-noneditable.txt"), "```", ""]
    checks.append(("kivy==2.3.1 installs from aarch64 wheels", "kivy" not in " ".join(failed) and any(l.lower().startswith("kivy==") for l in new)))
    result = json.loads(text("app-result.json", "{}")) if (run / "app-result.json").is_file() else {}
    state = (result.get("states") or [{}])[0]
    if result:
        L += [f"Headless start (`SDL_VIDEODRIVER=offscreen`, Mesa llvmpipe, 800x480 = the Pi 7\" touchscreen) "
              f"through `mobile_app/edgecxr_app/autopilot.py`: completed **{result.get('completed')}**, "
              f"TensorFlow imported: {result.get('tensorflow_imported')}.", "",
              f"- shown: **{state.get('result_label')}** {float(state.get('result_confidence') or 0):.1%} for `{state.get('image_name')}`; "
              f"model line: {state.get('model_details')}; timing: {state.get('timing')}",
              f"- screenshot: {', '.join(s['path'] + ' ' + 'x'.join(map(str, s['size'])) for s in result.get('screenshots', [])) or 'none'} "
              f"(kept in the run directory outside the repository)", ""]
        checks.append(("app starts headless, classifies an image, no TensorFlow",
                       bool(result.get("completed")) and not result.get("tensorflow_imported") and bool(state.get("result_label"))))
        shown = jsonl(run / f"predict-arm64-{bench_cpu}-{Path(models[0]).stem}.jsonl").get(state.get("image_name"), {})
        checks.append((f"the app shows what `edgecxr predict` says for {state.get('image_name')} "
                       f"({state.get('result_label')} vs {shown.get('label')})",
                       bool(shown) and shown.get("label") == state.get("result_label")))
    else:
        L += ["Headless start: no result (see the step table and its log).", ""]
        checks.append(("app starts headless", False))

L += ["## Checks", "", *(f"- [{'x' if ok else ' '}] {what}" for what, ok in checks),
      *(f"- [ ] step `{s}` failed (log: `{run}/logs/{s}.log`)" for s in failed), ""]
all_ok = all(ok for _, ok in checks) and not failed
L += [f"**Overall: {'PASS' if all_ok else 'FAIL'}**", ""]
atomic_write_text(out, "\n".join(L))
print(f"wrote {out}: {'PASS' if all_ok else 'FAIL'}")
sys.exit(0 if all_ok else 1)
PY
}

# --- main --------------------------------------------------------------------------------------------

main() {
    [[ $(id -u) == 0 ]] || die "run as root: sudo bash benchmarks/pi_check.sh [MODEL ...]"
    [[ $PI_ROOT == /[!/]* ]] || die "PI_ROOT must be an absolute path other than /"
    host_python_ok || die "HOST_PYTHON=$HOST_PYTHON cannot run edgecxr's runtime (numpy, Pillow, click, a TFLite interpreter); set HOST_PYTHON"
    mkdir -p "$PI_WORK"
    cleanup  # whatever an interrupted earlier run left mounted
    if findmnt -rn -o TARGET | grep -q "^$PI_ROOT/"; then die "still mounted under $PI_ROOT: $(findmnt -rn -o TARGET | grep "^$PI_ROOT/" | tr '\n' ' ')"; fi
    rm -rf "$RUN" && mkdir -p "$RUN/logs" "$RUN/models"
    : >"$STEPS"
    PI_CPU=${PI_CPUS%% *}
    local cpu
    for cpu in $PI_CPUS; do
        [[ $cpu == cortex-a72 || $cpu == cortex-a76 ]] || die "PI_CPUS: $cpu is not cortex-a72 (Pi 4) or cortex-a76 (Pi 5)"
    done

    MODELS=()
    local m
    if (($#)); then
        for m in "$@"; do [[ -f $m ]] || die "model not found: $m"; MODELS+=("$(realpath "$m")"); done
        MODEL_ORIGIN="given on the command line: $*"
    elif [[ -f $REPO/models/edgecxr_float16.tflite ]]; then
        MODELS=("$REPO/models/edgecxr_float16.tflite")
        MODEL_ORIGIN="the shipped models/edgecxr_float16.tflite"
    else
        step test-models "no shipped model yet: make test models on x86 (TensorFlow)" make_test_models
        passed || die "could not make test models"
        MODELS=("$PI_WORK/test-models/test_mnv3s96_int8.tflite" "$PI_WORK/test-models/test_mnv3s96_float32.tflite")
        MODEL_ORIGIN="models/edgecxr_float16.tflite did not exist yet, so two test models made by this script (MobileNetV3Small minimalistic, 96 px, histogram equalization, 6 epochs on synthetic images; int8 with uint8 I/O, and float32)"
    fi

    step host-tools "debootstrap, qemu-user-static, binfmt-support on the host" host_tools
    passed || fail "host tools"
    MIRROR=${PI_MIRROR:-$(debian_mirror)} || fail "no Debian mirror in /etc/apt/sources.list*; set PI_MIRROR"
    step binfmt "qemu-aarch64 registered with binfmt_misc" enable_binfmt
    passed || fail "binfmt"
    step root "Debian $SUITE arm64 root in $PI_ROOT (debootstrap; cached)" build_root
    passed || fail "root"
    step mounts "proc, sys, dev, resolv.conf into the root" mount_root
    passed || fail "mounts"
    step pip-config "this machine's pip configuration mirrored into the root" mirror_pip_config
    passed || fail "pip config"
    rm -rf "$PI_ROOT/work" && mkdir -p "$PI_ROOT/work/out" "$PI_ROOT/work/models" "$PI_ROOT/work/app"
    step cpuinfo "a Raspberry Pi /proc/cpuinfo for the emulated $PI_CPU (see fake_cpuinfo)" fake_cpuinfo
    passed || fail "cpuinfo"
    step facts "arm64 system facts" root_facts
    cp "$RUN/logs/facts.log" "$RUN/root-facts.txt"
    step copy-repo "working tree copied to /repo in the root" copy_repo
    passed || fail "copy"
    step install "python3 -m venv + pip install /repo (runtime dependencies only)" install_runtime
    passed || fail "install"
    cp "$PI_ROOT/work/out/pip-freeze.txt" "$PI_ROOT/work/out/built.txt" "$RUN/"
    step no-tensorflow "TensorFlow absent: import fails, not in pip list, not imported by the runtime" check_no_tensorflow
    cp "$RUN/logs/no-tensorflow.log" "$RUN/no-tensorflow.txt"

    step images "synthetic PNG/JPEG images (tests/synthetic.py) + a few real ones if ../shared is there" make_images
    passed || fail "images"
    cp -r "$RUN/images" "$RUN/bench-data" "$PI_ROOT/work/"
    for m in "${MODELS[@]}"; do cp "$m" "$PI_ROOT/work/models/"; done
    step predict-x86 "edgecxr predict on x86 (reference)" predict_x86
    for cpu in $PI_CPUS; do
        step "predict-arm64-$cpu" "edgecxr predict in the arm64 root, QEMU_CPU=$cpu" predict_arm64 "$cpu"
        cp "$PI_ROOT/work/out/"predict-arm64-"$cpu"-*.jsonl "$PI_ROOT/work/out/describe-arm64-$cpu.txt" "$RUN/" 2>/dev/null || true
    done
    write_cpuinfo "$PI_CPU"
    step default-model "edgecxr predict without --model from the non-editable install" default_model_noneditable
    cp "$PI_ROOT/work/out/default-model.txt" "$RUN/" 2>/dev/null || true
    step bench-x86 "edgecxr bench on x86 (accuracy reference)" bench_x86
    step bench-arm64 "edgecxr bench in the arm64 root (latency meaningless)" bench_arm64

    if [[ ${PI_SKIP_APP:-0} == 1 ]]; then
        touch "$RUN/SKIPPED-app"
    else
        step apt-app "Mesa GL/EGL + libmtdev1 in the root (apt; cached)" apt_in_root
        step kivy "pip install --only-binary=:all: $KIVY_PIN" install_kivy
        if passed; then
            cp "$PI_ROOT/work/out/pip-freeze-app.txt" "$RUN/"
            step app-help "edgecxr app --help; edgecxr app from a non-editable install" app_help
            cp "$PI_ROOT/work/out/app-noneditable.txt" "$RUN/" 2>/dev/null || true
            step app-headless "the app, headless, opens a synthetic image (timeout ${APP_TIMEOUT}s)" app_headless
        fi
    fi

    cleanup
    log "total $(($(date +%s) - START)) s; writing $OUT"
    write_report
}

# Sourced (benchmarks/pi_exec.sh reuses the functions above): define, do not run.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
