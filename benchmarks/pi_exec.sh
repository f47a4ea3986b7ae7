#!/usr/bin/env bash
# Run one command in pi_check.sh's cached arm64 root (Debian bookworm + the runtime-only edgecxr
# venv), emulating one Raspberry Pi core, with a directory of files copied in.
#
#   sudo bash benchmarks/pi_exec.sh CPU DIR CMD...     # CPU: cortex-a72 (Pi 4) or cortex-a76 (Pi 5)
#
# DIR is copied to /work/exec in the root (CMD runs there, with the venv's python first on PATH) and
# copied back when CMD ends, so CMD can leave results in it. Build the root first with
# `sudo bash benchmarks/pi_check.sh`. Emulation: answers are arm64's, timings are qemu's, not a Pi's.
set -euo pipefail
(($# >= 3)) || { echo "usage: sudo bash benchmarks/pi_exec.sh CPU DIR CMD..." >&2; exit 2; }
EXEC_CPU=$1 EXEC_DIR=$(realpath "$2")
shift 2
# shellcheck source=pi_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/pi_check.sh"
[[ $(id -u) == 0 ]] || die "run as root"
[[ -x $PI_ROOT$VENV/bin/python ]] || die "no arm64 root with edgecxr's venv in $PI_ROOT: run sudo bash benchmarks/pi_check.sh first"
[[ -d $EXEC_DIR ]] || die "$EXEC_DIR: not a directory"
mkdir -p "$PI_WORK"
cleanup
enable_binfmt >/dev/null
mount_root >/dev/null
PI_CPU=$EXEC_CPU
fake_cpuinfo >/dev/null
rm -rf "$PI_ROOT/work/exec" && mkdir -p "$PI_ROOT/work" && cp -r "$EXEC_DIR" "$PI_ROOT/work/exec"
set +e
in_pi "$EXEC_CPU" /bin/bash -c 'cd /work/exec && "$@"' bash "$@"
rc=$?
set -e
cp -r "$PI_ROOT/work/exec/." "$EXEC_DIR/"
exit $rc
