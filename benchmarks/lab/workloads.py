"""Busy-guest workloads and the guest's /proc/vmstat log, as shell run in the background at boot.

Busy controls ask whether the pre-copy detector mistakes a guest's own load for a migration: a CPU
hog slows every round the way dirty tracking does, a memory writer dirties pages like the hold, disk
reads stall the vCPU in I/O. Everything uses what the guest image has (dash, coreutils, python3).
The memory writer stays at about 50 MB/s so a migration still converges at the lab's 128 MiB/s.
"""

from __future__ import annotations

# Python in the guest keeps the writer to one process (a shell loop would fork per page under TCG).
_MEM = (
    "import os, time\n"
    "buf = bytearray(os.urandom(1 << 20) * 24)\n"
    "while True:\n"
    "    t = time.monotonic()\n"
    "    for i in range(0, len(buf), 4096):\n"
    "        buf[i] = (buf[i] + 1) & 255\n"
    "    time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))\n"
)

WORKLOADS: dict[str, str] = {
    # a niced-0 busy loop competing with geoprobe for the one vCPU
    "cpu": "while :; do :; done",
    # 24 MiB rewritten (one byte per page) twice a second: ~50 MB/s of dirty pages
    "mem": f"python3 -c '{_MEM}'",
    # O_DIRECT reads of the root disk, so every block goes through virtio-blk and the host
    "disk": (
        "while :; do dd if=/dev/vda of=/dev/null bs=256k count=400 iflag=direct 2>/dev/null; done"
    ),
}
# Seconds after boot before a workload starts: geoprobe's start-up under TCG (imports, the first
# fix: 20-35 s) is not what the busy runs measure, and a hog from boot slowed it to 90 s.
WORKLOAD_DELAY_S = 25

# Host-side kinds: the guest is idle, the host is not.
HOST_WORKLOADS = ("host",)

# One line a second on the console: uptime and the counters a suspicion's cause would move. Only
# shell builtins in the loop (one `sleep` fork a second), so the log itself barely loads the guest.
VMSTAT_KEYS = (
    "pgfault",
    "pgmajfault",
    "nr_dirtied",
    "nr_written",
    "pgpgin",
    "pgpgout",
    "pswpin",
    "pswpout",
    "nr_free_pages",
)
VMSTAT_LOG = (
    "(while :; do read up _ < /proc/uptime; s=''; "
    "while read k v; do case $k in "
    + "|".join(VMSTAT_KEYS)
    + ') s="$s $k=$v";; esac; done < /proc/vmstat; '
    'echo "LAB-VMSTAT $up$s"; sleep 1; done) &'
)


def guest_background(workload: str, vmstat: bool = True) -> str:
    """Shell lines for run.sh that start the workload (if any) and the vmstat log."""
    parts = []
    if vmstat:
        parts.append(VMSTAT_LOG)
    if workload and workload not in HOST_WORKLOADS:
        try:
            cmd = WORKLOADS[workload]
        except KeyError:
            known = ", ".join([*WORKLOADS, *HOST_WORKLOADS])
            raise ValueError(f"unknown workload {workload!r}: one of {known}") from None
        parts.append(f"(sleep {WORKLOAD_DELAY_S}; echo LAB-WORKLOAD-START {workload}; {cmd}) &")
    return "\n".join(parts)


def parse_vmstat(text: str) -> dict[str, int] | None:
    """The counters of one `LAB-VMSTAT uptime k=v ...` line (uptime under the key "uptime_cs")."""
    if not text.startswith("LAB-VMSTAT "):
        return None
    fields = text.split()[1:]
    if not fields:
        return None
    whole, _, frac = fields[0].partition(".")
    if not (whole.isdecimal() and (frac == "" or frac.isdecimal())):
        return None  # /proc/uptime is "seconds.centiseconds"
    out: dict[str, int] = {"uptime_cs": int(whole) * 100 + int((frac + "00")[:2])}
    for f in fields[1:]:
        k, sep, v = f.partition("=")
        if sep and v.isdecimal():
            out[k] = int(v)
    return out
