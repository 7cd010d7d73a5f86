#!/bin/sh
# The units scenario inside the guest (benchmarks/lab/units.py), as /lab/run.sh: systemd is PID 1
# (lab-run.service runs this once multi-user.target is reached, its output on the console).
# Installs the shipped units as contrib/README.md tells users, starts them, and prints one line per
# check for the host:
#   LAB-UNITS PASS|FAIL NAME [detail]     LAB-UNITS FIGURE NAME SECONDS     LAB-UNITS DONE rc=N
# and, after a FAIL, the unit's `systemctl status` and journal as LAB-UNITS-LOG lines.
exec 2>&1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
export SYSTEMD_PAGER='' SYSTEMD_COLORS=0
WATCH=geoprobe-watch.service
CHECK=geoprobe-check.service
EVENTS=/var/lib/geoprobe/events.jsonl
TEXTFILE=/var/lib/node_exporter/textfile_collector
METRICS=$TEXTFILE/geoprobe.prom
FIX_TIMEOUT=${LAB_FIX_TIMEOUT:-300}
failed=0

up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
pass() { echo "LAB-UNITS PASS $*"; }
fail() { echo "LAB-UNITS FAIL $*"; failed=1; }
figure() { echo "LAB-UNITS FIGURE $1 $2"; }
info() { sed 's/^/LAB-UNITS-LOG /'; }
show() {
    for u in "$@"; do
        systemctl status --no-pager -l "$u" | info
        journalctl -u "$u" --no-pager -o short-monotonic -n 60 | info
    done
}
fixes() {
    n=$(grep -c '"io.geoprobe.location.fix"' "$EVENTS" 2>/dev/null)
    echo "${n:-0}"
}
prop() { systemctl show -p "$2" --value "$1"; }  # prop UNIT PROPERTY
restarts() { prop "$WATCH" NRestarts; }
main_pid() { prop "$1" MainPID; }
env_of() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep "^$2=" | cut -d= -f2-; }
SCRAPE=http://127.0.0.1:9464/metrics  # the report-only drop-in's --metrics-listen
metrics_text() {
    if [ -n "$scrape" ]; then
        python3 -c 'import sys, urllib.request as u
sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())' "$SCRAPE" 2>/dev/null
    else
        cat "$METRICS" 2>/dev/null
    fi
}
metric() { metrics_text | awk -v m="$1" '$1 == m { print $2 }'; }
scrape=''
# wait_round BEFORE T0 EPOCH: until the events file holds more than BEFORE fixes, or the metrics
# show a round after EPOCH; prints the evidence and the seconds from T0 (uptime).
wait_round() {
    end=$(($(date +%s) + FIX_TIMEOUT))
    while [ "$(date +%s)" -lt "$end" ]; do
        if [ "$(fixes)" -gt "$1" ]; then
            echo "fix event, $(since "$2")"
            return 0
        fi
        last=$(metric geoprobe_last_round_timestamp_seconds)
        if [ -n "$last" ] && awk -v l="$last" -v e="$3" 'BEGIN { exit !(l > e) }'; then
            echo "metrics, a round at $last, $(since "$2")"
            return 0
        fi
        case "$(systemctl is-active "$WATCH")" in
        active | activating | reloading) ;;
        *) echo "stopped $(since "$2")" && return 1 ;;
        esac
        sleep 1
    done
    echo "timeout $(since "$2")"
    return 1
}

echo "LAB-UNITS START uptime=$(up)"
figure boot_to_run_s "$(up)"
state=$(systemctl is-system-running --wait)
if [ "$(cat /proc/1/comm)" = systemd ]; then
    pass systemd-pid1 "system $state at uptime $(up) s"
else
    fail systemd-pid1 "PID 1 is $(cat /proc/1/comm)"
    echo "LAB-UNITS DONE rc=1"
    exit 1
fi
systemd-analyze time 2>&1 | info
[ "$state" = running ] || systemctl --failed --no-pager | info

# --- install, as contrib/README.md says ---------------------------------------------------------
# `pip install .` leaves a console script in /usr/local/bin; here it runs the lab's snapshot of
# geoprobe (/lab/geoprobe) with the guest's python3. The root is read-only: /usr/local/bin is a
# tmpfs (it is empty in the image).
mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin
install -m 0755 /lab/bin/geoprobe /usr/local/bin/geoprobe
where=$(command -v geoprobe)
if [ "$where" = /usr/local/bin/geoprobe ] && geoprobe --help > /dev/null; then
    pass install "command -v geoprobe: $where"
else
    fail install "command -v geoprobe: '$where'"
fi
install -m 0644 /lab/contrib/systemd/geoprobe-watch.service /lab/contrib/systemd/geoprobe-check.service \
    /lab/contrib/systemd/geoprobe-check.timer /etc/systemd/system/
install -d -m 0755 /etc/geoprobe && install -m 0600 /lab/policy.toml /etc/geoprobe/policy.toml
if out=$(geoprobe policy check /etc/geoprobe/policy.toml 2>&1); then
    pass policy-check "$(echo "$out" | head -1)"
else
    fail policy-check "$(echo "$out" | tail -1)"
fi
# `geoprobe landmarks sync --mesh` as root: the guest cannot reach RIPE Atlas, so the catalogue of
# the sites' testbeds (advertised at 10.0.2.2) goes where sync would write it, with the country
# index and calibration fit the host computed for it (minutes under TCG otherwise).
cat_path=$(python3 -c 'import sys; sys.path.insert(0, "/lab")
from geoprobe.landmarks import default_catalogue_path; print(default_catalogue_path())')
install -d -m 0755 /var/cache/geoprobe
install -m 0644 /lab/catalogue.json "$cat_path"
[ -d /lab/cache ] && cp -r /lab/cache/. /var/cache/geoprobe/
if [ "$cat_path" = /var/cache/geoprobe/anchors.json ]; then
    pass catalogue-path "root's catalogue: $cat_path"
else
    fail catalogue-path "root's catalogue is $cat_path, not under /var/cache/geoprobe"
fi
install -d -m 0755 "$TEXTFILE"  # node_exporter's textfile collector dir (the unit's --metrics)
systemctl daemon-reload
units="/etc/systemd/system/$WATCH /etc/systemd/system/$CHECK /etc/systemd/system/geoprobe-check.timer"
# shellcheck disable=SC2086
if out=$(systemd-analyze verify $units 2>&1) && [ -z "$out" ]; then
    pass units-verify "systemd-analyze verify: no warnings"
else
    echo "$out" | info
    fail units-verify "systemd-analyze verify: $(echo "$out" | head -1)"
fi

# --- the watch, as shipped ----------------------------------------------------------------------
t0=$(up)
epoch=$(date +%s)
systemctl enable --now "$WATCH" 2>&1 | info
sleep 2
if systemctl is-active -q "$WATCH" && [ "$(systemctl is-enabled "$WATCH")" = enabled ]; then
    pass watch-active "enabled, active, main pid $(main_pid "$WATCH")"
else
    fail watch-active "$(systemctl is-active "$WATCH") / $(systemctl is-enabled "$WATCH")"
fi
pid=$(main_pid "$WATCH")
cache=$(env_of "$pid" CACHE_DIRECTORY)
if r=$(wait_round 0 "$t0" "$epoch") && [ "$(restarts)" = 0 ]; then
    pass watch-round "first round ($r s after start), no restart"
    figure watch_first_round_s "${r##* }"
    state_mode=$(stat -c %a /var/lib/geoprobe)
    if [ "$cache" = /var/cache/geoprobe ] && [ "$state_mode" = 700 ]; then
        pass watch-dirs "CACHE_DIRECTORY=$cache, /var/lib/geoprobe mode $state_mode"
    else
        fail watch-dirs "CACHE_DIRECTORY='$cache', /var/lib/geoprobe mode $state_mode"
    fi
    if [ -n "$(metric geoprobe_last_round_timestamp_seconds)" ] && [ "$(metric geoprobe_up)" = 1.0 ]; then
        pass watch-metrics "$METRICS: geoprobe_up 1, last round $(metric geoprobe_last_round_timestamp_seconds)"
    else
        fail watch-metrics "$METRICS: $(head -c 300 "$METRICS" 2>&1 | tr '\n' ' ')"
    fi
else
    fail watch-round "no round: $r, $(restarts) restarts"
    show "$WATCH"
fi
t1=$(up)
systemctl stop "$WATCH"
result=$(prop "$WATCH" Result)
if [ "$result" = success ] && ! systemctl is-failed -q "$WATCH"; then
    pass watch-stop "stopped in $(since "$t1") s, result $result, geoprobe_up $(metric geoprobe_up)"
else
    fail watch-stop "result $result"
    show "$WATCH"
fi

# --- the check, once, as the timer runs it ------------------------------------------------------
t1=$(up)
systemctl start "$CHECK"
result=$(prop "$CHECK" Result)
status=$(prop "$CHECK" ExecMainStatus)
line=$(journalctl -u "$CHECK" -o cat --no-pager | grep '^GEOPROBE' | tail -1)
figure check_s "$(since "$t1")"
case "$result:$status" in
success:0 | success:1 | success:2)
    if [ -n "$line" ]; then
        pass check-run "exit $status: $line"
    else
        fail check-run "exit $status, no status line in the journal"
        show "$CHECK"
    fi
    ;;
*)
    fail check-run "result $result, exit $status: $line"
    show "$CHECK"
    ;;
esac
systemctl enable geoprobe-check.timer 2>&1 | info
enabled=$(systemctl is-enabled geoprobe-check.timer)
if [ "$enabled" = enabled ]; then
    pass timer-enabled "geoprobe-check.timer $enabled (WantedBy=timers.target)"
else
    fail timer-enabled "geoprobe-check.timer: $enabled"
fi

# --- the watch with the report-only drop-in -----------------------------------------------------
mkdir -p "/etc/systemd/system/$WATCH.d"
cp /lab/contrib/systemd/geoprobe-watch-report-only.conf "/etc/systemd/system/$WATCH.d/report-only.conf"
systemctl daemon-reload
before=$(fixes)
t0=$(up)
epoch=$(date +%s)
systemctl restart "$WATCH"
sleep 2
pid=$(main_pid "$WATCH")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
if systemctl is-active -q "$WATCH" && [ -n "$uid" ] && [ "$uid" != 0 ]; then
    pass report-only-active "active as dynamic user uid $uid ($(prop "$WATCH" User))"
else
    fail report-only-active "$(systemctl is-active "$WATCH"), uid '$uid'"
fi
cache=$(env_of "$pid" CACHE_DIRECTORY)
scrape=1
if r=$(wait_round "$before" "$t0" "$epoch") && [ "$(restarts)" = 0 ]; then
    pass report-only-round "a round ($r s after the restart), no restart"
    figure report_only_first_round_s "${r##* }"
    owner=$(stat -c %u "$cache/anchors.json" 2>/dev/null)
    if [ "$cache" = /var/cache/geoprobe ] && [ "$owner" = "$uid" ]; then
        pass report-only-catalogue "CACHE_DIRECTORY=$cache -> $(readlink /var/cache/geoprobe), anchors.json handed to uid $owner"
    else
        fail report-only-catalogue "CACHE_DIRECTORY='$cache', anchors.json owner '$owner'"
        ls -la /var/cache /var/cache/private 2>&1 | info
    fi
    if [ "$(metric geoprobe_up)" = 1.0 ] && [ -n "$(metric geoprobe_last_round_timestamp_seconds)" ]; then
        pass report-only-metrics "$SCRAPE: geoprobe_up 1, last round $(metric geoprobe_last_round_timestamp_seconds)"
    else
        fail report-only-metrics "$SCRAPE: $(metrics_text | grep -v '^#' | head -c 300 | tr '\n' ' ')"
    fi
else
    fail report-only-round "no round: $r, $(restarts) restarts"
    show "$WATCH"
fi
systemctl stop "$WATCH"
# Both runs of the watch: nothing that failed on the way (a child process, a traceback).
errors=$(journalctl -u "$WATCH" --no-pager -o cat | grep -E 'Traceback|Error|error:')
if [ -z "$errors" ]; then
    pass watch-journal "no error in the watch's journal ($(journalctl -u "$WATCH" -o cat | wc -l) lines)"
else
    fail watch-journal "$(echo "$errors" | head -1)"
    echo "$errors" | head -20 | info
fi
journalctl -u "$WATCH" --no-pager -o cat | tail -n 40 | info

echo "LAB-UNITS DONE rc=$failed"
sync
systemctl poweroff --force --force
