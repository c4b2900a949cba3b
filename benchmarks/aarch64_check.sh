#!/usr/bin/env bash
# aarch64 proven without a board: run the edgeclip runtime (ONNX Runtime on the CPU, the built-in
# default model, every precision Embedder(precision=...) has) on aarch64 Linux under qemu-user
# emulation, embed 32 Flickr8k test photos and 32 of their captions, and compare with the same
# embeddings computed natively on this x86-64 machine (same precision, same library versions).
#
#   sudo benchmarks/aarch64_check.sh [--n 32] [--qemu-cpu cortex-a76] [--precisions int8,fp32,fp16]
#                                    [--data DIR] [--out benchmarks/results/aarch64_check.json]
#
# Needs root (apt-get, chroot, mount), Debian/Ubuntu on x86-64, network access to the Debian
# archive and PyPI. Everything it builds lives OUTSIDE the repository:
#   AARCH64_ROOT   arm64 Debian bookworm root file system   (default /work/aarch64-root)
#   AARCH64_WHEELS aarch64 wheels downloaded from PyPI       (default /work/aarch64-wheels)
#   AARCH64_WORK   x86 venv, source snapshot, inputs, npz    (default /work/aarch64-run)
# Rerunnable: the root file system, wheels and venvs are reused when complete; the source
# snapshot, inputs and embeddings are redone every run. Slow: emulated ONNX Runtime is ~10-50x
# slower than native; a first run (root fs + downloads + emulated pip) takes tens of minutes.
# Exit status: 0 every precision >= threshold, 1 a cosine is below it, 2 setup failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${AARCH64_ROOT:-/work/aarch64-root}
WHEELS=${AARCH64_WHEELS:-/work/aarch64-wheels}
WORK=${AARCH64_WORK:-/work/aarch64-run}
SUITE=${AARCH64_SUITE:-bookworm}            # Debian 12: python3.11 (JetPack 6 / Ubuntu 22.04: 3.10)
MIRROR=${AARCH64_MIRROR:-http://deb.debian.org/debian}
N=32
QEMU_CPU=cortex-a76   # ARMv8.2 + fp16 + dotprod, no i8mm/SVE: the ISA of Jetson Orin's Cortex-A78AE
PRECISIONS=int8,fp32,fp16   # fastest first: FP16 arithmetic is slowest under qemu
DATA=${EDGECLIP_FLICKR8K:-$REPO/../shared/data/flickr8k}
OUT=$REPO/benchmarks/results/aarch64_check.json
THRESHOLD=0.9999
# The same versions on both machines, so that only the CPU architecture differs.
PINS=(numpy==2.4.6 pillow==13.0.0 onnxruntime==1.32.0 tokenizers==0.23.3 click==8.5.1 tqdm==4.70.1)

while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --qemu-cpu) QEMU_CPU=$2; shift 2 ;;
    --precisions) PRECISIONS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --threshold) THRESHOLD=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
CMDLINE="benchmarks/aarch64_check.sh --n $N --qemu-cpu $QEMU_CPU --precisions $PRECISIONS"

say() { printf '\n== %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { echo "error: $*" >&2; exit 2; }
STARTED=$(date +%s.%N)
declare -A STAGE
stage_start() { STAGE_T0=$(date +%s.%N); }
stage_end() { STAGE[$1]=$(python3 -c "print(round($(date +%s.%N) - $STAGE_T0, 1))"); }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, chroot and mount need it): sudo $0"
[ "$(uname -m)" = x86_64 ] || die "this compares aarch64 with x86-64; run it on an x86-64 host"
for d in "$ROOT" "$WHEELS" "$WORK"; do
  case "$(realpath -m "$d")/" in "$REPO"/*) die "$d is inside the repository; put it outside" ;; esac
done
[ -f "$DATA/splits/test.txt" ] || die "no Flickr8k at $DATA (pass --data DIR or set EDGECLIP_FLICKR8K)"
# Other work shares the CPU: one ONNX Runtime thread and a low priority everywhere.
NICE=(nice -n 10)

# ---------------------------------------------------------------------------------------------
say "1/8 host tools: qemu-user-static, binfmt-support, mmdebstrap"
stage_start
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null \
   || ! command -v update-binfmts >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support \
      mmdebstrap python3-venv
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  run mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  run update-binfmts --enable qemu-aarch64
fi
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || die "binfmt qemu-aarch64 lacks the F flag: the chroot could not find its interpreter"
QEMU_VERSION=$(qemu-aarch64-static --version | head -1)
echo "$QEMU_VERSION; binfmt: $(tr '\n' ' ' </proc/sys/fs/binfmt_misc/qemu-aarch64)"
stage_end host_tools

# ---------------------------------------------------------------------------------------------
say "2/8 arm64 Debian $SUITE root file system in $ROOT (mmdebstrap, second stage under qemu)"
stage_start
if [ ! -f "$ROOT/.edgeclip-rootfs-ok" ]; then
  [ -e "$ROOT" ] && run rm -rf --one-file-system "$ROOT"
  run "${NICE[@]}" mmdebstrap --arch=arm64 --variant=apt \
      --include=python3,python3-venv,python3-pip,libstdc++6,libgomp1,ca-certificates \
      "$SUITE" "$ROOT" "$MIRROR"
  touch "$ROOT/.edgeclip-rootfs-ok"
else
  echo "reusing $ROOT"
fi
stage_end rootfs

# Mount /proc while we use the chroot; unmount on exit. Not /sys: the host's (x86) sysfs CPU
# topology makes ONNX Runtime's cpuinfo crash the emulated process at import (SIGSEGV, seen);
# without it cpuinfo fails cleanly and ORT takes the CPU features from AT_HWCAP, which qemu sets
# from -cpu. (mmdebstrap already made the few /dev nodes needed.)
MOUNTED=()
cleanup() {
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in sys dev; do
  mountpoint -q "$ROOT/$m" && die "$ROOT/$m is a mount point: unmount it (umount -l $ROOT/$m)"
done
if ! mountpoint -q "$ROOT/proc"; then
  run mount -t proc proc "$ROOT/proc"
  MOUNTED+=("$ROOT/proc")
fi
inroot() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
           LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" "$@"; }
echo "inside: $(inroot uname -m), $(inroot python3 --version)"

# ---------------------------------------------------------------------------------------------
say "3/8 aarch64 wheels of the runtime's dependencies from PyPI into $WHEELS"
stage_start
ARM_PY=$(inroot python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
mkdir -p "$WHEELS" "$WORK"
[ -x "$WORK/x86-venv/bin/python" ] || run python3 -m venv "$WORK/x86-venv"
HOSTPIP=("$WORK/x86-venv/bin/python" -m pip --disable-pip-version-check -q)
run "${HOSTPIP[@]}" download --only-binary=:all: --dest "$WHEELS" \
    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --python-version "$ARM_PY" --implementation cp --abi "cp$ARM_PY" --abi abi3 --abi none \
    "${PINS[@]}"
ls "$WHEELS"

# ---------------------------------------------------------------------------------------------
say "4/8 x86-64 reference environment $WORK/x86-venv (same versions) and an edgeclip wheel"
run "${HOSTPIP[@]}" install "${PINS[@]}" "setuptools>=68" wheel
# A snapshot of the working tree (tracked + untracked, not ignored): both machines run this code
# and this model, whatever changes in the repository meanwhile.
run rm -rf "$WORK/src" "$WORK/dist"
mkdir -p "$WORK/src" "$WORK/dist"
if git -C "$REPO" rev-parse >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK/src" 2>/dev/null || true)
  GIT_REV="$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- edgeclip || echo '+dirty')"
else
  cp -r "$REPO/edgeclip" "$REPO/pyproject.toml" "$REPO/README.md" "$WORK/src/"
  GIT_REV=unknown
fi
run "${HOSTPIP[@]}" wheel --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHL=$(ls "$WORK"/dist/edgeclip-*.whl)
run "${HOSTPIP[@]}" install --no-deps --force-reinstall "$WHL"
stage_end wheels_and_x86_env

# ---------------------------------------------------------------------------------------------
say "5/8 aarch64 venv in the chroot: offline install of the wheels, edgeclip without deps"
stage_start
run mkdir -p "$ROOT/opt/wheels" "$ROOT/opt/edgeclip-check"
run cp -u "$WHEELS"/*.whl "$ROOT/opt/wheels/"
run cp "$WHL" "$ROOT/opt/edgeclip-check/"
if [ ! -x "$ROOT/opt/venv/bin/python" ]; then
  run inroot "${NICE[@]}" python3 -m venv /opt/venv
fi
run inroot "${NICE[@]}" /opt/venv/bin/python -m pip --disable-pip-version-check -q install \
    --no-index --find-links /opt/wheels "${PINS[@]}"
run inroot "${NICE[@]}" /opt/venv/bin/python -m pip --disable-pip-version-check -q install \
    --no-index --no-deps --force-reinstall "/opt/edgeclip-check/$(basename "$WHL")"
stage_end arm_env

# ---------------------------------------------------------------------------------------------
say "6/8 inputs: the first $N photos of Flickr8k's test split and one caption each"
run rm -rf "$WORK/inputs" "$WORK/out" "$ROOT/opt/edgeclip-check/inputs" "$ROOT/opt/edgeclip-check/out"
mkdir -p "$WORK/out" "$ROOT/opt/edgeclip-check/out"
run "$WORK/x86-venv/bin/python" "$REPO/benchmarks/aarch64_embed.py" prepare --data "$DATA" \
    --n "$N" --out "$WORK/inputs"
run cp -r "$WORK/inputs" "$ROOT/opt/edgeclip-check/inputs"
run cp "$REPO/benchmarks/aarch64_embed.py" "$ROOT/opt/edgeclip-check/"

# Run from / so that `import edgeclip` finds the installed wheel, not a checkout.
say "7/8 embed on x86-64 (native, 1 thread)"
stage_start
(cd / && run env OMP_NUM_THREADS=1 "${NICE[@]}" "$WORK/x86-venv/bin/python" \
   "$REPO/benchmarks/aarch64_embed.py" embed --inputs "$WORK/inputs" --precisions "$PRECISIONS" \
   --threads 1 --out "$WORK/out/x86.npz")
if [[ ",$PRECISIONS," == *,int8,* ]]; then
  # Diagnostic: x86 INT8 again with ONNX Runtime's non-saturating U8U8 kernels. On x86 CPUs
  # without VNNI the default U8S8 path (vpmaddubsw) saturates 16-bit pair sums; ARM's dot-product
  # kernels do not. Not what the runtime does by default: reported beside the main numbers.
  (cd / && run env OMP_NUM_THREADS=1 "${NICE[@]}" "$WORK/x86-venv/bin/python" \
     "$REPO/benchmarks/aarch64_embed.py" embed --inputs "$WORK/inputs" --precisions int8 \
     --threads 1 --ort-config session.x64quantprecision=1 --out "$WORK/out/x86_u8u8.npz")
  EXTRA=(--extra "u8u8=$WORK/out/x86_u8u8.npz")
else
  EXTRA=()
fi
stage_end x86_embed

say "8/8 embed on aarch64 (qemu-user, -cpu $QEMU_CPU, 1 thread): slow"
stage_start
run inroot OMP_NUM_THREADS=1 "${NICE[@]}" /opt/venv/bin/python \
    /opt/edgeclip-check/aarch64_embed.py embed --inputs /opt/edgeclip-check/inputs \
    --precisions "$PRECISIONS" --threads 1 --out /opt/edgeclip-check/out/aarch64.npz
cp "$ROOT"/opt/edgeclip-check/out/aarch64.{npz,json} "$WORK/out/"
stage_end aarch64_embed

say "compare (cosine per row, same precision; threshold $THRESHOLD)"
STAGES=$(for k in "${!STAGE[@]}"; do printf '"%s": %s,' "$k" "${STAGE[$k]}"; done)
set +e
(cd / && "$WORK/x86-venv/bin/python" "$REPO/benchmarks/aarch64_embed.py" compare \
   --ref "$WORK/out/x86.npz" --test "$WORK/out/aarch64.npz" --out "$OUT" \
   --threshold "$THRESHOLD" --emulator "$QEMU_VERSION" --qemu-cpu "$QEMU_CPU" "${EXTRA[@]}" \
   --started "$STARTED" --stage-seconds "{${STAGES%,}}" --command "sudo $CMDLINE" \
   --note "edgeclip wheel built from the working tree at $GIT_REV; root fs: Debian $SUITE arm64")
rc=$?
set -e
exit $rc
