#!/usr/bin/env bash
# run.sh -- the physical-limit probes of shared WORKLOADS.md: "L" (atomic
# publish: publish.c) and the raw limit of W4 (spawn.c); builds them first.
#
#   bench/limits/run.sh [options] [DIR ...]     (default DIRs: /var/tmp /dev/shm)
#
# Options (lists are comma-separated):
#   --modes LIST       publish modes            (default none,file,dir,file+dir)
#   --states LIST      file-system states       (default clean,steady,churned)
#   --reps N           repetitions              (default 3; median reported)
#   --seconds-none S   duration of mode none    (default 2)
#   --seconds-fsync S  duration of fsync modes  (default 3)
#   --max-ops N        ops cap per run          (default 20000)
#   --no-publish       skip L
#   --no-spawn         skip the spawn probe
#   --spawn-n N        children per spawn run   (default 500)
#   --inflight LIST    children in flight       (default 1,4)
#   --methods LIST     posix_spawn,fork         (default both)
#   --decay DIR        also: churn DIR once, then time 1000 publishes (mode
#                      none) every 5 s for 6 minutes (shows how long the
#                      churned slowdown lasts; adds 6 minutes)
#   --test-proctree    also run test_proctree.py (the W3 idle meter's check)
#   --quiet-busy F     before each measurement, wait (up to --quiet-max s,
#                      default 30) until other processes use less than F of
#                      the CPUs (default 0.10); 1 turns waiting off
#   --retries N        re-measure a contended run (one that spent > 10 % of
#                      its time waiting for a CPU; see quiet.py), up to N more
#                      times (default 2); every attempt is kept in the JSON
#                      lines ("attempt"), the summary uses the last one
#   --out FILE         JSON lines (default bench/results/limits-<date>.jsonl)
#   --build DIR        where the binaries go (default bench/build)
#
# Order: repetition-major (rep 1 of everything, then rep 2, ...), so the
# repetitions of one configuration are spread in time; within a repetition,
# per folder: states in the order given, modes in the order given.
# The default run takes about 2-3 minutes on a 2-CPU VM.
#
# publish.c works in DIR/.workbus-limits (see the comment at its top): its
# churn and cleanup do not slow down file creation in other directories of
# DIR on ext4 without a journal. It leaves empty run directories there,
# removed by later runs once 10 minutes old.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bench="$(dirname "$here")"

modes="none,file,dir,file+dir"
states="clean,steady,churned"
reps=3
sec_none=2
sec_fsync=3
max_ops=20000
do_publish=1
do_spawn=1
spawn_n=500
inflight="1,4"
methods="posix_spawn,fork"
decay_dir=""
quiet_busy=0.10
quiet_max=30
retries=2
test_proctree=0
out=""
build="$bench/build"
dirs=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
	case "$1" in
	--modes) modes="$2"; shift 2 ;;
	--states) states="$2"; shift 2 ;;
	--reps) reps="$2"; shift 2 ;;
	--seconds-none) sec_none="$2"; shift 2 ;;
	--seconds-fsync) sec_fsync="$2"; shift 2 ;;
	--max-ops) max_ops="$2"; shift 2 ;;
	--no-publish) do_publish=0; shift ;;
	--no-spawn) do_spawn=0; shift ;;
	--spawn-n) spawn_n="$2"; shift 2 ;;
	--inflight) inflight="$2"; shift 2 ;;
	--methods) methods="$2"; shift 2 ;;
	--decay) decay_dir="$2"; shift 2 ;;
	--test-proctree) test_proctree=1; shift ;;
	--quiet-busy) quiet_busy="$2"; shift 2 ;;
	--quiet-max) quiet_max="$2"; shift 2 ;;
	--retries) retries="$2"; shift 2 ;;
	--out) out="$2"; shift 2 ;;
	--build) build="$2"; shift 2 ;;
	-h|--help) usage 0 ;;
	--*) echo "run.sh: unknown option $1" >&2; usage ;;
	*) dirs+=("$1"); shift ;;
	esac
done
[ ${#dirs[@]} -gt 0 ] || dirs=(/var/tmp /dev/shm)
if [ -z "$out" ]; then
	mkdir -p "$bench/results"
	out="$bench/results/limits-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
fi
IFS=, read -r -a mode_list <<<"$modes"
IFS=, read -r -a state_list <<<"$states"
IFS=, read -r -a inflight_list <<<"$inflight"
IFS=, read -r -a method_list <<<"$methods"
for m in "${mode_list[@]}"; do
	case "$m" in none|file|dir|file+dir) ;; *) echo "run.sh: bad mode $m" >&2; exit 2 ;; esac
done
for s in "${state_list[@]}"; do
	case "$s" in clean|churned|steady) ;; *) echo "run.sh: bad state $s" >&2; exit 2 ;; esac
done
for m in "${method_list[@]}"; do
	case "$m" in posix_spawn|fork) ;; *) echo "run.sh: bad method $m" >&2; exit 2 ;; esac
done

mkdir -p "$build"
gcc -O2 -Wall -Wextra -o "$build/publish" "$here/publish.c"
gcc -O2 -Wall -Wextra -o "$build/spawn" "$here/spawn.c"
# run by wb-bench just before each W1 and W4 repetition, not here
gcc -O2 -Wall -Wextra -pthread -o "$build/chain" "$here/chain.c"
gcc -O2 -Wall -Wextra -o "$build/spawnbus" "$here/spawnbus.c"

: >"$out"
host_line() {
	printf '{"probe":"host","date":"%s","kernel":"%s","cpus":%s,"mem_kb":%s,"load":"%s"}\n' \
		"$(date -u +%FT%TZ)" "$(uname -r)" "$(nproc)" \
		"$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(cut -d' ' -f1-3 /proc/loadavg)"
}
host_line >>"$out"
echo "run.sh: JSON lines -> $out" >&2

# measure: run a probe command until it was not contended (or out of retries);
# appends every attempt to $out, annotated; prints the last line
measure() {
	local attempt=0 line q
	while :; do
		q=$(python3 "$here/quiet.py" wait --busy "$quiet_busy" --max "$quiet_max")
		line=$("$@")
		line=$(sed -E "s/\}\$/,\"attempt\":$attempt,\"quiet_wait_s\":${q% *},\"busy_before\":${q#* }}/" <<<"$line")
		if python3 "$here/quiet.py" contended "$line" || [ "$attempt" -ge "$retries" ]; then
			echo "${line/\"attempt\"/\"final\":true,\"attempt\"}" >>"$out"
			echo "$line"
			return
		fi
		echo "$line" >>"$out"
		attempt=$((attempt + 1))
	done
}

t_start=$(date +%s)
for ((rep = 1; rep <= reps; rep++)); do
	if [ "$do_publish" = 1 ]; then
		for d in "${dirs[@]}"; do
			for s in "${state_list[@]}"; do
				for m in "${mode_list[@]}"; do
					secs=$sec_fsync
					[ "$m" = none ] && secs=$sec_none
					line=$(measure "$build/publish" --state "$s" --label "rep=$rep" "$d" "$m" "$secs" "$max_ops")
					printf '  rep %d  %-10s %-8s %-8s %s\n' "$rep" "$d" "$s" "$m" \
						"$(sed -E 's/.*"ops_per_s":([0-9.]+).*"lat_us_median":([0-9.]+).*/\1 ops\/s, median \2 us/' <<<"$line")" >&2
				done
			done
		done
	fi
	if [ "$do_spawn" = 1 ]; then
		for k in "${inflight_list[@]}"; do
			for m in "${method_list[@]}"; do
				line=$(measure "$build/spawn" --n "$spawn_n" --inflight "$k" --method "$m" --label "rep=$rep")
				printf '  rep %d  spawn %-11s x%-2s %s\n' "$rep" "$m" "$k" \
					"$(sed -E 's/.*"tasks_per_s":([0-9.]+).*/\1 tasks\/s/' <<<"$line")" >&2
			done
		done
	fi
done

if [ -n "$decay_dir" ]; then
	echo "run.sh: decay series on $decay_dir (6 minutes)" >&2
	"$build/publish" --state churned --series 72 --every 5 --label decay "$decay_dir" none 1 1000 >>"$out"
fi
if [ "$test_proctree" = 1 ]; then
	if python3 "$here/test_proctree.py" >"$build/test_proctree.json"; then
		echo '{"probe":"test_proctree","ok":true}' >>"$out"
	else
		echo '{"probe":"test_proctree","ok":false}' >>"$out"
	fi
fi
echo "run.sh: done in $(($(date +%s) - t_start)) s" >&2

python3 "$here/summarize.py" --append "$out"
