"""The hold: how fast ``delay`` dirties memory, whether it stays within its RSS cap, and whether
what it writes survives the migration stream's compression.

For each page content (``random``, ``byte``) a fresh process runs a ``Dirtier`` under the cap for
``--seconds`` and then measures a sample of the pages it wrote:

* compression ratio (original / compressed, ~1.0 = incompressible) of the pages as one stream, as
  multifd sends them: zlib level 1 and 6, zstd level 1, 3 and 19;
* XBZRLE: the share of pages its encoder must send whole, and the mean bytes it sends per page,
  against the copy of the same page before the run;
* pages/s, distinct MiB dirtied per second, CPU seconds, and peak RSS against the cap.

A third row, ``zeros+byte``, is the old behaviour for comparison (a zero-filled buffer with one
byte changed per page).

    python -m benchmarks.delay_hold --seconds 10 --memory 128M
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

CHILD = """
import json, sys, zlib
import numpy as np
import zstandard
from geoprobe.defend.delay import PAGE, Dirtier, xbzrle_size
cap, content = int(sys.argv[1]), sys.argv[2]
seconds, cpu, sample = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
zeros = content == "zeros+byte"
# The snapshot of the sampled pages is held beside the buffer: the dirtier gets the cap minus it,
# so that the process as a whole stays under the cap.
d = Dirtier(cap - sample * PAGE, content="byte" if zeros else content)
if zeros:
    d.buffer[:] = 0  # the old behaviour: zero pages, one byte changed per page
n = min(sample, d.pages)
idx = np.linspace(0, d.pages - 1, n).astype(int)
before = [d.buffer[i * PAGE:(i + 1) * PAGE].tobytes() for i in idx]
s = d.run(cpu=cpu, duration=seconds).to_json()
after = [d.buffer[i * PAGE:(i + 1) * PAGE].tobytes() for i in idx]
stream = b"".join(after)
ratios = {f"zlib{l}": len(stream) / len(zlib.compress(stream, l)) for l in (1, 6)}
for l in (1, 3, 19):
    ratios[f"zstd{l}"] = len(stream) / len(zstandard.ZstdCompressor(level=l).compress(stream))
sizes = [xbzrle_size(b, a) for b, a in zip(before, after)]
whole = sum(x is None for x in sizes)
sent = [PAGE if x is None else x for x in sizes]
out = {**s, "memory_cap": cap, "content": content, "ratios": ratios, "sampled_pages": n}
out.update(xbzrle_whole_share=whole / n, xbzrle_mean_bytes=sum(sent) / n)
print(json.dumps(out))
"""


def run(content: str, memory: int, seconds: float, cpu: float, sample: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(memory), content, str(seconds), str(cpu), str(sample)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--memory", default="128M", help="RSS cap (K/M/G suffix)")
    ap.add_argument("--cpu", type=float, default=0.5)
    ap.add_argument("--sample", type=int, default=1024, help="pages measured for compression")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from geoprobe.policy import parse_size

    memory = parse_size(args.memory)
    rows = [
        run(c, memory, args.seconds, args.cpu, args.sample)
        for c in ("random", "byte", "zeros+byte")
    ]
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        ratios = "  ".join(f"{k} {v:.3f}" for k, v in r["ratios"].items())
        print(
            f"{r['content']:10s} {r['pages_per_s']:12,.0f} pages/s  "
            f"{r['dirty_mib_per_s']:8.1f} MiB/s dirty  passes {r['passes']}  "
            f"cpu {r['cpu_s']:.1f} s of {r['elapsed_s']:.1f} s  "
            f"peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MiB "
            f"of cap {r['memory_cap'] / 2**20:.0f} MiB"
        )
        print(
            f"{'':10s} compression ratio: {ratios}  "
            f"XBZRLE: {100 * r['xbzrle_whole_share']:.0f} % sent whole, "
            f"{r['xbzrle_mean_bytes']:.0f} B/page"
        )


if __name__ == "__main__":
    main()
