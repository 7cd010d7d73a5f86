"""What a hostile IP geolocation database costs ``geoprobe locate --mmdb``: time and memory.

Each file (the hand-made ones of tests/mmdb_files.py, a few hundred bytes each) is looked up in a
fresh process, so the peak resident set is that lookup's own, by maxminddb's C extension (``ext``)
and by its pure-Python reader (``pure``, what runs where the extension is not installed).
Target: every one is a one-line error within a second and well under 100 MiB.

    python benchmarks/ipgeo_hostile.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import mmdb_files  # the test suite's file builders

FILES = {
    "valid (control)": lambda: mmdb_files.database(mmdb_files.city("SE", 59.33, 18.07)),
    "pointer loop": mmdb_files.pointer_loop,
    "nesting 2000 deep": mmdb_files.nested,
    "string past the end": mmdb_files.oversized_string,
    "pointer amplification 16^7": mmdb_files.amplification,
    "pointer amplification 64^5": lambda: mmdb_files.amplification(levels=5, fanout=64),
}

CHILD = """
import json, resource, sys, time
import maxminddb
from geoprobe import ipgeo
if sys.argv[2] == "pure":
    ipgeo.READER_MODE = maxminddb.MODE_FILE
t = time.perf_counter()
try:
    out = repr(ipgeo.lookup(sys.argv[1], "200.1.2.3"))
except ipgeo.IPGeoError as exc:
    out = str(exc)
print(json.dumps({"s": time.perf_counter() - t, "out": out,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    worst_s, worst_mib = 0.0, 0.0
    with tempfile.TemporaryDirectory() as d:
        for name, build in FILES.items():
            path = Path(d) / "db.mmdb"
            data = build()
            path.write_bytes(data)
            for reader in ("ext", "pure"):
                res = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), reader],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                )
                r = json.loads(res.stdout)
                print(
                    f"{name:28s} {reader:4s} {len(data):5d} B {r['s'] * 1000:7.1f} ms "
                    f"peak RSS {r['rss_mib']:5.1f} MiB  {r['out'][-60:]}"
                )
                worst_s, worst_mib = max(worst_s, r["s"]), max(worst_mib, r["rss_mib"])
    ok = worst_s < 1.0 and worst_mib < 100
    print(f"worst: {worst_s * 1000:.1f} ms, {worst_mib:.1f} MiB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
