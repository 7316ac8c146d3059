#!/bin/sh
# The kernel matrix's scenario (`cargo xtask kernels`), run by busybox sh:
# as /init of a qemu guest (pid 1), and on the host with the same binaries.
# It only measures and prints "@mw KEY VALUE" lines (and the daemon's log as
# "@mwlog" lines); xtask judges them, so that every kernel is held to the
# same checks in one place.
#
# Environment: MW_BIN, the directory of memwatch, mw-matrix (the fixture)
# and mw-breakpoints (the same file under a name the daemon does not track);
# MW_TMP, a scratch directory; MW_PORT, the daemon's port.

if [ $$ -eq 1 ]; then
    /bin/busybox --install -s /bin
    export PATH=/bin MW_BIN=/bin MW_TMP=/tmp MW_PORT=9477
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mount -t tmpfs tmpfs /tmp
    # As on a Debian host, where systemd mounts it: memwatch reads the
    # preemption mode from /sys/kernel/debug/sched/preempt.
    mount -t debugfs debugfs /sys/kernel/debug
    ip link set lo up
    # Kernel messages would land inside the lines xtask parses.
    dmesg -n 1
    sh /init
    sync
    poweroff -f
fi

B=$MW_BIN
T=$MW_TMP
url=http://127.0.0.1:$MW_PORT
say() { printf '@mw %s\n' "$*"; }
# Not wget -T: Debian's static busybox 1.35 crashes with it.
get() { timeout 20 wget -q -O - "$url$1" 2>/dev/null; }
centiseconds() {
    read -r up _ </proc/uptime
    echo "${up%.*}${up#*.}"
}
# wait_for SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds.
wait_for() {
    limit=$(($(centiseconds) + $1 * 100))
    shift
    until "$@"; do
        [ "$(centiseconds)" -lt $limit ] || return 1
        sleep 0.1
    done
}
fixture_said() { grep -q "^$1" "$T/fixture.out" 2>/dev/null; }
said() { sed -n "s/^$1 //p" "$T/fixture.out" | head -n 1; }
scan_time() { get /metrics | sed -n 's/^memwatch_last_scan_timestamp_seconds //p'; }
scan_after() { [ "$(scan_time)" != "$1" ]; }
# Two scans completing after now: the second began after now.
fresh_scan() {
    for _ in 1 2; do
        t=$(scan_time)
        wait_for 30 scan_after "$t" || return 1
    done
}
tracked() { get "/leaks?pid=$1" >/dev/null; }
# kill -0 finds zombies too.
running() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:.Z' "/proc/$1/status" 2>/dev/null; }
old_image_gone() { ! get "/leaks?pid=$fx&limit=100" | grep -q '"leak_inner"'; }
# Ends the scenario early; xtask reports the checks that did not run.
abort() {
    say abort "$*"
    [ -n "${daemon-}" ] && kill -KILL "$daemon" 2>/dev/null
    [ -n "${fx-}" ] && kill -KILL "$fx" 2>/dev/null
    [ -n "${child-}" ] && kill -KILL "$child" 2>/dev/null
    sed 's/^/@mwlog /' "$T/daemon.log"
    exit 0
}

say kernel "$(uname -r)"
say version "$(uname -v)"
say sched_preempt "$(cat /sys/kernel/debug/sched/preempt 2>/dev/null || echo unreadable)"
say config_preempt "$({ zcat /proc/config.gz || cat "/boot/config-$(uname -r)"; } 2>/dev/null |
    grep -E -m 1 '^CONFIG_PREEMPT(_NONE|_VOLUNTARY|_LAZY)?=y')"

# Host-wide detection on, for its programs and metrics; never escalating,
# so that on the host nothing but the fixture gets probes.
cat >"$T/memwatch.toml" <<EOF
log = "info"
[collect]
interval_seconds = 0.2
[escalation]
enabled = false
EOF
rm -f "$T/fixture.out"
start=$(centiseconds)
NO_COLOR=1 "$B/memwatch" run --config "$T/memwatch.toml" --listen "127.0.0.1:$MW_PORT" \
    --exe 'mw-matrix*' >"$T/daemon.log" 2>&1 &
daemon=$!
healthy() {
    [ "$(get /healthz)" = ok ] && return
    running $daemon || { wait $daemon; abort "memwatch exited with status $?"; }
    return 1
}
wait_for 240 healthy || abort "no /healthz answer in 240 s"
say healthz_centiseconds $(($(centiseconds) - start))
get /metrics | sed -n 's/^memwatch_bpf_program_verified_instructions/@mw verified /p'
say counters "$(grep -m 1 'per-CPU counters' "$T/daemon.log")"

"$B/mw-matrix" >"$T/fixture.out" 2>&1 &
fx=$!
wait_for 30 fixture_said "ready 1" || abort "the fixture did not start"
wait_for 60 tracked $fx || abort "the fixture was not tracked within 60 s"
kill -USR1 $fx
wait_for 60 fixture_said "child-ready" || abort "the fixture did not fork"
child=$(said child-ready)
wait_for 60 tracked "$child" || abort "the fixture's child was not tracked within 60 s"
kill -USR1 "$child"
wait_for 60 fixture_said "child {" || abort "the fixture's child did not finish"
fresh_scan || abort "no fresh scan"
say child "$(said child)"
say leaks_child "$(get "/leaks?pid=$child&limit=20" | tr -d '\n')"
kill -USR1 "$child"
wait_for 60 fixture_said "counts 1" || abort "the fixture's first image did not finish"
fresh_scan || abort "no fresh scan"
say counts1 "$(said 'counts 1')"
say leaks1 "$(get "/leaks?pid=$fx&limit=20" | tr -d '\n')"

kill -USR1 $fx
wait_for 30 fixture_said "ready 2" || abort "the fixture did not exec"
wait_for 60 old_image_gone || say note "the first image's stacks were still listed 60 s after exec"
kill -USR1 $fx
wait_for 60 fixture_said "counts 2" || abort "the fixture's second image did not finish"
fresh_scan || abort "no fresh scan"
say counts2 "$(said 'counts 2')"
say leaks2 "$(get "/leaks?pid=$fx&limit=20" | tr -d '\n')"
get /metrics | grep -E '^memwatch_(allocations|frees)_total' | sed 's/^/@mw total /'
say breakpoints_attached "$("$B/mw-breakpoints" breakpoints $fx)"

# Signalled, then polled: busybox's wait cannot time out.
stopped() { ! running $daemon; }
kill -INT $daemon
wait_for 60 stopped || { say note "memwatch still running 60 s after SIGINT: killed"; kill -KILL $daemon; }
wait $daemon
say daemon_exit $?
say detached "$(grep -m 1 'detached all probes' "$T/daemon.log")"
say breakpoints_after "$("$B/mw-breakpoints" breakpoints $fx)"
kill -USR1 $fx
wait $fx
say fixture_exit $?
say fixture_done "$(grep -c '^done' "$T/fixture.out")"
sed 's/^/@mwlog /' "$T/daemon.log"
say end
