"""Per-site support services, run inside a site's namespace on its loopback.

- a UDP clock: answers each datagram with the site's name and the host time, so a guest program can
  see which site it is in and the step in its clock offset at the switchover (the lab's ground-truth
  probe, independent of geoprobe);
- a webhook receiver: records each POST with the time it arrived, so the report can show which site
  a counter-measure reached and when.

Run as `python -m benchmarks.lab.siteserver --site A --udp 47000 --http 18080 --log FILE`.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve_clock(site: str, port: int, stop: threading.Event) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(2048)
        except TimeoutError:
            continue
        reply = {"site": site, "t": time.time(), "echo": data[:64].decode("ascii", "replace")}
        sock.sendto(json.dumps(reply).encode(), peer)


def make_webhook_handler(
    site: str, log: Path, lock: threading.Lock
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1 << 20)).decode("utf-8", "replace")
            rec = {"site": site, "received": time.time(), "path": self.path, "body": body}
            with lock, log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--site", required=True)
    ap.add_argument("--udp", type=int, default=47000)
    ap.add_argument("--http", type=int, default=18080)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after this")
    args = ap.parse_args(argv)
    stop = threading.Event()
    threading.Thread(target=serve_clock, args=(args.site, args.udp, stop), daemon=True).start()
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", args.http), make_webhook_handler(args.site, args.log, threading.Lock())
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"site {args.site}: udp clock :{args.udp}, webhook :{args.http}", flush=True)
    try:
        time.sleep(args.max_seconds)
    except KeyboardInterrupt:
        pass
    stop.set()
    httpd.shutdown()


if __name__ == "__main__":
    main()
