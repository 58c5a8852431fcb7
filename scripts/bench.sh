#!/usr/bin/env bash
# scripts/bench.sh -- the benchmark, in one command: builds the release
# binaries, measures the physical limits (bench/limits/run.sh: L, the atomic
# publish with and without fsync on disk and tmpfs; raw posix_spawn of
# /bin/true, 1 and 4 in flight), then runs the workloads of WORKLOADS.md
# (W1-W4) and the scale checks against workbusd, with the reference polling
# design (bench/reference/polling.py) interleaved per repetition, and prints
# the table: medians, p90, max, ratios to the limits and to the reference,
# and every target with PASS/FAIL. See docs/PERFORMANCE.md.
#
#   scripts/bench.sh [options] [-- wb-bench options]
#
#   --reps N        repetitions (default 3)
#   --quick         1 repetition, no polling one-at-a-time, no cold restart,
#                   limits with 1 repetition (~4 minutes)
#   --no-build      use the binaries already in target/release
#   --bin DIR       use workbusd, wb-worker and wb-bench from DIR (no build)
#   --no-limits     skip bench/limits/run.sh (no ratios to the limits)
#   --no-scale      skip the scale checks (100 000 tasks)
#   --commit TEXT   how to name the code measured (default: git describe)
#   --disk DIR      parent of the disk buses (default /var/tmp)
#   --tmpfs DIR     parent of the tmpfs buses (default /dev/shm)
#   -h, --help
#
# Writes bench/results/{limits,bench}-<UTC stamp>.jsonl (JSON lines) and
# report-<stamp>.txt (the table); bench/results/ is ignored by git except the
# runs docs/PERFORMANCE.md quotes. Takes ~10 minutes on a quiet 2-CPU VM.
# The machine should be otherwise idle: every run records the CPU share
# others used meanwhile and runs that lost more than 10 % are measured again.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

reps=3
quick=0
build=1
limits=1
scale=1
disk=/var/tmp
tmpfs=/dev/shm
bin="$repo/target/release"
commit=""
extra=()
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--reps) reps="$2"; shift 2 ;;
	--quick) quick=1; reps=1; shift ;;
	--no-build) build=0; shift ;;
	--bin) bin="$(cd "$2" && pwd)"; build=0; shift 2 ;;
	--no-limits) limits=0; shift ;;
	--no-scale) scale=0; shift ;;
	--commit) commit="$2"; shift 2 ;;
	--disk) disk="$2"; shift 2 ;;
	--tmpfs) tmpfs="$2"; shift 2 ;;
	-h|--help) usage 0 ;;
	--) shift; extra=("$@"); break ;;
	*) echo "bench.sh: unknown option $1" >&2; usage ;;
	esac
done

# Two benchmarks at once on a 2-CPU machine measure each other.
exec 9>"${TMPDIR:-/tmp}/workbus-bench.lock"
if ! flock -n 9; then
	echo "bench.sh: another benchmark is running (${TMPDIR:-/tmp}/workbus-bench.lock)" >&2
	exit 1
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$repo/bench/results"
mkdir -p "$results"
lim_out="$results/limits-$stamp.jsonl"
bench_out="$results/bench-$stamp.jsonl"
report="$results/report-$stamp.txt"
t_start=$(date +%s)

if [ "$build" = 1 ]; then
	echo "== build (cargo build --release --locked)" >&2
	cargo build --release --locked -p workbus -p workbus-bench
fi
for b in workbusd wb-worker wb-bench; do
	[ -x "$bin/$b" ] || { echo "bench.sh: $bin/$b missing (build, or drop --no-build)" >&2; exit 1; }
done
if [ -z "$commit" ]; then
	commit="$(git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)"
	[ "$bin" = "$repo/target/release" ] || commit="$commit, binaries from $bin"
fi

if [ "$limits" = 1 ]; then
	echo "== physical limits (bench/limits/run.sh)" >&2
	lim_args=(--modes none,file+dir --states clean,steady --methods posix_spawn --inflight 1,4)
	[ "$quick" = 1 ] && lim_args+=(--reps 1)
	bench/limits/run.sh "${lim_args[@]}" --out "$lim_out" "$disk" "$tmpfs" >/dev/null
fi

echo "== workloads (wb-bench)" >&2
wb_args=(--reps "$reps" --configs disk,disk-nofsync,tmpfs --disk "$disk" --tmpfs "$tmpfs"
	--commit "$commit" --out "$bench_out" --repo "$repo" --bin "$bin")
if [ "$quick" = 1 ]; then
	wb_args+=(--reference all)
else
	wb_args+=(--reference all,one --hop-trace --scale-cold --w3-long 90)
fi
[ "$scale" = 1 ] || wb_args+=(--workloads w1,w2,w3,w4)
status=0
"$bin/wb-bench" "${wb_args[@]}" "${extra[@]}" || status=$?

rep_args=("$bench_out")
[ -f "$lim_out" ] && rep_args+=(--limits "$lim_out")
python3 bench/report.py --append "${rep_args[@]}" | tee "$report"
echo >&2
echo "bench.sh: done in $(($(date +%s) - t_start)) s; JSON lines: ${lim_out#"$repo"/} ${bench_out#"$repo"/}; table: ${report#"$repo"/}" >&2
exit "$status"
