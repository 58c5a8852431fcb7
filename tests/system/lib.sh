# shellcheck shell=bash disable=SC2016,SC2034
# (SC2034: WB_* globals are read by the sourcing test scripts;
#  SC2016: single-quoted $ are meant for the shell inside the container)
# tests/system/lib.sh — harness for system tests that boot a real systemd
# inside a systemd-nspawn container on this machine.
#
# Source it from a bash test script:
#
#     set -Eeuo pipefail
#     . "$(dirname "$0")/lib.sh"
#     wb_init "my test"            # timing, traps, log dir
#     wb_require_capabilities      # exit 77 with a reason if impossible here
#     ensure_host_tools            # systemd-container, debootstrap, ...
#     ensure_rootfs                # cached Debian bookworm root (built once)
#     boot_container mytest --bind-ro=/some/dir:/mnt/x
#     in_container systemctl status foo
#     ...                          # stop_container runs from the EXIT trap
#
# Exit codes of scripts using wb_init: 0 pass, 1 failure, 77 the capability
# is absent on this machine (printed as "UNSUPPORTED: reason"); never 0
# unless every step ran.
#
# Tunables (environment):
#   WB_CACHE_DIR     cache root (default /var/cache/workbus-test)
#   WB_SUITE         Debian suite of the container root (default bookworm)
#   WB_MIRROR        mirror URI (default: read from the host's apt sources)
#   WB_ROOTFS_EXTRA_PACKAGES  comma-separated extra packages for the root
#                    (part of the stamp: changing it rebuilds the root)
#   WB_BOOT_TIMEOUT  seconds to wait for the container to boot (default 90)
#   WB_STOP_TIMEOUT  seconds for a clean shutdown before killing (default 30)
#   WB_KEEP_LOGS     1: keep the per-run log dir even on success
#   WB_VERBOSE       1: echo every in_container command
# (set them before sourcing this file)
#
# Helpers once a container is up: in_container CMD..., ct_sh 'SCRIPT',
# ct_as USER CMD..., ct_write PATH [MODE] <content, ct_apt ARGS...,
# ct_prop UNIT PROP, ct_journal ARGS...; assertions: assert_eq, assert_ne,
# assert_match, assert_contains, assert_not_contains, assert_ok, assert_fails,
# wait_until TIMEOUT WHAT CMD...; reporting: step, ok, fail, unsupported.

# ---------------------------------------------------------------- settings --

WB_LIB_VERSION=1          # bump to force a rebuild of cached roots
WB_CACHE_DIR=${WB_CACHE_DIR:-/var/cache/workbus-test}
WB_SUITE=${WB_SUITE:-bookworm}
WB_ROOTFS=${WB_ROOTFS:-$WB_CACHE_DIR/rootfs-$WB_SUITE}
WB_ROOTFS_STAMP=$WB_ROOTFS.stamp
WB_BOOT_TIMEOUT=${WB_BOOT_TIMEOUT:-90}
WB_STOP_TIMEOUT=${WB_STOP_TIMEOUT:-30}
# What the container root needs:
#  systemd, systemd-sysv   PID 1 (/sbin/init), systemctl, journalctl,
#                          systemd-analyze, sysusers, tmpfiles, systemd-notify
#  dbus                    system bus (busctl, hostnamectl...; systemctl
#                          itself uses /run/systemd/private as root)
#  procps                  /bin/kill (ExecReload=/bin/kill -HUP $MAINPID),
#                          ps, pgrep — minbase has no kill binary
#  adduser                 what Debian maintainer scripts usually call
# minbase already brings dpkg, apt (offline `apt install ./x.deb` works when
# the dependencies are present), passwd (useradd/groupadd), util-linux
# (runuser, setpriv), login (su), perl-base, bsdutils (logger).
WB_ROOTFS_PACKAGES="systemd,systemd-sysv,dbus,procps,adduser${WB_ROOTFS_EXTRA_PACKAGES:+,$WB_ROOTFS_EXTRA_PACKAGES}"
# Units that only make noise (or run apt!) inside a throw-away test container.
WB_ROOTFS_MASK="apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service"

WB_CT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WB_T0=${WB_T0:-$EPOCHREALTIME}

# ------------------------------------------------------------ diagnostics --

# elapsed seconds (one decimal) since $1 (an EPOCHREALTIME value)
wb__since() {
  local a=${1/[.,]/} b=${EPOCHREALTIME/[.,]/}
  local d=$(( (b - a) / 100000 ))
  printf '%d.%d' $((d / 10)) $((d % 10))
}

wb_log() { printf '[%6ss] %s\n' "$(wb__since "$WB_T0")" "$*" >&2; }
# A numbered, visible step of the test.
step() {
  WB_STEP_NO=$((WB_STEP_NO + 1))
  WB_STEP_NAME=$*
  printf '[%6ss] === step %d: %s\n' "$(wb__since "$WB_T0")" "$WB_STEP_NO" "$*" >&2
}
ok() { printf '[%6ss]     ok: %s\n' "$(wb__since "$WB_T0")" "$*" >&2; }

fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  [[ -n ${WB_STEP_NAME:-} ]] && printf '      (in step %d: %s)\n' "$WB_STEP_NO" "$WB_STEP_NAME" >&2
  WB_FAILED=1
  exit 1
}

# The thing cannot be tested on this machine at all: distinct code and text.
unsupported() {
  printf '\nUNSUPPORTED: %s\n' "$*" >&2
  printf 'UNSUPPORTED: this test did NOT run (exit 77); it did not pass.\n' >&2
  WB_UNSUPPORTED=1
  exit 77
}

# ------------------------------------------------------------- assertions --

assert_eq() { # ACTUAL EXPECTED WHAT
  [[ "$1" == "$2" ]] || fail "${3:-value}: expected '$2', got '$1'"
}
assert_ne() { # ACTUAL UNEXPECTED WHAT
  [[ "$1" != "$2" ]] || fail "${3:-value}: expected something other than '$2'"
}
assert_match() { # ACTUAL ERE WHAT
  [[ "$1" =~ $2 ]] || fail "${3:-value}: '$1' does not match /$2/"
}
assert_contains() { # HAYSTACK NEEDLE WHAT
  [[ "$1" == *"$2"* ]] || fail "${3:-output}: does not contain '$2'; got:
$(printf '%s\n' "$1" | tail -n 30 | sed 's/^/    | /')"
}
assert_not_contains() { # HAYSTACK NEEDLE WHAT
  [[ "$1" != *"$2"* ]] || fail "${3:-output}: unexpectedly contains '$2'; got:
$(printf '%s\n' "$1" | tail -n 30 | sed 's/^/    | /')"
}
# assert_ok WHAT CMD...   — command must exit 0; shows its output if not.
assert_ok() {
  local what=$1 out rc=0; shift
  out=$("$@" 2>&1) || rc=$?
  ((rc == 0)) || fail "$what: '$*' exited $rc; output:
$(printf '%s\n' "$out" | tail -n 40 | sed 's/^/    | /')"
  WB_OUT=$out
}
# assert_fails WHAT CMD... — command must exit non-zero.
assert_fails() {
  local what=$1 out rc=0; shift
  out=$("$@" 2>&1) || rc=$?
  ((rc != 0)) || fail "$what: '$*' unexpectedly succeeded; output:
$(printf '%s\n' "$out" | tail -n 40 | sed 's/^/    | /')"
  WB_OUT=$out
}

# wait_until TIMEOUT WHAT CMD... — poll CMD (every 0.2 s) until it exits 0.
wait_until() {
  local timeout=$1 what=$2 t0=$EPOCHREALTIME out=''; shift 2
  while :; do
    if out=$("$@" 2>&1); then WB_OUT=$out; return 0; fi
    if (( ${EPOCHREALTIME/[.,]/} - ${t0/[.,]/} > timeout * 1000000 )); then
      fail "timed out after ${timeout}s waiting for: $what; last output:
$(printf '%s\n' "$out" | tail -n 30 | sed 's/^/    | /')"
    fi
    sleep 0.2
  done
}

# ----------------------------------------------------------------- set-up --

# wb_init NAME — start the clock, make a log dir, install the traps.
wb_init() {
  WB_TEST_NAME=${1:-$(basename "$0")}
  WB_T0=$EPOCHREALTIME
  WB_STEP_NO=0 WB_STEP_NAME='' WB_FAILED=0 WB_UNSUPPORTED=0
  WB_CT_NAME='' WB_CT_NSPAWN_PID='' WB_CT_LEADER='' WB_CT_CGROUPS=()
  WB_BUILD_PID='' WB_BUILD_TMP=''
  if ((BASH_VERSINFO[0] < 5)); then
    echo "UNSUPPORTED: bash >= 5 required (EPOCHREALTIME)" >&2; exit 77
  fi
  WB_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/workbus-systest.XXXXXX")
  trap 'wb__on_err $? $LINENO "$BASH_COMMAND"' ERR
  trap 'wb__on_exit' EXIT
  trap 'echo "interrupted" >&2; exit 130' INT TERM HUP
  wb_log "$WB_TEST_NAME: logs in $WB_RUN_DIR"
}

wb__on_err() {
  # With set -e the script is about to exit: say which command failed.
  [[ $- == *e* ]] || return 0
  ((${WB_IN_ERR:-0})) && return 0
  WB_IN_ERR=1
  printf '\nFAIL: command exited %s at %s line %s: %s\n' "$1" "${BASH_SOURCE[1]:-?}" "$2" "$3" >&2
  local i
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
    printf '      called from %s line %s (%s)\n' "${BASH_SOURCE[i + 1]}" "${BASH_LINENO[i]}" "${FUNCNAME[i]}" >&2
  done
  [[ -n ${WB_STEP_NAME:-} ]] && printf '      (in step %d: %s)\n' "$WB_STEP_NO" "$WB_STEP_NAME" >&2
  WB_FAILED=1
}

wb__on_exit() {
  local rc=$?
  trap - ERR
  set +e
  if ((rc != 0 && rc != 77)) && [[ -n ${WB_CT_LEADER:-} ]]; then
    wb__dump_container_state
  fi
  stop_container
  if [[ -n ${WB_BUILD_PID:-} ]]; then
    wb_log "stopping unfinished debootstrap (pid $WB_BUILD_PID) and removing ${WB_BUILD_TMP}"
    kill -TERM -- "-$WB_BUILD_PID" 2>/dev/null || kill -TERM "$WB_BUILD_PID" 2>/dev/null
    wait "$WB_BUILD_PID" 2>/dev/null
    WB_BUILD_PID=''
  fi
  [[ -n ${WB_BUILD_TMP:-} && -d $WB_BUILD_TMP ]] && wb__rm_tree "$WB_BUILD_TMP"
  if ((rc == 0)); then
    printf '[%6ss] PASS: %s (total %ss)\n' "$(wb__since "$WB_T0")" "$WB_TEST_NAME" "$(wb__since "$WB_T0")" >&2
    [[ ${WB_KEEP_LOGS:-0} == 1 ]] || rm -rf "$WB_RUN_DIR"
  elif ((rc == 77)); then
    rm -rf "$WB_RUN_DIR"
    printf '[%6ss] UNSUPPORTED: %s (total %ss)\n' "$(wb__since "$WB_T0")" "$WB_TEST_NAME" "$(wb__since "$WB_T0")" >&2
  else
    printf '[%6ss] FAILED (exit %d): %s (total %ss); logs kept in %s\n' \
      "$(wb__since "$WB_T0")" "$rc" "$WB_TEST_NAME" "$(wb__since "$WB_T0")" "$WB_RUN_DIR" >&2
  fi
  exit "$rc"
}

wb__dump_container_state() {
  echo "---- diagnostics from container ${WB_CT_NAME} ----" >&2
  in_container systemctl --no-pager --failed >&2 2>&1
  in_container journalctl --no-pager -b -n 40 >&2 2>&1
  echo "---- last console lines (${WB_CT_LOG:-}) ----" >&2
  [[ -f ${WB_CT_LOG:-} ]] && tail -n 20 "$WB_CT_LOG" >&2
  echo "---- end of diagnostics ----" >&2
}

# ----------------------------------------------------------- capabilities --

# Where the cgroup hierarchies are. Sets WB_CG2 (cgroup2 mount or ''),
# WB_CG1_SYSTEMD (name=systemd v1 mount or ''), WB_CG_MODE.
wb__detect_cgroups() {
  WB_CG2='' WB_CG1_SYSTEMD=''
  local fstype
  fstype=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)
  if [[ $fstype == cgroup2fs ]]; then
    WB_CG2=/sys/fs/cgroup WB_CG_MODE=unified
  else
    if [[ $(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
      WB_CG2=/sys/fs/cgroup/unified
    fi
    if [[ -e /sys/fs/cgroup/systemd/cgroup.procs ]]; then
      WB_CG1_SYSTEMD=/sys/fs/cgroup/systemd
    fi
    if [[ -n $WB_CG2 ]]; then WB_CG_MODE=hybrid
    elif [[ -n $WB_CG1_SYSTEMD ]]; then WB_CG_MODE=legacy
    else WB_CG_MODE=none
    fi
  fi
}

# Exit 77 (with the reason) when this machine cannot run the test at all.
wb_require_capabilities() {
  [[ $(uname -s) == Linux ]] || unsupported "not Linux"
  ((EUID == 0)) || unsupported "must run as root (systemd-nspawn, debootstrap, nsenter need it); try: sudo $0"
  [[ -r /proc/self/status ]] || unsupported "/proc is not mounted"
  local capeff
  capeff=$(awk '/^CapEff:/{print $2}' /proc/self/status)
  # CAP_SYS_ADMIN (21) is needed for namespaces and mounts.
  (( (16#$capeff >> 21) & 1 )) || unsupported "no CAP_SYS_ADMIN (CapEff=$capeff); a nested, unprivileged container cannot boot systemd"
  unshare --mount --pid --fork --uts --ipc true 2>/dev/null \
    || unsupported "cannot create mount/pid/uts/ipc namespaces (unshare failed): $(unshare --mount --pid --fork true 2>&1 | head -1)"
  wb__detect_cgroups
  [[ $WB_CG_MODE != none ]] || unsupported "no cgroup hierarchy mounted at /sys/fs/cgroup (neither cgroup2 nor name=systemd v1); systemd cannot run in a container"
  if ! grep -qw overlay /proc/filesystems; then
    modprobe overlay 2>/dev/null || true
    grep -qw overlay /proc/filesystems || unsupported "kernel has no overlayfs (needed for --volatile=overlay)"
  fi
  wb_log "host: pid1=$(cat /proc/1/comm) cgroups=$WB_CG_MODE${WB_CG2:+ (cgroup2 at $WB_CG2)} kernel=$(uname -r)"
}

# --------------------------------------------------------------- host tools --

# Install the host tools the harness needs, only when missing.
ensure_host_tools() {
  local -A need=(
    [systemd-nspawn]=systemd-container
    [debootstrap]=debootstrap
    [nsenter]=util-linux
    [unshare]=util-linux
    [flock]=util-linux
    [pgrep]=procps
    [timeout]=coreutils
  )
  local cmd pkgs=()
  for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || pkgs+=("${need[$cmd]}")
  done
  # debootstrap verifies the Release file with this keyring.
  [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || pkgs+=(debian-archive-keyring)
  ((${#pkgs[@]})) || return 0
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  wb_log "installing host packages: ${pkgs[*]}"
  # --no-install-recommends: systemd-container recommends libnss-mymachines,
  # which would edit the host's nsswitch.conf. NB: systemd-container pins
  # the exact systemd version, so apt may upgrade the (idle) host systemd.
  local apt=(apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${pkgs[@]}" >"$WB_RUN_DIR/apt-host.log" 2>&1; then
    wb_log "apt-get install failed; running apt-get update and retrying"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WB_RUN_DIR/apt-host.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${pkgs[@]}" >>"$WB_RUN_DIR/apt-host.log" 2>&1 \
      || fail "could not install host packages ${pkgs[*]}; see $WB_RUN_DIR/apt-host.log:
$(tail -n 15 "$WB_RUN_DIR/apt-host.log")"
  fi
  for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || fail "host tool $cmd still missing after installing ${need[$cmd]}"
  done
}

# ------------------------------------------------------------------ rootfs --

# Print "URI KEYRING" of the host's apt source for $WB_SUITE (main archive,
# not -updates/-security). WB_MIRROR overrides.
wb_host_mirror() {
  if [[ -n ${WB_MIRROR:-} ]]; then printf '%s %s\n' "$WB_MIRROR" ''; return 0; fi
  local f found=''
  shopt -s nullglob
  # deb822 files first (Debian 12 default), then one-line format.
  for f in /etc/apt/sources.list.d/*.sources; do
    found=$(awk -v suite="$WB_SUITE" '
      function flush() {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" suite "[ \t]") && enabled != "no" && uris != "") {
          split(uris, u, /[ \t]+/); print u[1], signed; exit
        }
        types = uris = suites = signed = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "signed-by") signed = val
        else if (key == "enabled") enabled = tolower(val)
      }
      END { flush() }' "$f")
    [[ -n $found ]] && break
  done
  if [[ -z $found ]]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -r $f ]] || continue
      found=$(awk -v suite="$WB_SUITE" '
        $1 == "deb" {
          i = 2
          if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) == suite) { print $i; exit }
        }' "$f")
      [[ -n $found ]] && break
    done
  fi
  shopt -u nullglob
  [[ -n $found ]] || return 1
  printf '%s\n' "$found"
}

# Remove a (possibly half-built) root: first unmount whatever an interrupted
# debootstrap left mounted inside (proc, sys, ...), never cross into a mount.
wb__rm_tree() { # DIR
  local dir t
  dir=$(readlink -f "$1") || return 0
  [[ -n $dir && $dir != / ]] || return 1
  while read -r t; do
    umount -l "$t" 2>/dev/null || true
  done < <(awk -v d="$dir" '{ t = $5; gsub(/\\040/, " ", t); if (t == d || index(t, d "/") == 1) print t }' /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system "$dir"
}

wb__rootfs_recipe() {
  printf 'lib=%s suite=%s mirror=%s packages=%s mask=%s\n' \
    "$WB_LIB_VERSION" "$WB_SUITE" "$1" "$WB_ROOTFS_PACKAGES" "$WB_ROOTFS_MASK"
}

wb__rootfs_ok() { # RECIPE
  [[ -f $WB_ROOTFS_STAMP && $(cat "$WB_ROOTFS_STAMP" 2>/dev/null) == "$1" \
     && -x $WB_ROOTFS/usr/lib/systemd/systemd && -x $WB_ROOTFS/usr/bin/systemctl ]]
}

# ensure_rootfs — make sure $WB_ROOTFS is a complete root (build it once).
# Keeps a shared lock on the cache while the script runs, so a concurrent
# rebuild cannot pull the root from under a booted container.
ensure_rootfs() {
  local mirror keyring recipe t0=$EPOCHREALTIME
  read -r mirror keyring < <(wb_host_mirror) \
    || fail "no apt source for suite '$WB_SUITE' found in /etc/apt/sources.list{,.d/*.list,.d/*.sources}; set WB_MIRROR=http://..."
  [[ $mirror =~ ^(https?|file):// ]] \
    || fail "apt source '$mirror' is not a URI debootstrap understands; set WB_MIRROR=http://..."
  recipe=$(wb__rootfs_recipe "$mirror")
  mkdir -p "$WB_CACHE_DIR"
  exec {WB_LOCK_FD}>>"$WB_CACHE_DIR/rootfs.lock"
  flock -s -w 1800 "$WB_LOCK_FD" || fail "timed out waiting for a lock on $WB_CACHE_DIR/rootfs.lock"
  if wb__rootfs_ok "$recipe"; then
    wb_log "rootfs: using cached $WB_ROOTFS ($(cut -c1-60 <<<"$recipe")...)"
    return 0
  fi
  # Upgrade to an exclusive lock (waits for running containers to finish).
  flock -u "$WB_LOCK_FD"
  flock -x -w 1800 "$WB_LOCK_FD" || fail "timed out waiting for an exclusive lock on $WB_CACHE_DIR/rootfs.lock"
  if ! wb__rootfs_ok "$recipe"; then
    wb__build_rootfs "$mirror" "$keyring" "$recipe"
    wb_log "rootfs: built $WB_ROOTFS in $(wb__since "$t0")s"
  fi
  flock -s "$WB_LOCK_FD"   # downgrade
  wb__rootfs_ok "$recipe" || fail "rootfs at $WB_ROOTFS is incomplete right after building it"
}

wb__build_rootfs() {
  local mirror=$1 keyring=$2 recipe=$3
  local tmp=$WB_ROOTFS.tmp.$$ log=$WB_CACHE_DIR/debootstrap.log
  wb_log "rootfs: building $WB_SUITE from $mirror into $WB_ROOTFS (takes about a minute)"
  # Invalidate first: a crash from here on leaves no stamp => rebuilt next time.
  rm -f "$WB_ROOTFS_STAMP"
  local old
  for old in "$WB_ROOTFS" "$WB_ROOTFS".tmp.*; do
    [[ -e $old ]] && wb__rm_tree "$old"
  done
  mkdir -p "$WB_CACHE_DIR/debs"
  local args=(--variant=minbase --include="$WB_ROOTFS_PACKAGES" --cache-dir="$WB_CACHE_DIR/debs")
  [[ -n $keyring && -r $keyring ]] && args+=(--keyring="$keyring")
  # apt may be configured with a proxy; debootstrap (wget) does not read apt.conf.
  local proxy=''
  if [[ -z ${http_proxy:-} ]] && command -v apt-config >/dev/null; then
    eval "$(apt-config shell proxy Acquire::http::Proxy)"
    [[ -n $proxy && $proxy != DIRECT ]] && export http_proxy=$proxy
  fi
  # In the background + wait, so that a signal to this script is handled at
  # once (the EXIT trap then stops debootstrap and removes the half root).
  local rc=0
  WB_BUILD_TMP=$tmp
  # setsid: own process group, so the EXIT trap can stop dpkg & co. with it.
  setsid debootstrap "${args[@]}" "$WB_SUITE" "$tmp" "$mirror" >"$log" 2>&1 &
  WB_BUILD_PID=$!
  wait "$WB_BUILD_PID" || rc=$?
  WB_BUILD_PID=''
  if ((rc != 0)); then
    wb__rm_tree "$tmp"
    fail "debootstrap failed (log $log):
$(tail -n 20 "$log" | sed 's/^/    | /')"
  fi
  # --- tailor it for throw-away test containers
  # Empty machine-id: nspawn then hands each boot a fresh random one (no
  # "first boot" semantics with an empty file; with the id debootstrap
  # generated every container would share one machine-id).
  : >"$tmp/etc/machine-id"
  rm -f "$tmp/var/lib/dbus/machine-id"
  # No /etc/hostname (debootstrap copies the host's): hostname = machine name.
  rm -f "$tmp/etc/hostname"
  local u
  for u in $WB_ROOTFS_MASK; do ln -sfn /dev/null "$tmp/etc/systemd/system/$u"; done
  # Keep the apt lists (apt resolves local .debs against them and says which
  # dependency is missing), drop the .debs, prebuild apt's binary caches
  # (saves ~0.6 s per `apt-get install` in every container).
  rm -f "$tmp"/var/cache/apt/archives/*.deb
  chroot "$tmp" apt-cache gencaches >/dev/null 2>&1 || true
  # --- verify before publishing
  local p missing=()
  for p in ${WB_ROOTFS_PACKAGES//,/ }; do
    chroot "$tmp" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  for p in /usr/lib/systemd/systemd /sbin/init /usr/bin/systemctl /usr/bin/journalctl /usr/bin/kill \
           /usr/sbin/runuser /usr/sbin/useradd /usr/bin/dpkg /usr/bin/apt /usr/bin/dbus-daemon /usr/bin/systemd-analyze; do
    [[ -e $tmp$p || -L $tmp$p ]] || missing+=("$p")
  done
  local audit
  audit=$(chroot "$tmp" dpkg --audit 2>&1 || true)
  [[ -z $audit ]] || missing+=("dpkg --audit: $audit")
  if ((${#missing[@]})); then
    wb__rm_tree "$tmp"
    fail "debootstrapped root is incomplete: ${missing[*]}"
  fi
  mv -T "$tmp" "$WB_ROOTFS"
  WB_BUILD_TMP=''
  sync -f "$WB_ROOTFS" 2>/dev/null || sync
  printf '%s\n' "$recipe" >"$WB_ROOTFS_STAMP.tmp"
  mv -f "$WB_ROOTFS_STAMP.tmp" "$WB_ROOTFS_STAMP"   # the stamp is written last
}

# --------------------------------------------------------------- container --

# The container runs in its own cgroup subtree, created by us:
#   <cgroup2>/workbus-test/NAME  (and name=systemd v1 twin on hybrid hosts)
# Without that, nspawn --keep-unit outside of a systemd unit puts "payload"
# and "supervisor" straight under the root cgroup (two containers would
# collide there) and leaves them behind.
wb__ct_cgroup_dirs() { # NAME
  local d
  for d in "$WB_CG2" "$WB_CG1_SYSTEMD"; do
    if [[ -n $d ]]; then printf '%s\n' "$d/workbus-test/$1"; fi
  done
  return 0
}

wb__cgroup_pids() { # DIR — every pid in the subtree
  find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

wb__kill_cgroup() { # DIR
  local dir=$1
  [[ -d $dir ]] || return 0
  if [[ -e $dir/cgroup.kill ]]; then
    echo 1 >"$dir/cgroup.kill" 2>/dev/null || true
  fi
  for _ in $(seq 50); do
    local pids
    pids=$(wb__cgroup_pids "$dir")
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  wb_log "warning: processes left in $dir: $(wb__cgroup_pids "$dir" | tr '\n' ' ')"
}

wb__remove_cgroup() { # DIR
  [[ -d $1 ]] || return 0
  find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

wb__proc_start() { # PID — kernel start time of the process (to detect pid reuse)
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  # shellcheck disable=SC2086
  set -- $st
  printf '%s\n' "${20}"
}

# Every container booted by this library is registered in
# $WB_CACHE_DIR/containers/NAME as "OWNER_PID OWNER_STARTTIME" (the test
# script). Before booting, containers whose owner is gone (script killed
# with SIGKILL, machine crash...) are killed and their cgroups removed.
wb__reap_stale() {
  local -; set +e
  local reg=$WB_CACHE_DIR/containers d name owner start
  mkdir -p "$reg"
  local -A seen=()
  local top sub
  for top in "$WB_CG2" "$WB_CG1_SYSTEMD"; do
    [[ -n $top && -d $top/workbus-test ]] || continue
    for sub in "$top"/workbus-test/*/; do
      [[ -d $sub ]] && seen[$(basename "$sub")]=1
    done
  done
  for d in "$reg"/*; do
    [[ -f $d ]] && seen[$(basename "$d")]=1
  done
  for name in "${!seen[@]}"; do
    owner='' start=''
    if [[ -f $reg/$name ]]; then read -r owner start <"$reg/$name" || true; fi
    if [[ -n $owner && $(wb__proc_start "$owner") == "$start" ]]; then
      continue   # its test script is still running
    fi
    wb_log "reaping stale container '$name' (owner ${owner:-unknown} is gone)"
    while read -r d; do
      wb__kill_cgroup "$d"
      wb__remove_cgroup "$d"
    done < <(wb__ct_cgroup_dirs "$name")
    rm -rf "/run/systemd/nspawn/propagate/$name"
    rm -f "$reg/$name"
  done
  return 0
}

# boot_container NAME [extra systemd-nspawn args...]
# Boots $WB_ROOTFS (read-only lower layer, changes in a tmpfs overlay) in the
# background; console output -> $WB_RUN_DIR/NAME.console.log. Sets
# WB_CT_NAME, WB_CT_NSPAWN_PID (host pid of nspawn), WB_CT_LEADER (host pid
# of the container's PID 1), WB_CT_BOOT_STATE (running|degraded).
boot_container() {
  local name=$1; shift
  [[ $name =~ ^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$ ]] || fail "bad container name '$name' (letters, digits, '-')"
  [[ -z ${WB_CT_NSPAWN_PID:-} ]] || fail "a container (${WB_CT_NAME}) is already booted by this script"
  [[ -n ${WB_CG_MODE:-} ]] || wb__detect_cgroups
  wb__rootfs_ok "$(cat "$WB_ROOTFS_STAMP" 2>/dev/null)" || fail "no complete rootfs at $WB_ROOTFS; call ensure_rootfs first"
  wb__reap_stale
  [[ ! -e $WB_CACHE_DIR/containers/$name ]] || fail "a container named '$name' is already running (another test?)"
  echo "$$ $(wb__proc_start $$)" >"$WB_CACHE_DIR/containers/$name"

  WB_CT_NAME=$name
  WB_CT_LOG=$WB_RUN_DIR/$name.console.log
  mapfile -t WB_CT_CGROUPS < <(wb__ct_cgroup_dirs "$name")
  local unified=1
  [[ -n $WB_CG2 ]] || unified=0   # legacy-only host: v1 inside as well
  local t0=$EPOCHREALTIME
  local args=(
    --boot
    --directory="$WB_ROOTFS"
    --machine="$name"
    --register=no           # no systemd-machined on the host (PID 1 is not systemd)
    --keep-unit             # do not ask the host's systemd for a scope
    --volatile=overlay      # cached root stays pristine; writes go to tmpfs
    --private-network       # offline, isolated: only 'lo' inside
    --link-journal=no
    --resolv-conf=off
    --console=read-only     # console output -> our log file, no tty needed
    --setenv=SYSTEMD_COLORS=0
    "$@"
  )
  printf '%s\n' "+ systemd-nspawn ${args[*]}" >"$WB_CT_LOG"
  (
    for d in "${WB_CT_CGROUPS[@]}"; do
      mkdir -p "$d" && echo "$BASHPID" >"$d/cgroup.procs"
    done
    [[ -n ${WB_LOCK_FD:-} ]] && eval "exec ${WB_LOCK_FD}>&-"   # a stray nspawn must not hold the cache lock
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$unified TERM=dumb
    exec systemd-nspawn "${args[@]}" </dev/null >>"$WB_CT_LOG" 2>&1
  ) &
  WB_CT_NSPAWN_PID=$!
  wb_log "booting container $name (nspawn pid $WB_CT_NSPAWN_PID, cgroup mode in container: $( ((unified)) && echo unified || echo legacy))"

  # 1. find the container's PID 1: the child of nspawn that is pid 1 in its
  #    own pid namespace and has exec'd systemd (before that nsenter would
  #    land in a half-built mount namespace).
  local deadline=$(( ${t0/[.,]/} + WB_BOOT_TIMEOUT * 1000000 )) pid nspid comm
  WB_CT_LEADER=''
  while [[ -z $WB_CT_LEADER ]]; do
    kill -0 "$WB_CT_NSPAWN_PID" 2>/dev/null \
      || fail "systemd-nspawn exited during boot; console log $WB_CT_LOG:
$(tail -n 25 "$WB_CT_LOG" | sed 's/^/    | /')"
    for pid in $(pgrep -P "$WB_CT_NSPAWN_PID" 2>/dev/null); do
      nspid=$(awk '/^NSpid:/{print $NF}' "/proc/$pid/status" 2>/dev/null) || continue
      comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
      if [[ $nspid == 1 && $comm == systemd ]]; then WB_CT_LEADER=$pid; fi
    done
    [[ -n $WB_CT_LEADER ]] && break
    (( ${EPOCHREALTIME/[.,]/} < deadline )) || fail "container PID 1 did not appear within ${WB_BOOT_TIMEOUT}s"
    sleep 0.05
  done

  # 2. wait for the manager: right after exec, /run/systemd/private does not
  #    exist yet ("Failed to connect to bus"), then it says initializing /
  #    starting until the boot transaction is done.
  local state=''
  while :; do
    state=$(in_container systemctl is-system-running 2>&1) || true
    case $state in
      running|degraded) break ;;
    esac
    kill -0 "$WB_CT_NSPAWN_PID" 2>/dev/null \
      || fail "container died while booting (last state '$state'); console log:
$(tail -n 25 "$WB_CT_LOG" | sed 's/^/    | /')"
    (( ${EPOCHREALTIME/[.,]/} < deadline )) \
      || fail "container did not finish booting within ${WB_BOOT_TIMEOUT}s (is-system-running: '$state'); jobs:
$(in_container systemctl list-jobs --no-pager 2>&1 | head -n 20)"
    sleep 0.1
  done
  WB_CT_BOOT_STATE=$state
  if [[ $state == degraded ]]; then
    wb_log "warning: container booted 'degraded'; failed units:"
    in_container systemctl --failed --no-legend --no-pager >&2 || true
  fi
  wb_log "container $name is up ($state) in $(wb__since "$t0")s, PID 1 = host pid $WB_CT_LEADER"
}

# in_container CMD... — run CMD inside the booted container (all of PID 1's
# namespaces, its root and cwd, the container's cgroup namespace) with a
# clean environment; stdin/stdout/stderr pass through, returns CMD's status.
in_container() {
  [[ -n ${WB_CT_LEADER:-} ]] || { echo "in_container: no container booted" >&2; return 125; }
  [[ ${WB_VERBOSE:-0} == 1 ]] && printf '+ [%s] %s\n' "$WB_CT_NAME" "$*" >&2
  nsenter --target "$WB_CT_LEADER" --all --root --wd -- \
    /usr/bin/env -i PATH="$WB_CT_PATH" HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 SYSTEMD_LOG_COLOR=0 "$@"
}

# ct_sh 'SCRIPT' [ARGS...] — in_container /bin/sh -ec SCRIPT.
ct_sh() { local s=$1; shift; in_container /bin/sh -ec "$s" sh "$@"; }

# ct_write PATH [MODE] < content — create a file inside the container.
ct_write() {
  in_container /bin/sh -ec 'mkdir -p "$(dirname "$1")"; cat >"$1"; chmod "$2" "$1"' sh "$1" "${2:-0644}"
}

# ct_as USER CMD... — run CMD as USER (with USER's groups) inside.
ct_as() { local u=$1; shift; in_container runuser -u "$u" -- "$@"; }

# ct_apt ARGS... — apt-get -y inside, non-interactive, e.g.
#   ct_apt install /mnt/deb/workbus_0.1.0_amd64.deb
# (offline: works when every dependency is already in the root; otherwise
# apt names the missing package — add it to WB_ROOTFS_EXTRA_PACKAGES)
ct_apt() {
  in_container env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# ct_prop UNIT PROPERTY — value of one `systemctl show` property.
ct_prop() { in_container systemctl show --value -p "$2" "$1"; }

# ct_journal ARGS... — journalctl inside, no pager, plain messages by default.
ct_journal() { in_container journalctl --no-pager -q "$@"; }

# stop_container — clean shutdown (SIGTERM to nspawn = poweroff inside),
# forced after WB_STOP_TIMEOUT; removes the cgroups. Idempotent.
stop_container() {
  [[ -n ${WB_CT_NSPAWN_PID:-} ]] || return 0
  local -; set +e   # best effort, also from the EXIT trap
  local pid=$WB_CT_NSPAWN_PID t0=$EPOCHREALTIME rc=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( ${t0/[.,]/} + WB_STOP_TIMEOUT * 1000000 ))
    while kill -0 "$pid" 2>/dev/null && (( ${EPOCHREALTIME/[.,]/} < deadline )); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      wb_log "container ${WB_CT_NAME} did not shut down within ${WB_STOP_TIMEOUT}s; killing it"
      local d
      for d in "${WB_CT_CGROUPS[@]}"; do wb__kill_cgroup "$d"; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || rc=$?
  WB_CT_LEADER=''
  local d
  for d in "${WB_CT_CGROUPS[@]}"; do
    [[ -n $(wb__cgroup_pids "$d") ]] && wb__kill_cgroup "$d"
    wb__remove_cgroup "$d"
  done
  rm -rf "/run/systemd/nspawn/propagate/$WB_CT_NAME"
  rm -f "$WB_CACHE_DIR/containers/$WB_CT_NAME"
  for d in "$WB_CG2" "$WB_CG1_SYSTEMD"; do
    if [[ -n $d ]]; then rmdir "$d/workbus-test" 2>/dev/null || true; fi   # unless another test uses it
  done
  wb_log "container ${WB_CT_NAME} stopped (nspawn exit $rc) in $(wb__since "$t0")s"
  WB_CT_NSPAWN_PID='' WB_CT_LEADER=''
  return 0
}
