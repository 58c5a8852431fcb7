#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted $ are for the shell/python inside the container
# tests/system/workbusd.sh — the workbus .deb on a booted systemd (SPEC §8).
#
#   sudo tests/system/workbusd.sh     # exit 0 pass, 1 fail, 77 unsupported
#
# Builds the .deb (packaging/build-deb.sh), boots a Debian container with
# systemd as PID 1 (tests/system/lib.sh), installs the package offline with
# apt, and shows there:
#   1. systemctl start -> active (running) with its STATUS= line; a goal that
#      an ordinary member of the `workbus` group drops into the inbox runs
#      on the packaged demo fleet; journalctl -u workbusd GOAL=<id> finds it
#   2. an edit of /etc/workbus/fleet.toml + systemctl reload: the new workers
#      serve a goal, MainPID unchanged
#   3. a wedged event loop (WORKBUS_TEST_WEDGE_ON_GOAL, short WatchdogSec=,
#      both from a drop-in) is killed by the watchdog and restarted; the goal
#      in flight completes
#   4. systemctl stop during a running task: the task drains, the daemon exits
#      0 well within TimeoutStopSec; after systemctl start the goal completes
#   5. systemd-analyze verify of the installed unit prints nothing
#   6. the packaged run-as-root.conf drop-in makes `user =` workers work
#   7. apt remove stops the unit; purge keeps the bus
#
# Tunables: those of lib.sh, and WB_DEB=/path/to/workbus_*.deb to test a
# package built elsewhere instead of building one.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# python3: the workers of the packaged demo fleet (the package Depends on
# it, and the install is offline). man-db: `systemd-analyze verify` runs
# man(1) to check Documentation=man:... pages.
export WB_ROOTFS_EXTRA_PACKAGES=${WB_ROOTFS_EXTRA_PACKAGES:-python3,man-db}
# A root of its own, so that this test and smoke.sh (plain root) do not
# rebuild each other's cached root.
WB_ROOTFS=${WB_ROOTFS:-${WB_CACHE_DIR:-/var/cache/workbus-test}/rootfs-${WB_SUITE:-bookworm}-workbus}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

UNIT=workbusd.service
UNIT_FILE=/usr/lib/systemd/system/workbusd.service
BUS=/var/lib/workbus
DROPINS=/etc/systemd/system/workbusd.service.d

# ------------------------------------------------------------------ helpers --

# On failure, lib.sh shows the container's failed units and journal; add the
# unit's own state and log.
eval "wb__lib_dump_container_state() $(declare -f wb__dump_container_state | tail -n +2)"
wb__dump_container_state() {
  wb__lib_dump_container_state
  echo "---- systemctl status $UNIT; journalctl -u $UNIT ----" >&2
  in_container systemctl status --no-pager -n 0 "$UNIT" >&2 2>&1
  in_container journalctl --no-pager -u "$UNIT" -n 60 -o short-monotonic >&2 2>&1
  echo "---- end of $UNIT diagnostics ----" >&2
}
# ...and an unfinished background build of the .deb does not outlive us.
BUILD_PID=''
eval "wb__lib_on_exit() $(declare -f wb__on_exit | tail -n +2)"
wb__on_exit() {
  local rc=$?
  trap - ERR
  set +e
  if [[ -n $BUILD_PID ]]; then
    wb_log "stopping the unfinished build of the .deb (pid $BUILD_PID)"
    kill -TERM -- "-$BUILD_PID" 2>/dev/null
    wait "$BUILD_PID" 2>/dev/null
    BUILD_PID=''
  fi
  (exit "$rc")   # wb__lib_on_exit reads the status from $?
  wb__lib_on_exit
}

# prop_is UNIT PROPERTY VALUE
prop_is() {
  local v; v=$(ct_prop "$1" "$2") || return 1
  [[ $v == "$3" ]] || { echo "$2=$v (want $3)"; return 1; }
}
# prop_like UNIT PROPERTY GLOB
prop_like() {
  local v; v=$(ct_prop "$1" "$2") || return 1
  # shellcheck disable=SC2053  # a glob on purpose
  [[ $v == $3 ]] || { echo "$2=$v (want $3)"; return 1; }
}
# journal_has TEXT JOURNALCTL-ARGS... — some message (-o cat) contains TEXT.
journal_has() {
  local text=$1 out; shift
  out=$(ct_journal -o cat "$@") || return 1
  [[ $out == *"$text"* ]] || { printf '%s\n' "$out" | tail -n 20; return 1; }
}
# ct_py 'PYTHON' ARGS... — python3 inside the container.
ct_py() { local s=$1; shift; in_container python3 -c "$s" "$@"; }
# report_field GOAL EXPR — EXPR evaluated on the report `r` of GOAL.
report_field() {
  ct_py 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
    "$BUS/reports/$1.json" "$2"
}
# Shows what is known about GOAL: its report, the daemon's lines about it.
goal_diagnostics() {
  echo "---- report of $1 ----"
  in_container cat "$BUS/reports/$1.json" 2>&1 | head -n 60
  echo "---- journalctl -u workbusd GOAL=$1 ----"
  ct_journal -u "$UNIT" GOAL="$1" -o cat 2>&1 | tail -n 30
  echo "---- workbusctl status $1 ----"
  in_container workbusctl status "$1" 2>&1 | tail -n 20
  echo "---- rejected/ ----"
  in_container sh -c "ls -la $BUS/rejected/ && cat $BUS/rejected/*.error.json" 2>&1 | tail -n 20
}
# wait_goal GOAL TIMEOUT — the report exists and says succeeded.
wait_goal() {
  local goal=$1 timeout=$2 t0=$EPOCHREALTIME
  while ! in_container test -f "$BUS/reports/$goal.json"; do
    if (( ${EPOCHREALTIME/[.,]/} - ${t0/[.,]/} > timeout * 1000000 )); then
      fail "no report for goal $goal after ${timeout}s:
$(goal_diagnostics "$goal" | sed 's/^/    | /')"
    fi
    sleep 0.2
  done
  local outcome
  outcome=$(report_field "$goal" 'r["outcome"]')
  [[ $outcome == succeeded ]] || fail "goal $goal ended '$outcome', not 'succeeded':
$(goal_diagnostics "$goal" | sed 's/^/    | /')"
}
# workers_healthy NAME... — `workbusctl workers --json` lists them healthy.
workers_healthy() {
  ct_py '
import json, subprocess, sys
ws = {w["name"]: w for w in json.loads(subprocess.check_output(["workbusctl", "workers", "--json"]))}
missing = [n for n in sys.argv[1:] if not ws.get(n, {}).get("healthy")]
if missing:
    print("not healthy or absent:", missing, "known:", {n: w.get("healthy") for n, w in ws.items()})
    sys.exit(1)
' "$@"
}
show_unit() {
  in_container systemctl show -p ActiveState,SubState,MainPID,NRestarts,StatusText,Result "$UNIT" | sed 's/^/      /' >&2
}
# restart_unit — a manual restart (reset-failed first: the test starts the
# unit more often than StartLimitBurst= allows in StartLimitIntervalSec=).
restart_unit() {
  assert_ok "systemctl reset-failed" in_container systemctl reset-failed "$UNIT"
  assert_ok "systemctl restart $UNIT" in_container systemctl restart "$UNIT"
}
ms_since() { local a=${1/[.,]/} b=${EPOCHREALTIME/[.,]/}; echo $(( (b - a) / 1000 )); }

wb_init "workbusd system test (.deb + systemd)"
wb_require_capabilities

step "host tools, container root, .deb"
ensure_host_tools
# The root (a minute or two the first time) and the package (minutes the
# first time: a release build) are made at the same time.
if [[ -n ${WB_DEB:-} ]]; then
  [[ -f $WB_DEB ]] || fail "WB_DEB=$WB_DEB does not exist"
  DEB=$(readlink -f "$WB_DEB")
else
  command -v cargo >/dev/null \
    || fail "cargo is not on PATH: needed to build the .deb (or set WB_DEB=/path/to/workbus_*.deb)"
  build_log=$WB_RUN_DIR/build-deb.log
  wb_log "building the .deb in the background (log: $build_log)"
  # setsid: its own process group, so that the EXIT trap can stop cargo too.
  setsid "$REPO/packaging/build-deb.sh" --fast -o "$WB_RUN_DIR/deb" >"$WB_RUN_DIR/build-deb.out" 2>"$build_log" &
  BUILD_PID=$!
fi
ensure_rootfs
ok "root $WB_ROOTFS (with $WB_ROOTFS_EXTRA_PACKAGES)"
if [[ -z ${WB_DEB:-} ]]; then
  t=$EPOCHREALTIME
  rc=0; wait "$BUILD_PID" || rc=$?
  BUILD_PID=''
  ((rc == 0)) || fail "packaging/build-deb.sh failed (exit $rc):
$(tail -n 30 "$build_log" | sed 's/^/    | /')"
  DEB=$(tail -n 1 "$WB_RUN_DIR/build-deb.out")
  [[ -f $DEB ]] || fail "packaging/build-deb.sh printed no .deb path; log:
$(tail -n 30 "$build_log" | sed 's/^/    | /')"
  wb_log "waited $(wb__since "$t")s more for the package"
fi
ok "$(dpkg-deb -W --showformat='${Package} ${Version} ${Architecture}' "$DEB"), $(stat -c %s "$DEB") bytes"
DEB_DIR=$(dirname "$DEB")

step "boot the container and install the .deb offline"
boot_container "wbd-$$" --bind-ro="$DEB_DIR":/mnt/deb
ok "is-system-running: $WB_CT_BOOT_STATE"
t=$EPOCHREALTIME
assert_ok "apt-get install ./${DEB##*/}" ct_apt install "/mnt/deb/${DEB##*/}"
ok "installed in $(wb__since "$t")s"
assert_eq "$(in_container dpkg-query -W -f='${Status}' workbus)" "install ok installed" "dpkg status"
conffiles=$(in_container dpkg-query -W -f='${Conffiles}' workbus)
assert_contains "$conffiles" "/etc/workbus/workbusd.toml" "conffiles"
assert_contains "$conffiles" "/etc/workbus/fleet.toml" "conffiles"
assert_match "$(in_container getent passwd workbus)" '^workbus:x:[0-9]+:[0-9]+:workbus daemon:/var/lib/workbus:' "user workbus (sysusers.d)"
assert_match "$(in_container getent group workbus)" '^workbus:x:[0-9]+:' "group workbus (sysusers.d)"
assert_eq "$(in_container stat -c '%a %U:%G' $BUS/inbox)" "2770 workbus:workbus" "inbox mode/owner (tmpfiles.d)"
assert_eq "$(in_container systemctl is-enabled $UNIT)" "enabled" "is-enabled"
wait_until 20 "the unit started by postinst is active" prop_is $UNIT ActiveState active
assert_eq "$(in_container stat -c '%a %U:%G' $BUS)" "750 workbus:workbus" "bus root mode/owner (StateDirectory=)"
for page in workbusd.8 workbusctl.1 workbusctl-submit.1; do
  assert_ok "man page $page" in_container man -w "${page##*.}" "${page%.*}"
done
for f in /usr/bin/workbusd /usr/bin/workbusctl /usr/share/workbus/demo/goal.toml \
         /usr/share/workbus/demo/workers/gather.py /usr/share/workbus/examples/worker.py \
         /usr/share/workbus/systemd/run-as-root.conf /usr/lib/sysusers.d/workbus.conf \
         /usr/lib/tmpfiles.d/workbusd.conf; do
  in_container test -e "$f" || fail "the package did not install $f"
done
ok "user+group workbus, inbox 2770, bus 0750, conffiles, man pages, demo; enabled and started by postinst"

# ---------------------------------------------------------------------------
step "[1] systemctl start: active (running), STATUS=; a group member's goal runs on the demo fleet"
assert_ok "systemctl stop" in_container systemctl stop $UNIT
assert_eq "$(ct_prop $UNIT ActiveState)" "inactive" "ActiveState after stop"
t=$EPOCHREALTIME
assert_ok "systemctl start" in_container systemctl start $UNIT
ok "systemctl start returned in $(wb__since "$t")s (Type=notify: after READY=1)"
show_unit
assert_eq "$(ct_prop $UNIT ActiveState)/$(ct_prop $UNIT SubState)" "active/running" "state after start"
status_text=$(ct_prop $UNIT StatusText)
assert_match "$status_text" '^[0-9]+ goal\(s\) running, .* 3/3 worker\(s\) healthy$' "StatusText (STATUS=)"
status_out=$(in_container systemctl status --no-pager $UNIT 2>&1 || true)
assert_contains "$status_out" "Active: active (running)" "systemctl status"
assert_contains "$status_out" "Status: \"$status_text\"" "systemctl status"
pid=$(ct_prop $UNIT MainPID)
assert_eq "$(in_container ps -o user= -p "$pid" | tr -d ' ')" "workbus" "user of MainPID"
st=$(in_container cat /proc/"$pid"/status)
assert_match "$st" $'NoNewPrivs:\t1' "NoNewPrivileges= in effect"
assert_match "$st" $'Seccomp:\t2' "SystemCallFilter= in effect"
assert_match "$st" $'CapEff:\t0000000000000000' "no capabilities"
ok "active (running) as workbus, STATUS=\"$status_text\", sandboxed (NoNewPrivs, seccomp, no capabilities)"

assert_ok "useradd alice (in group workbus)" in_container useradd --create-home --groups workbus alice
assert_ok "useradd bob" in_container useradd --create-home bob
assert_fails "bob (not in the group) drops a goal" \
  ct_as bob sh -c "cp /usr/share/workbus/demo/goal.toml $BUS/inbox/intruder.toml"
assert_contains "$WB_OUT" "Permission denied" "bob's error"
# The inbox convention: write under a dot-name ending in .tmp, then rename.
assert_ok "alice drops the demo goal into the inbox" ct_as alice sh -c "
  cp /usr/share/workbus/demo/goal.toml $BUS/inbox/.release-notes.toml.tmp
  mv $BUS/inbox/.release-notes.toml.tmp $BUS/inbox/release-notes.toml"
wait_goal release-notes 60
tasks=$(report_field release-notes '", ".join(k + "=" + v["state"] for k, v in sorted(r["tasks"].items()))')
assert_eq "$tasks" "build=succeeded, gather=succeeded, narrate=succeeded" "tasks of release-notes (sorted)"
in_container test -s $BUS/release-notes.html || fail "the demo's build task left no $BUS/release-notes.html"
ok "reports/release-notes.json: outcome succeeded ($tasks)"
assert_ok "alice reads the goal with workbusctl" ct_as alice workbusctl status release-notes
wait_until 10 "journalctl -u workbusd GOAL=release-notes" \
  journal_has "accepted from inbox/release-notes.toml" -u $UNIT GOAL=release-notes
glines=$(ct_journal -u $UNIT GOAL=release-notes -o cat)
printf '%s\n' "$glines" | head -n 8 | cut -c1-150 | sed 's/^/      | /' >&2
n=$(printf '%s\n' "$glines" | wc -l)
((n >= 3)) || fail "journalctl -u workbusd GOAL=release-notes shows only $n line(s)"
assert_eq "$(ct_journal -u $UNIT GOAL=no-such-goal -o cat)" "" "journalctl -u workbusd GOAL=no-such-goal"
v=$(ct_journal -u $UNIT GOAL=release-notes -o verbose -n 1)
assert_contains "$v" "_SYSTEMD_UNIT=$UNIT" "journal entry attribution"
ok "journalctl -u workbusd GOAL=release-notes: $n lines"

# ---------------------------------------------------------------------------
step "[2] edit fleet.toml + systemctl reload: new workers serve a goal, MainPID unchanged"
pid_before=$(ct_prop $UNIT MainPID)
ct_write /usr/local/bin/wb-sleep 0755 <<'EOF'
#!/bin/sh
# test worker (spawn mode): sleeps $1 seconds, prints JSON
sleep "$1"
printf '{"slept": %s, "pid": %d}\n' "$1" "$$"
EOF
# The resident example worker that fleet.toml shows commented out, and a
# spawn worker for the next steps.
ct_sh 'cat >>/etc/workbus/fleet.toml' <<'EOF'

[[worker]]
name = "py-worker"
capabilities = ["echo"]
mode = "resident"
command = ["python3", "/usr/share/workbus/examples/worker.py"]
concurrency = 2

[[worker]]
name = "sleeper"
capabilities = ["sleep"]
command = ["/usr/local/bin/wb-sleep", "{{ input.seconds }}"]
concurrency = 2
EOF
assert_ok "workbusctl validate /etc/workbus/fleet.toml" in_container workbusctl validate /etc/workbus/fleet.toml
assert_ok "systemctl reload" in_container systemctl reload $UNIT
wait_until 20 "workbusctl workers lists py-worker and sleeper, healthy" \
  workers_healthy gatherer narrator builder py-worker sleeper
wait_until 10 "the daemon logged the SIGHUP reload" journal_has "fleet reloaded (SIGHUP)" -u $UNIT
wait_until 10 "active again after the reload" prop_is $UNIT ActiveState active
assert_eq "$(ct_prop $UNIT MainPID)" "$pid_before" "MainPID after reload"
wait_until 10 "STATUS= counts 5 workers" prop_like $UNIT StatusText '*5/5 worker(s) healthy'
in_container workbusctl workers | sed 's/^/      | /' >&2
ct_write /home/alice/echo.toml 0644 <<'EOF'
id = "echo-after-reload"

[[task]]
id = "hello"
needs = ["echo"]
input = { text = "hello from alice" }

[[task]]
id = "nap"
needs = ["sleep"]
after = ["hello"]
input = { seconds = 0 }
EOF
assert_ok "alice: workbusctl submit --wait (needs echo, then sleep)" \
  ct_as alice timeout 60 workbusctl submit --wait /home/alice/echo.toml
wait_goal echo-after-reload 10
assert_eq "$(report_field echo-after-reload 'r["tasks"]["hello"]["output"]["text"]')" "hello from alice" "output of the resident worker"
assert_eq "$(report_field echo-after-reload 'r["tasks"]["nap"]["worker"]')" "sleeper" "worker of task nap"
ok "reloaded in place (MainPID $pid_before): goal echo-after-reload succeeded on py-worker and sleeper"

# ---------------------------------------------------------------------------
step "[3] watchdog: a wedged event loop is aborted and restarted; the goal completes"
ct_write $DROPINS/50-test-wedge.conf <<'EOF'
# Test only: wedge the event loop on goals named wedge-*, and a short watchdog.
[Service]
Environment=WORKBUS_TEST_WEDGE_ON_GOAL=wedge-
WatchdogSec=3s
# no core file of the aborted daemon
LimitCORE=0
EOF
assert_ok "daemon-reload" in_container systemctl daemon-reload
restart_unit
assert_eq "$(ct_prop $UNIT WatchdogUSec)" "3s" "WatchdogUSec with the drop-in"
n0=$(ct_prop $UNIT NRestarts)
pid_a=$(ct_prop $UNIT MainPID)
ct_write /home/alice/wedge-1.toml 0644 <<'EOF'
id = "wedge-1"

[[task]]
id = "first"
needs = ["sleep"]
input = { seconds = 1 }

[[task]]
id = "second"
needs = ["echo"]
after = ["first"]
input = { text = "after the watchdog" }
EOF
t=$EPOCHREALTIME
assert_ok "alice submits wedge-1" ct_as alice workbusctl submit /home/alice/wedge-1.toml
wait_until 10 "the daemon says it wedges" journal_has "WORKBUS_TEST_WEDGE_ON_GOAL matched" -u $UNIT _PID="$pid_a"
wait_until 30 "watchdog restart (NRestarts=$((n0 + 1)))" prop_is $UNIT NRestarts $((n0 + 1))
wait_until 20 "active again after the watchdog restart" prop_is $UNIT ActiveState active
pid_b=$(ct_prop $UNIT MainPID)
assert_ne "$pid_b" "$pid_a" "MainPID after the watchdog restart"
j=$(ct_journal -u $UNIT -o cat)
assert_contains "$j" "Watchdog timeout" "journal (systemd's watchdog message)"
assert_contains "$j" "status=6/ABRT" "journal (main process aborted)"
ok "watchdog fired; restarted in $(wb__since "$t")s: MainPID $pid_a -> $pid_b, NRestarts $n0 -> $((n0 + 1))"
wait_goal wedge-1 60
ok "goal wedge-1 succeeded after the restart (first: $(report_field wedge-1 'r["tasks"]["first"]["attempts"]') attempt(s))"
assert_ok "remove the test drop-in" in_container rm $DROPINS/50-test-wedge.conf
assert_ok "daemon-reload" in_container systemctl daemon-reload
restart_unit
assert_eq "$(ct_prop $UNIT WatchdogUSec)" "1min" "WatchdogUSec of the shipped unit"
in_container systemctl show -p Environment $UNIT | grep -q WORKBUS_TEST && fail "the wedge switch is still set"
ok "drop-in removed: WatchdogSec=1min, no test switch"

# ---------------------------------------------------------------------------
step "[4] systemctl stop during a running task: drains, exits 0; the goal completes after start"
ct_write /home/alice/drain.toml 0644 <<'EOF'
id = "drain"

[[task]]
id = "slow"
needs = ["sleep"]
input = { seconds = 4 }

[[task]]
id = "after"
needs = ["sleep"]
after = ["slow"]
input = { seconds = 0 }
EOF
assert_ok "alice submits drain" ct_as alice workbusctl submit /home/alice/drain.toml
wait_until 20 "task drain.slow running (wb-sleep 4)" in_container pgrep -f 'wb-sleep 4'
sleep 0.5
t=$EPOCHREALTIME
assert_ok "systemctl stop" in_container systemctl stop $UNIT
el=$(ms_since "$t")
show=$(in_container systemctl show -p ActiveState,Result,ExecMainCode,ExecMainStatus,TimeoutStopUSec $UNIT)
printf '%s\n' "$show" | sed 's/^/      /' >&2
assert_contains "$show" "ActiveState=inactive" "after stop"
assert_contains "$show" "Result=success" "after stop (not timeout/kill)"
assert_contains "$show" "ExecMainCode=1" "the daemon exited by itself (CLD_EXITED)"
assert_contains "$show" "ExecMainStatus=0" "exit status after SIGTERM"
((el >= 2000)) || fail "systemctl stop returned after ${el}ms: it did not wait for the running task (4 s) to drain"
((el < 30000)) || fail "systemctl stop took ${el}ms"
assert_fails "no worker process left" in_container pgrep -f wb-sleep
wait_until 5 "the daemon logged its drain" journal_has "stopping (SIGTERM)" -u $UNIT
in_container test -f $BUS/reports/drain.json && fail "goal drain already has a report: task 'after' ran during the drain"
ok "stopped in ${el}ms: task slow drained, exit 0, no process left, 'after' not started"
restart_unit
wait_goal drain 60
assert_eq "$(report_field drain 'r["tasks"]["slow"]["attempts"]')" "1" "attempts of drain.slow (finished during the drain)"
ok "after systemctl start: goal drain succeeded"

# ---------------------------------------------------------------------------
step "[5] systemd-analyze verify $UNIT_FILE"
rc=0; out=$(in_container systemd-analyze verify "$UNIT_FILE" 2>&1) || rc=$?
if ((rc != 0)) || [[ -n $out ]]; then
  fail "systemd-analyze verify exited $rc and printed:
$out"
fi
ok "prints nothing"
exposure=$(in_container systemd-analyze security --no-pager $UNIT 2>&1 | tail -n 1)
ok "(for information) systemd-analyze security: ${exposure#→ }"

# ---------------------------------------------------------------------------
step "[6] run-as-root.conf drop-in: a worker with user = runs as that user"
assert_ok "useradd agent (in group workbus)" in_container useradd --create-home --groups workbus agent
ct_write /usr/local/bin/wb-whoami 0755 <<'EOF'
#!/bin/sh
# test worker (spawn mode): says who it runs as
printf '{"user": "%s", "groups": "%s", "home": "%s", "env": "%s"}\n' "$(id -un)" "$(id -Gn)" "$HOME" "${WB_TEST_FROM_ENV_FILE-unset}"
EOF
# EnvironmentFile=-/etc/workbus/workbusd.env reaches the workers too.
printf 'WB_TEST_FROM_ENV_FILE=secret-from-env-file\n' | ct_write /etc/workbus/workbusd.env 0600
ct_sh 'cat >>/etc/workbus/fleet.toml' <<'EOF'

[[worker]]
name = "as-agent"
capabilities = ["whoami"]
command = ["/usr/local/bin/wb-whoami"]
user = "agent"
EOF
assert_ok "install run-as-root.conf" in_container sh -c "mkdir -p $DROPINS && cp /usr/share/workbus/systemd/run-as-root.conf $DROPINS/"
assert_ok "daemon-reload" in_container systemctl daemon-reload
restart_unit
pid=$(ct_prop $UNIT MainPID)
assert_eq "$(in_container ps -o user=,group= -p "$pid" | tr -s ' ')" "root workbus" "user and group of MainPID"
capeff=$(awk '/^CapEff:/{print $2}' <<<"$(in_container cat /proc/"$pid"/status)")
assert_eq "$capeff" "00000000000000e0" "CapEff of MainPID (CAP_KILL, CAP_SETGID, CAP_SETUID)"
wait_until 20 "as-agent healthy" workers_healthy as-agent sleeper
ct_write /home/alice/whoami.toml 0644 <<'EOF'
id = "whoami"

[[task]]
id = "who"
needs = ["whoami"]
EOF
assert_ok "alice submits whoami" ct_as alice workbusctl submit /home/alice/whoami.toml
wait_goal whoami 30
assert_eq "$(report_field whoami 'r["tasks"]["who"]["output"]["user"]')" "agent" "user of the worker"
assert_contains "$(report_field whoami 'r["tasks"]["who"]["output"]["groups"]')" "workbus" "groups of the worker"
assert_eq "$(report_field whoami 'r["tasks"]["who"]["output"]["env"]')" "secret-from-env-file" "variable from /etc/workbus/workbusd.env"
ok "daemon as root:workbus with CAP_SETUID/SETGID/KILL only; worker as-agent ran as agent, with workbusd.env"

# ---------------------------------------------------------------------------
step "[7] apt remove stops the unit; purge keeps the bus"
assert_ok "apt-get remove workbus" ct_apt remove workbus
assert_eq "$(ct_prop $UNIT ActiveState)" "inactive" "ActiveState after remove (prerm stops it)"
assert_ok "apt-get purge workbus" ct_apt purge workbus
assert_eq "$(ct_prop $UNIT LoadState)" "not-found" "LoadState after purge"
in_container test -f $BUS/reports/release-notes.json || fail "purge removed the bus's reports"
ok "stopped on remove; after purge the unit is gone and $BUS/reports stays"

step "shut the container down"
stop_container
ok "clean shutdown"
