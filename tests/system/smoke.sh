#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted $ are for the shell/awk inside the container
# tests/system/smoke.sh — proves the system-test harness (lib.sh) works on
# this machine: boots systemd in a container and drives a small Type=notify
# stand-in for workbusd with apt, systemctl and journalctl.
#
#   sudo tests/system/smoke.sh        # exit 0 pass, 1 fail, 77 unsupported
#
# The stand-in (Perl, because perl-base is in every minimal Debian root and
# python3 is not) behaves like the real daemon is specified to (SPEC §8):
# READY=1/STATUS= from its main PID, WATCHDOG=1 from its loop, RELOADING=1/
# READY=1 around SIGHUP, STOPPING=1 on SIGTERM, structured journal fields
# (GOAL=...), and it picks up goals that members of its group drop into
# inbox/. SIGUSR1 makes it stop petting the watchdog (a "wedged loop").
# It is packaged as a .deb on the host (hardened unit, sysusers.d,
# tmpfiles.d, debhelper-like maintainer scripts), bind-mounted read-only
# into the container and installed offline with
# `apt-get install /mnt/share/x.deb` — the path the real package test takes.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

# journal_has TEXT JOURNALCTL-ARGS... — some message (-o cat) contains TEXT.
journal_has() {
  local text=$1 out; shift
  out=$(ct_journal -o cat "$@") || return 1
  [[ $out == *"$text"* ]] || { printf '%s\n' "$out"; return 1; }
}
# prop_is UNIT PROPERTY VALUE
prop_is() {
  local v; v=$(ct_prop "$1" "$2") || return 1
  [[ $v == "$3" ]] || { echo "$2=$v (want $3)"; return 1; }
}

wb_init "system smoke test"
wb_require_capabilities

step "host tools"
ensure_host_tools
ok "systemd-nspawn $(systemd-nspawn --version | awk 'NR==1{print $2}'), debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"

step "container root filesystem"
ensure_rootfs
ok "$WB_ROOTFS"

# ---------------------------------------------------------------------------
step "build the stand-in .deb on the host"
SHARE=$WB_RUN_DIR/share          # bind-mounted read-only at /mnt/share
PKG=$WB_RUN_DIR/pkg
mkdir -p "$SHARE" "$PKG/DEBIAN"
# pkg_file PATH [MODE] < content
pkg_file() { mkdir -p "$(dirname "$PKG$1")"; cat >"$PKG$1"; chmod "${2:-0644}" "$PKG$1"; }

pkg_file /usr/bin/wbstandin 0755 <<'PERL'
#!/usr/bin/perl
# Stand-in for workbusd: sd_notify + native journal protocol from the main PID.
use strict;
use warnings;
use Socket qw(AF_UNIX SOCK_DGRAM pack_sockaddr_un);

$| = 1;
my $inbox = $ARGV[0] // '/var/lib/wbstandin/inbox';
my ($hup, $term, $wedged) = (0, 0, 0);
$SIG{HUP}  = sub { $hup++ };
$SIG{TERM} = sub { $term = 1 };
$SIG{USR1} = sub { $wedged ||= 1 };

sub dgram {
    my ($path, $msg) = @_;
    return 0 unless defined $path && length $path;
    $path =~ s/^@/\0/;    # abstract socket
    socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or return 0;
    my $r = send($s, $msg, 0, pack_sockaddr_un($path));
    close $s;
    return defined $r;
}
sub notify { dgram($ENV{NOTIFY_SOCKET}, join("\n", @_) . "\n") }
sub jlog {
    my ($msg, %f) = @_;
    my $d = "MESSAGE=$msg\nPRIORITY=6\nSYSLOG_IDENTIFIER=wbstandin\n"
          . join('', map { "$_=$f{$_}\n" } sort keys %f);
    dgram('/run/systemd/journal/socket', $d) or print "$msg\n";
}
sub nap { select(undef, undef, undef, $_[0]) }

my ($goals, $reloads) = (0, 0);
sub status { "STATUS=ready: $goals goals, $reloads reloads" }

print "wbstandin starting, pid $$\n";              # stdout -> journal too
nap(0.5);                                           # "recovery"
notify("READY=1", status());
jlog("ready", EVENT => 'ready');
while (!$term) {
    if ($hup) {
        $hup = 0;
        notify("RELOADING=1", "STATUS=reloading");
        $reloads++;
        jlog("reload #$reloads", EVENT => 'reload');
        notify("READY=1", status());
    }
    if (opendir(my $dh, $inbox)) {
        for my $f (sort grep { !/^\./ } readdir $dh) {
            my $name = $f; $name =~ s/\.goal$//;
            $goals++;
            jlog("picked up goal $name", GOAL => $name, EVENT => 'goal');
            unlink "$inbox/$f";
            notify(status());
        }
        closedir $dh;
    }
    if ($wedged == 1) { jlog("wedged: no longer petting the watchdog"); $wedged = 2 }
    notify("WATCHDOG=1") unless $wedged;
    nap(0.2);
}
notify("STOPPING=1", "STATUS=stopping");
jlog("stopping after $goals goals", EVENT => 'stop');
exit 0;
PERL

UNIT=/lib/systemd/system/wbstandin.service   # where bookworm packages put units
pkg_file $UNIT <<'UNIT'
[Unit]
Description=workbus stand-in daemon (harness smoke test)
Documentation=file:/usr/bin/wbstandin

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/wbstandin /var/lib/wbstandin/inbox
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=200ms
WatchdogSec=2s
TimeoutStartSec=15s
TimeoutStopSec=10s
StateDirectory=wbstandin
# the kind of hardening the real unit is specified to carry (SPEC §8), to
# prove it works inside this container
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
RestrictAddressFamilies=AF_UNIX
UMask=0027

[Install]
WantedBy=multi-user.target
UNIT

pkg_file /usr/lib/sysusers.d/wbstandin.conf <<'EOF'
g wbstandin -
EOF
pkg_file /usr/lib/tmpfiles.d/wbstandin.conf <<'EOF'
d /var/lib/wbstandin 0755 root root -
d /var/lib/wbstandin/inbox 2770 root wbstandin -
EOF
pkg_file /DEBIAN/control <<'EOF'
Package: wbstandin
Version: 1.0
Architecture: all
Maintainer: workbus system tests <root@localhost>
Depends: perl-base, systemd, adduser
Section: admin
Priority: optional
Description: stand-in for workbusd (system-test harness smoke test)
EOF
# Cut-down versions of what dh_installsysusers / dh_installtmpfiles /
# dh_installsystemd generate (a dh-built package starts the unit on install).
pkg_file /DEBIAN/postinst 0755 <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ]; then
    systemd-sysusers wbstandin.conf
    systemd-tmpfiles --create wbstandin.conf
    deb-systemd-helper unmask wbstandin.service >/dev/null || true
    deb-systemd-helper enable wbstandin.service >/dev/null || true
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke restart wbstandin.service >/dev/null || true
    fi
fi
EOF
pkg_file /DEBIAN/prerm 0755 <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop wbstandin.service >/dev/null || true
fi
EOF
pkg_file /DEBIAN/postrm 0755 <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; fi
if [ "$1" = purge ]; then deb-systemd-helper purge wbstandin.service >/dev/null || true; fi
EOF
DEB=$SHARE/wbstandin_1.0_all.deb
assert_ok "dpkg-deb --build" dpkg-deb --root-owner-group -Zgzip --build "$PKG" "$DEB"
ok "$(dpkg-deb -f "$DEB" Package Version | paste -sd' ') ($(stat -c %s "$DEB") bytes)"

# ---------------------------------------------------------------------------
step "boot the container"
echo "hello from the host" >"$SHARE/hello.txt"
boot_container "wbsmoke-$$" --bind-ro="$SHARE":/mnt/share
ok "is-system-running: $WB_CT_BOOT_STATE"
assert_eq "$(in_container cat /mnt/share/hello.txt)" "hello from the host" "bind-mounted file"
assert_eq "$(in_container hostname)" "wbsmoke-$$" "hostname inside"
assert_match "$(in_container cat /etc/machine-id)" '^[0-9a-f]{32}$' "machine-id inside"
assert_eq "$(in_container stat -fc %T /sys/fs/cgroup)" "cgroup2fs" "cgroup v2 inside the container"
assert_eq "$(in_container sh -c 'ls /sys/class/net | sort | paste -sd" "')" "lo" "network interfaces inside"
ok "bind mount, hostname, machine-id, cgroup2, private network (lo only)"

step "install the .deb offline (apt-get install /mnt/share/...)"
t=$EPOCHREALTIME
assert_ok "apt-get install /mnt/share/${DEB##*/}" ct_apt install /mnt/share/"${DEB##*/}"
ok "installed in $(wb__since "$t")s (postinst: sysusers, tmpfiles, enable, start)"
assert_eq "$(in_container dpkg-query -W -f='${Status}' wbstandin)" "install ok installed" "dpkg status"
assert_eq "$(in_container getent group wbstandin | cut -d: -f1)" "wbstandin" "group from sysusers.d"
assert_eq "$(in_container stat -c '%a %U:%G' /var/lib/wbstandin/inbox)" "2770 root:wbstandin" "inbox mode/owner (tmpfiles.d)"
assert_eq "$(in_container systemctl is-enabled wbstandin.service)" "enabled" "is-enabled"
assert_eq "$(ct_prop wbstandin.service ActiveState)" "active" "ActiveState right after install"
ok "group wbstandin, inbox 2770 root:wbstandin, unit enabled and started by postinst"

step "systemd-analyze verify"
assert_ok "systemd-analyze verify $UNIT" in_container systemd-analyze verify $UNIT
[[ -z $WB_OUT ]] || fail "systemd-analyze verify printed warnings:
$WB_OUT"
ok "no warnings"

step "stop + start (Type=notify: start returns only after READY=1)"
assert_ok "systemctl stop" in_container systemctl stop wbstandin.service
t=$EPOCHREALTIME
assert_ok "systemctl start" in_container systemctl start wbstandin.service
el=$(wb__since "$t")
# the stand-in sleeps 0.5 s before READY=1
[[ ${el/./} -ge 5 ]] || fail "systemctl start returned after ${el}s, before the 0.5 s the daemon takes to send READY=1"
ok "systemctl start returned after READY=1 in ${el}s"
show=$(in_container systemctl show -p ActiveState,SubState,StatusText,MainPID,NRestarts wbstandin.service)
printf '%s\n' "$show" | sed 's/^/      /' >&2
assert_contains "$show" "ActiveState=active" "systemctl show"
assert_contains "$show" "SubState=running" "systemctl show"
assert_contains "$show" "StatusText=ready: 0 goals, 0 reloads" "systemctl show"
pid1=$(ct_prop wbstandin.service MainPID)
assert_match "$pid1" '^[1-9][0-9]*$' "MainPID"
assert_eq "$(in_container cat /proc/"$pid1"/comm)" "wbstandin" "comm of MainPID"
st=$(in_container cat /proc/"$pid1"/status)
assert_match "$st" $'NoNewPrivs:\t1' "NoNewPrivileges= in effect"
assert_match "$st" $'Seccomp:\t2' "SystemCallFilter= in effect"
assert_match "$(in_container awk '$5 == "/" {print $6}' /proc/"$pid1"/mountinfo)" '^ro' "ProtectSystem=strict: / read-only for the service"
ok "active/running, MainPID $pid1; sandboxing applied (NoNewPrivs, seccomp, read-only /)"

step "journal"
wait_until 10 "stdout line of wbstandin in the journal" \
  journal_has "wbstandin starting, pid $pid1" -u wbstandin.service
wait_until 10 "native-protocol line of wbstandin in the journal" \
  journal_has "ready" -u wbstandin.service EVENT=ready _PID="$pid1"
ok "stdout line and native-protocol line are under -u wbstandin"

step "user in group drops a goal (runuser)"
assert_ok "useradd alice" in_container useradd --create-home --groups wbstandin alice
assert_ok "useradd bob" in_container useradd --create-home bob
assert_contains "$(ct_as alice id -nG)" "wbstandin" "alice's groups"
assert_eq "$(ct_as alice id -un)" "alice" "runuser identity"
assert_eq "$(in_container su -s /bin/sh -c 'id -un' alice)" "alice" "su identity"
assert_fails "bob (not in group) writes to inbox" \
  ct_as bob sh -c 'echo x > /var/lib/wbstandin/inbox/intruder.goal'
assert_contains "$WB_OUT" "Permission denied" "bob's error"
assert_ok "alice writes a goal" \
  ct_as alice sh -c 'echo "summarise" > /var/lib/wbstandin/inbox/release-notes.goal'
wait_until 10 "journalctl -u wbstandin GOAL=release-notes" \
  journal_has "picked up goal release-notes" -u wbstandin.service GOAL=release-notes
wait_until 5 "StatusText counts the goal" \
  prop_is wbstandin.service StatusText "ready: 1 goals, 0 reloads"
v=$(ct_journal -u wbstandin.service GOAL=release-notes -o verbose)
assert_contains "$v" "_SYSTEMD_UNIT=wbstandin.service" "journal entry attribution"
assert_contains "$v" "_PID=$pid1" "journal entry _PID"
ok "alice (group wbstandin) can drop goals, bob cannot; journalctl -u ... GOAL= works"

step "reload (RELOADING=1 ... READY=1)"
assert_ok "systemctl reload" in_container systemctl reload wbstandin.service
wait_until 10 "reload logged" journal_has "reload #1" -u wbstandin.service EVENT=reload
wait_until 10 "READY again after reload" prop_is wbstandin.service StatusText "ready: 1 goals, 1 reloads"
assert_eq "$(ct_prop wbstandin.service ActiveState)" "active" "ActiveState after reload"
assert_eq "$(ct_prop wbstandin.service MainPID)" "$pid1" "MainPID after reload"
ok "reloaded in place"

step "restart (STOPPING=1, new MainPID)"
assert_ok "systemctl restart" in_container systemctl restart wbstandin.service
pid2=$(ct_prop wbstandin.service MainPID)
assert_ne "$pid2" "$pid1" "MainPID after restart"
assert_eq "$(ct_prop wbstandin.service NRestarts)" "0" "NRestarts after a manual restart"
wait_until 10 "stop logged" journal_has "stopping after 1 goals" -u wbstandin.service EVENT=stop
ok "restarted: MainPID $pid1 -> $pid2"

step "watchdog kills a wedged loop and the unit restarts"
assert_eq "$(ct_prop wbstandin.service WatchdogUSec)" "2s" "WatchdogUSec"
t=$EPOCHREALTIME
assert_ok "send SIGUSR1 (stop petting)" in_container systemctl kill --kill-who=main --signal=SIGUSR1 wbstandin.service
wait_until 20 "watchdog restart (NRestarts=1)" prop_is wbstandin.service NRestarts 1
wait_until 10 "restarted unit is active again" prop_is wbstandin.service ActiveState active
pid3=$(ct_prop wbstandin.service MainPID)
assert_ne "$pid3" "$pid2" "MainPID after watchdog restart"
j=$(ct_journal -u wbstandin.service -o cat)
assert_contains "$j" "wedged: no longer petting the watchdog" "journal"
assert_contains "$j" "Watchdog timeout" "journal (systemd's message)"
ok "watchdog fired and the unit came back after $(wb__since "$t")s: MainPID $pid2 -> $pid3"

step "watchdog also catches a frozen main process (SIGSTOP, no test hook needed)"
t=$EPOCHREALTIME
assert_ok "send SIGSTOP" in_container systemctl kill --kill-who=main --signal=SIGSTOP wbstandin.service
wait_until 20 "watchdog restart (NRestarts=2)" prop_is wbstandin.service NRestarts 2
wait_until 10 "restarted unit is active again" prop_is wbstandin.service ActiveState active
pid4=$(ct_prop wbstandin.service MainPID)
assert_ne "$pid4" "$pid3" "MainPID after the second watchdog restart"
j=$(ct_journal -u wbstandin.service -o cat)
assert_contains "$j" "Main process exited, code=killed, status=6/ABRT" "journal (SIGABRT from the watchdog)"
ok "frozen process aborted by the watchdog and restarted after $(wb__since "$t")s: MainPID $pid3 -> $pid4"

step "stop"
assert_ok "systemctl stop" in_container systemctl stop wbstandin.service
show=$(in_container systemctl show -p ActiveState,Result,ExecMainStatus wbstandin.service)
assert_contains "$show" "ActiveState=inactive" "after stop"
assert_contains "$show" "Result=success" "after stop"
assert_contains "$show" "ExecMainStatus=0" "exit status after SIGTERM"
ok "inactive, exited 0"

step "remove the package"
# Six starts in ~8 s so far: the default StartLimitBurst=5 per
# StartLimitIntervalSec=10s would refuse this start (Result=start-limit-hit);
# reset-failed also resets that counter.
in_container systemctl show -p Result wbstandin.service >&2
assert_ok "systemctl reset-failed" in_container systemctl reset-failed wbstandin.service
assert_ok "systemctl start" in_container systemctl start wbstandin.service
assert_ok "apt-get remove" ct_apt remove wbstandin
assert_eq "$(ct_prop wbstandin.service ActiveState)" "inactive" "ActiveState after remove (prerm stops it)"
assert_eq "$(ct_prop wbstandin.service LoadState)" "not-found" "LoadState after remove"
ok "prerm stopped it, unit gone"

step "shut the container down"
stop_container
ok "clean shutdown"
