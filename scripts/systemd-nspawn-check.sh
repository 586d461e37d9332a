#!/usr/bin/env bash
# Run phishgate's systemd units under a real systemd, as a mail admin would.
#
#   sudo scripts/systemd-nspawn-check.sh [--keep]
#
# Boots a Debian 12 container with systemd-nspawn (systemd is its PID 1),
# installs this checkout's phishgate into /opt/phishgate/venv, runs
# `phishgate install-systemd`, wires the container's Postfix to the milter
# socket in /run/phishgate and checks, each with an "ok" or "FAIL" line:
# Type=notify start, mail through Postfix, state writes, watchdog pings,
# reload, stop under load, a watchdog kill and restart, the sandbox as the
# service sees it, the retrain service and timer, Postfix through the
# content-filter proxy, and the online `systemd-analyze security` figures.
# Exit status 1 if any check failed.
#
# Needs root, systemd-nspawn and debootstrap (apt-get install
# systemd-container debootstrap), a Debian mirror and PyPI. The first run
# debootstraps a base system into $PHISHGATE_NSPAWN_DIR (default
# /var/tmp/phishgate-nspawn/base, about 350 MB, 3 minutes) and reuses it
# later; each run boots a fresh copy of it. The host's python3 must be the
# container's (3.11): it builds the wheels the container installs offline.
# --keep leaves the container running to look around in; the script prints
# how to enter and stop it.
#
# The container boots with the unified cgroup hierarchy and without
# nspawn's own system call filter (SYSTEMD_SECCOMP=0): that filter refuses
# bpf(), and without bpf() systemd silently ignores IPAddressDeny=. It has
# its own network namespace with only a loopback interface.
set -euo pipefail

MACHINE=phishgate-check
NSPAWN_PID=
CHECK=/usr/local/lib/phishgate-check
ENVIRONMENT=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0)

# --------------------------------------------------------------- on the host

host_main() {
    local keep=no
    [[ ${1:-} == --keep ]] && keep=yes
    [[ $(id -u) == 0 ]] || die "run as root"
    for tool in systemd-nspawn debootstrap nsenter; do
        command -v "$tool" >/dev/null ||
            die "no $tool (apt-get install systemd-container debootstrap)"
    done
    REPO=$(cd "$(dirname "$0")/.." && pwd)
    WORK=${PHISHGATE_NSPAWN_DIR:-/var/tmp/phishgate-nspawn}
    mkdir -p "$WORK"

    [[ -d $WORK/base ]] || build_base
    build_wheels
    echo "== fresh copy of the base system"
    rm -rf "$WORK/run"
    cp -a "$WORK/base" "$WORK/run"
    install -D -m 0755 "$0" "$WORK/run$CHECK/check.sh"
    [[ $keep == yes ]] || trap power_off EXIT
    boot

    local status=0
    inside "$CHECK/check.sh" --inside || status=$?
    if [[ $keep == yes ]]; then
        echo "container left running; enter it with"
        echo "  nsenter -t $LEADER -a ${ENVIRONMENT[*]} bash"
        echo "stop it with: kill $NSPAWN_PID"
    fi
    return "$status"
}

die() {
    echo "systemd-nspawn-check: $*" >&2
    exit 2
}

build_base() {
    local mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    echo "== debootstrap Debian 12 into $WORK/base (once)"
    rm -rf "$WORK/base.tmp"
    # One --include: debootstrap keeps only the last.
    local packages=systemd,systemd-sysv,dbus,python3,python3-venv,libgomp1
    debootstrap --variant=minbase --include="$packages,procps,iproute2" \
        bookworm "$WORK/base.tmp" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $WORK/debootstrap.log"
    # Postfix without a system mail configuration; the check writes main.cf.
    systemd-nspawn -q -D "$WORK/base.tmp" --register=no --keep-unit --pipe \
        "${ENVIRONMENT[@]}" DEBIAN_FRONTEND=noninteractive sh -ec '
        echo "postfix postfix/main_mailer_type select No configuration" |
            debconf-set-selections
        apt-get -q update >/dev/null
        apt-get -q install -y --no-install-recommends postfix >/dev/null
        apt-get clean' </dev/null
    echo "$MACHINE" >"$WORK/base.tmp/etc/hostname"
    mv "$WORK/base.tmp" "$WORK/base"
}

build_wheels() {
    echo "== wheels of this checkout and its dependencies (host python3)"
    local version
    version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $version == 3.11 ]] || die "host python3 is $version; the container has 3.11"
    rm -rf "$WORK/wheels"
    python3 -m pip wheel -q -w "$WORK/wheels" "$REPO" 2>&1 |
        grep -v "^WARNING: Location" || true
    ls "$WORK"/wheels/phishgate-*.whl >/dev/null || die "no phishgate wheel built"
}

boot() {
    echo "== boot the container (systemd as PID 1)"
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 SYSTEMD_SECCOMP=0 \
        systemd-nspawn -D "$WORK/run" --boot --machine="$MACHINE" \
        --register=no --keep-unit --private-network --console=passive \
        --bind-ro="$WORK/wheels:/opt/wheels" \
        >"$WORK/nspawn.log" 2>&1 </dev/null &
    NSPAWN_PID=$!
    LEADER=
    local deadline=$((SECONDS + 60))
    until LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd); do
        ((SECONDS < deadline)) && kill -0 "$NSPAWN_PID" 2>/dev/null ||
            die "no systemd in the container: $WORK/nspawn.log"
        sleep 0.2 # polling for a process to appear; nothing to wait on
    done
    local state=
    until [[ $state == running || $state == degraded ]]; do
        ((SECONDS < deadline)) || die "container did not boot ($state)"
        state=$(inside systemctl is-system-running --wait 2>/dev/null) || true
    done
    # degraded: postfix@- fails until the check writes a main.cf.
    echo "systemd $(inside systemctl --version | sed -n '1s/^systemd //p'): $state"
}

inside() {
    nsenter -t "$LEADER" -a "${ENVIRONMENT[@]}" "$@"
}

power_off() {
    [[ -n $NSPAWN_PID ]] || return 0
    kill -TERM "$NSPAWN_PID" 2>/dev/null || return 0 # nspawn halts the container
    local deadline=$((SECONDS + 60))
    while kill -0 "$NSPAWN_PID" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2 # waiting for nspawn to exit, with a deadline `wait` lacks
    done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
}

# --------------------------------------------------- inside the container

VENV=/opt/phishgate/venv
PHISHGATE=$VENV/bin/phishgate
FAILED=0

inside_main() {
    set -E
    trap 'echo "FAIL  aborted at line $LINENO: $BASH_COMMAND"' ERR
    install_phishgate
    wire_postfix
    check_start
    check_mail
    check_watchdog_pings
    check_reload
    check_stop_under_load
    check_watchdog_restart
    check_sandbox
    check_retrain
    check_content_filter
    check_security
    echo
    if ((FAILED)); then
        echo "$FAILED check(s) failed"
        return 1
    fi
    echo "all checks passed"
}

ok() { printf 'ok    %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    FAILED=$((FAILED + 1))
}
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
step() { printf '\n== %s\n' "$*"; }

wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2 # condition polling with a deadline
    done
}

prop() { systemctl show -p "$2" --value "$1"; }
scanned_in_mailbox() {
    test "$(grep -c '^X-Phishgate-Status: scanned' /var/mail/root 2>/dev/null)" = "$1"
}
pinged_since() { test "$(prop phishgate WatchdogTimestampMonotonic)" != "$1"; }
# systemd logs each sd_notify message it accepts, at debug level.
debug_log() {
    systemctl log-level debug
    "$@" || { systemctl log-level info && return 1; }
    systemctl log-level info
}
notified_since() { logged_since phishgate "$1" "notification message from PID .*$2"; }
unit_log() { journalctl -q -u "$1" --since "@$2" -o cat; }
# grep reads to the end (no -q): under pipefail an early exit fails the pipe.
logged_since() { unit_log "$1" "$2" | grep -- "$3" >/dev/null; }
not_logged_since() { ! logged_since "$@"; }
# Lines of UNIT's log since T0 matching PATTERN, to show; none is no error.
show_log() { unit_log "$1" "$2" | { grep -E -- "$3" || true; } | cut -c1-200; }

install_phishgate() {
    step "install phishgate and run install-systemd"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-index --find-links /opt/wheels phishgate
    "$PHISHGATE" install-systemd | sed -n '1,/^$/p'
    check "postfix is in group phishgate" sh -c 'id -nG postfix | grep -qw phishgate'
    check "the config's state_dir is the units' StateDirectory" \
        grep -q '^state_dir = "/var/lib/phishgate"' /etc/phishgate/phishgate.toml
    # The milter on its unix socket in RuntimeDirectory=, as the README shows.
    local socket=unix:/run/phishgate/milter.sock
    sed -i "s|^listen = \"inet:127.0.0.1:8895\"|listen = \"$socket\"|" \
        /etc/phishgate/phishgate.toml # the [milter] one
}

wire_postfix() {
    step "Postfix with phishgate-generated milter lines"
    cat >/etc/postfix/main.cf <<'EOF'
compatibility_level = 3.6
myhostname = phishgate-check.localdomain
mydestination = $myhostname, localhost.localdomain, localhost
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
EOF
    "$PHISHGATE" postfix-snippet --mode milter | tee -a /etc/postfix/main.cf
    # smtpd reaches /run/phishgate only outside Postfix's chroot. It listens
    # on all addresses (only loopback ones here) for the sandbox probe.
    postconf -F smtp/inet/chroot=n pickup/unix/chroot=n cleanup/unix/chroot=n
    systemctl reset-failed
    systemctl restart postfix # a fresh process picks up the new group
    check "postfix is active" systemctl is-active -q postfix
}

check_start() {
    step "systemctl start phishgate (Type=notify)"
    local t0
    t0=$(date +%s)
    debug_log systemctl start phishgate
    check "active after start" systemctl is-active -q phishgate
    check "systemd got READY=1 from the main process" notified_since "$t0" READY=1
    local started ready
    started=$(prop phishgate ExecMainStartTimestampMonotonic)
    ready=$(prop phishgate ActiveEnterTimestampMonotonic)
    echo "READY=1 came $(((ready - started) / 1000)) ms after exec"
    check "start waited for READY=1 (the workers load the model first)" \
        test $((ready - started)) -gt 500000
    check "milter socket srw-rw---- phishgate:phishgate" \
        test "$(stat -c '%A %U:%G' /run/phishgate/milter.sock)" = \
        "srw-rw---- phishgate:phishgate"
    check "RuntimeDirectory drwxr-x--- phishgate:phishgate" \
        test "$(stat -c '%A %U:%G' /run/phishgate)" = "drwxr-x--- phishgate:phishgate"
}

check_mail() {
    step "mail through Postfix and the milter socket"
    write_python
    python3 "$CHECK/send.py" ham phish
    check "both delivered with phishgate's headers" wait_until 30 scanned_in_mailbox 2
    grep -h -A1 -E '^(Subject|X-Phishgate-Verdict):' /var/mail/root | grep -v '^--'
    check "the phish was flagged" \
        grep -q '^X-Phishgate-Verdict: phish action=\(tag\|quarantine\)' /var/mail/root
    check "the verdict log is in StateDirectory, owned by phishgate" \
        test "$(stat -c %U /var/lib/phishgate/phishgate.db)" = phishgate
    check "phishgate log from a root shell lists both" sh -c \
        "$PHISHGATE log --since 1h | grep -c '<check-\(ham\|phish\)@' | grep -qx 2"
}

check_watchdog_pings() {
    step "WATCHDOG=1 pings"
    local first second third
    first=$(prop phishgate WatchdogTimestampMonotonic)
    check "systemd saw a new WATCHDOG=1 within 20 s (WatchdogSec=30s)" \
        wait_until 20 pinged_since "$first"
    second=$(prop phishgate WatchdogTimestampMonotonic)
    wait_until 20 pinged_since "$second" || true
    third=$(prop phishgate WatchdogTimestampMonotonic)
    echo "one ping every $(((third - second) / 1000)) ms"
}

check_reload() {
    step "systemctl reload (SIGHUP; RELOADING=1 ... READY=1)"
    local pid t0
    pid=$(prop phishgate MainPID)
    t0=$(date +%s)
    check "systemctl reload succeeds" debug_log systemctl reload phishgate
    check "systemd got RELOADING=1" notified_since "$t0" RELOADING=1
    check "and READY=1 again" notified_since "$t0" READY=1
    check "the daemon logged the reload" wait_until 30 \
        logged_since phishgate "$t0" "reloaded /etc/phishgate/phishgate.toml"
    check "same main process" test "$(prop phishgate MainPID)" = "$pid"

    cp /etc/phishgate/phishgate.toml /run/phishgate-check.toml
    printf '\n[nonsense]\nkey = 1\n' >>/etc/phishgate/phishgate.toml
    t0=$(date +%s)
    systemctl reload phishgate
    check "a bad config is refused, the old one keeps serving" wait_until 30 \
        logged_since phishgate "$t0" "reload refused"
    check "still active" systemctl is-active -q phishgate
    cp /run/phishgate-check.toml /etc/phishgate/phishgate.toml
}

check_stop_under_load() {
    step "systemctl stop while 8 clients send 200 messages"
    local t0
    t0=$(date +%s)
    : >/var/mail/root
    debug_log python3 "$CHECK/load.py" 200 50
    check "systemd got STOPPING=1" notified_since "$t0" STOPPING=1
    check "all 200 delivered, none left in the queue" wait_until 60 sh -c \
        'test "$(grep -c "^Message-ID: <load-" /var/mail/root)" = 200 &&
         postqueue -p | grep -q "Mail queue is empty"'
    local scanned
    scanned=$(grep -c '^X-Phishgate-Status: scanned' /var/mail/root || true)
    echo "scanned before the stop: $scanned"
    check "the daemon finished and said so" \
        logged_since phishgate "$t0" "INFO .*: stopped"
    check "no scan or connection abandoned" \
        not_logged_since phishgate "$t0" "deadline passed"
    check "stop result: success" test "$(prop phishgate Result)" = success
    show_log phishgate "$t0" 'Stopping|stopped|SIGKILL|Stopped'
    systemctl start phishgate
}

check_watchdog_restart() {
    step "a stuck event loop is killed by the watchdog and restarted"
    mkdir -p /run/systemd/system/phishgate.service.d
    printf '[Service]\nWatchdogSec=4s\nTimeoutAbortSec=3s\n' \
        >/run/systemd/system/phishgate.service.d/check.conf
    systemctl daemon-reload
    systemctl restart phishgate
    local pid restarts t0
    pid=$(prop phishgate MainPID)
    restarts=$(prop phishgate NRestarts)
    t0=$(date +%s)
    kill -STOP "$pid"
    check "Watchdog timeout, then Restart=on-failure" wait_until 60 sh -c \
        "test \$(systemctl show -p NRestarts --value phishgate) -gt $restarts &&
         systemctl is-active -q phishgate"
    show_log phishgate "$t0" 'Watchdog|restart|Started'
    rm -r /run/systemd/system/phishgate.service.d
    systemctl daemon-reload
    systemctl restart phishgate
}

check_sandbox() {
    step "the sandbox as the service sees it (phishgate.service's settings)"
    # A copy of the installed unit running a probe instead of the daemon;
    # without RuntimeDirectory=, which it would delete when it ends.
    sed -e 's|^Type=notify|Type=oneshot|' \
        -e "s|^ExecStart=.*|ExecStart=$VENV/bin/python3 $CHECK/probe.py|" \
        -e '/^\(ExecReload\|WatchdogSec\|Restart\|RestartSec\|NotifyAccess\)=/d' \
        -e '/^RuntimeDirectory/d' \
        /etc/systemd/system/phishgate.service \
        >/run/systemd/system/phishgate-probe.service
    # An address that is not loopback, so that IPAddressDeny= has one to refuse.
    ip addr add 192.0.2.1/32 dev lo
    systemctl daemon-reload
    local t0
    t0=$(date +%s)
    systemctl start phishgate-probe.service
    local expected got
    expected=$(
        cat <<'EOF'
capabilities 0000000000000000
no_new_privs 1
write /var/lib/phishgate: allowed
write /etc/phishgate: refused
write /opt/phishgate: refused
read /root: refused
W+X memory: refused
setpriority: refused
AF_NETLINK socket: refused
connect 127.0.0.1:25: allowed
connect 192.0.2.1:25: refused
lightgbm trains and predicts: allowed
EOF
    )
    local systemd_lines='^(Starting|Finished|phishgate-probe)'
    got=$(unit_log phishgate-probe "$t0" | grep -v -E "$systemd_lines")
    echo "$got"
    check "the probe saw exactly the expected sandbox" test "$got" = "$expected"
    ip addr del 192.0.2.1/32 dev lo
    rm /run/systemd/system/phishgate-probe.service
    systemctl daemon-reload
}

check_retrain() {
    step "phishgate-retrain.service and its timer"
    python3 "$CHECK/labels.py" /run/phishgate-labels 30
    chmod -R a+rX /run/phishgate-labels
    # Admin commands run as the service user: files root writes into the
    # state directory are unreadable to the retrain service.
    local kind
    for kind in phish ham; do
        runuser -u phishgate -- "$PHISHGATE" report --label "$kind" \
            /run/phishgate-labels/"$kind"-*.eml | tail -1
    done
    local t0 status version
    t0=$(date +%s)
    systemctl start phishgate-retrain.service || true
    status=$(prop phishgate-retrain ExecMainStatus)
    show_log phishgate-retrain "$t0" 'retrain:'
    check "retrain service result: success (exit $status)" \
        test "$(prop phishgate-retrain Result)" = success
    if [[ $status == 0 ]]; then
        version=$(cat /var/lib/phishgate/models/active)
        check "the running daemon switched to $version" wait_until 60 \
            logged_since phishgate "$t0" "reloaded .*; model $version"
    fi
    systemctl enable --now phishgate-retrain.timer 2>&1
    systemctl list-timers --no-pager --no-legend phishgate-retrain.timer
    check "the timer is active" systemctl is-active -q phishgate-retrain.timer
}

check_content_filter() {
    step "Postfix as a content filter client (the proxy, after the queue)"
    local snippet
    snippet=$("$PHISHGATE" postfix-snippet --mode content-filter)
    echo "$snippet"
    postconf -X smtpd_milters non_smtpd_milters
    sed -n '/^# \/etc\/postfix\/main.cf/,/^$/p' <<<"$snippet" | grep -v '^#' |
        while read -r line; do if [[ -n $line ]]; then postconf -e "$line"; fi; done
    sed -n '/^# \/etc\/postfix\/master.cf/,$p' <<<"$snippet" | grep -v '^#' \
        >>/etc/postfix/master.cf
    systemctl restart postfix
    : >/var/mail/root
    python3 "$CHECK/send.py" ham phish
    check "both delivered through the proxy with phishgate's headers" \
        wait_until 60 scanned_in_mailbox 2
    check "the phish was flagged" \
        grep -q '^X-Phishgate-Verdict: phish action=\(tag\|quarantine\)' /var/mail/root
}

check_security() {
    step "systemd-analyze security (online, the loaded units)"
    local unit figure
    for unit in phishgate.service phishgate-retrain.service; do
        figure=$(systemd-analyze security --no-pager "$unit" |
            sed -n 's/^→ Overall exposure level for [^:]*: //p')
        echo "$unit: $figure"
        check "$unit rated 2.0 or better" \
            awk -v f="${figure%% *}" 'BEGIN { exit !(f <= 2.0) }'
    done
}

write_python() {
    cat >"$CHECK/send.py" <<'EOF'
"""Send check messages (ham, phish) to root@localhost through Postfix."""
import smtplib
import sys
from email.message import EmailMessage

BODIES = {
    "ham": ("Lunch on Friday", "<p>Shall we meet at noon by the fountain?</p>"),
    "phish": (
        "Your mailbox will be suspended",
        "<p>Dear user, verify your password now or lose access:</p>"
        '<a href="http://collect.evil.top/login.php">https://www.paypal.com/signin</a>'
        '<form action="http://collect.evil.top/post.php">'
        '<input type="password" name="p"></form>',
    ),
}


def message(kind: str) -> EmailMessage:
    subject, html = BODIES[kind]
    msg = EmailMessage()
    msg["From"] = "Service Desk <alerts@secure-login.example>"
    msg["To"] = "root@localhost"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<check-{kind}@phishgate-check.test>"
    msg.set_content("See the HTML part.")
    msg.add_alternative(html, subtype="html")
    return msg


with smtplib.SMTP("127.0.0.1", 25, timeout=60) as smtp:
    for kind in sys.argv[1:]:
        smtp.send_message(message(kind), "sender@localhost", ["root@localhost"])
EOF
    cat >"$CHECK/load.py" <<'EOF'
"""Send N messages from 8 clients; stop phishgate after the STOP_AT-th."""
import concurrent.futures
import smtplib
import subprocess
import sys
import threading

N, STOP_AT = int(sys.argv[1]), int(sys.argv[2])
stop = ["systemctl", "stop", "phishgate"]
stopper = threading.Thread(target=subprocess.run, args=(stop,))


def send(i: int) -> None:
    body = (
        f"From: a@localhost\r\nTo: root@localhost\r\nSubject: load {i}\r\n"
        f"Message-ID: <load-{i}@phishgate-check.test>\r\n\r\n" + "hello there\r\n" * 200
    )
    with smtplib.SMTP("127.0.0.1", 25, timeout=60) as smtp:
        smtp.sendmail("sender@localhost", ["root@localhost"], body)
    if i == STOP_AT:
        stopper.start()


with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for future in [pool.submit(send, i) for i in range(N)]:
        future.result()
stopper.join()
EOF
    cat >"$CHECK/labels.py" <<'EOF'
"""Write N phishing and N ordinary messages as .eml files into DIR."""
import sys
from email.message import EmailMessage
from pathlib import Path

out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for i in range(n):
    phish = EmailMessage()
    phish["From"] = f"Security Team <no-reply@acc{i}-verify.example>"
    phish["To"] = "root@localhost"
    phish["Subject"] = f"Action required: account {i} suspended"
    phish["Message-ID"] = f"<label-phish-{i}@phishgate-check.test>"
    phish.set_content("Verify now")
    phish.add_alternative(
        f'<p>Your password expires. <a href="http://login{i}.evil.top/verify.php">'
        f'https://bank.example/login</a></p><form action="http://x{i}.evil.top/p">'
        '<input type="password"></form>',
        subtype="html",
    )
    (out / f"phish-{i:02d}.eml").write_bytes(bytes(phish))
    ham = EmailMessage()
    ham["From"] = f"Colleague {i} <person{i}@example.org>"
    ham["To"] = "root@localhost"
    ham["Subject"] = f"Minutes of meeting {i}"
    ham["Message-ID"] = f"<label-ham-{i}@phishgate-check.test>"
    ham.set_content(f"Hi,\n\nthe minutes of meeting {i} are below.\n\n" * 3)
    (out / f"ham-{i:02d}.eml").write_bytes(bytes(ham))
EOF
    cat >"$CHECK/probe.py" <<'EOF'
"""What the service may do inside phishgate.service's sandbox, one line each."""
import mmap
import os
import socket
import tempfile


def attempt(what: str, call) -> None:
    try:
        call()
    except OSError:
        print(f"{what}: refused")
    else:
        print(f"{what}: allowed")


def write_in(folder: str) -> None:
    with tempfile.NamedTemporaryFile(dir=folder):
        pass


def connect(host: str) -> None:
    with socket.create_connection((host, 25), timeout=3):
        pass


def netlink() -> None:
    socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM).close()


def predict() -> None:
    import lightgbm
    import numpy

    x = numpy.random.default_rng(0).random((200, 3))
    data = lightgbm.Dataset(x, label=x[:, 0] > 0.5)
    booster = lightgbm.train({"verbose": -1, "num_threads": 2}, data, 3)
    booster.predict(x)


with open("/proc/self/status") as lines:
    status = dict(line.rstrip("\n").split(":\t", 1) for line in lines if ":\t" in line)
print("capabilities", status["CapEff"].strip())
print("no_new_privs", status["NoNewPrivs"].strip())
attempt("write /var/lib/phishgate", lambda: write_in("/var/lib/phishgate"))
attempt("write /etc/phishgate", lambda: write_in("/etc/phishgate"))
attempt("write /opt/phishgate", lambda: write_in("/opt/phishgate"))
attempt("read /root", lambda: os.listdir("/root"))
attempt("W+X memory", lambda: mmap.mmap(-1, 4096, prot=7))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
attempt("AF_NETLINK socket", netlink)
attempt("connect 127.0.0.1:25", lambda: connect("127.0.0.1"))
attempt("connect 192.0.2.1:25", lambda: connect("192.0.2.1"))
attempt("lightgbm trains and predicts", predict)
EOF
}

if [[ ${1:-} == --inside ]]; then
    inside_main
else
    host_main "$@"
fi
