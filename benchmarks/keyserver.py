"""Key release: throughput on one core, the latency the server adds, and refusals under jitter.

    python -m benchmarks.keyserver [--releases 3000] [--latency 500] [--jitter 1000]

Prints:
- releases per second of server CPU (the server process pinned to one core, loaded by two client
  processes), against the target of at least 1,000;
- the latency the server adds to the round trip it measures: the server's RTT minus the client's
  own time from its kernel receiving the challenge to sending the answer (an upper bound: it also
  holds both loopback paths), against the target of at most 1 ms;
- N attempts through a delaying relay at 6 ms (with jitter) against a 5 ms bound: releases must
  be zero. As root the client, the relay and the server each run in their own network namespace;
  otherwise all three share loopback.

The harness (processes, namespaces) is also what tests/keyrelease uses.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

PY = sys.executable


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Topology:
    """client ns <-veth-> relay ns <-veth-> server ns: the relay is the only path between them."""

    tag: str
    cli: str
    rly: str
    srv: str
    relay_addr: str = "10.213.1.1"  # the relay, as the client sees it
    client_addr: str = "10.213.1.2"
    relay_up_addr: str = "10.213.2.1"
    server_addr: str = "10.213.2.2"

    @classmethod
    def named(cls, tag: str) -> Topology:
        return cls(tag, f"gpk-{tag}-cli", f"gpk-{tag}-rly", f"gpk-{tag}-srv")

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root for network namespaces"
        if shutil.which("ip") is None:
            return "needs iproute2 (ip)"
        return None

    def wrap(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def create(self) -> Topology:
        self.delete()
        for ns in (self.cli, self.rly, self.srv):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        short = self.tag[-8:]
        pairs = [
            (f"kc{short}", self.cli, self.client_addr, f"kr{short}", self.relay_addr),
            (f"ks{short}", self.srv, self.server_addr, f"ku{short}", self.relay_up_addr),
        ]
        for end, ns, addr, rend, raddr in pairs:
            _ip(
                "link",
                "add",
                end,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                rend,
                "netns",
                self.rly,
            )
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", end)
            _ip("-n", ns, "link", "set", end, "up")
            _ip("-n", self.rly, "addr", "add", f"{raddr}/30", "dev", rend)
            _ip("-n", self.rly, "link", "set", rend, "up")
        return self

    def delete(self) -> None:
        for ns in (self.cli, self.rly, self.srv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    @contextmanager
    def up(self) -> Iterator[Topology]:
        self.create()
        try:
            yield self
        finally:
            self.delete()


class Started:
    """A child process that announced its address on its first line (stdout or stderr)."""

    def __init__(self, argv: Sequence[str], pattern: str, *, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.address = self._await(re.compile(pattern), timeout)

    def _await(self, pattern: re.Pattern[str], timeout: float) -> str:
        sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        try:
            while time.monotonic() < deadline:
                for key, _ in sel.select(0.2):
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if line:
                        seen.append(line.strip())
                        if m := pattern.search(line):
                            return m.group(1)
                if self.proc.poll() is not None:
                    break
        finally:
            sel.close()
        self.stop()
        raise RuntimeError(f"{self.proc.args} did not start: {' | '.join(seen)[-500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    config: Path, *, port: int | None = None, wrap: Sequence[str] = (), cpu: int | None = None
) -> Started:
    argv = [*wrap]
    if cpu is not None and shutil.which("taskset"):
        argv += ["taskset", "-c", str(cpu)]
    argv += [PY, "-m", "geoprobe", "keyserver", "serve", "--config", str(config)]
    if port is not None:
        argv += ["--port", str(port)]
    return Started(argv, r"listening on udp (\S+)")


def start_relay(
    listen: str, upstream: str, rtt_ms: float, jitter_ms: float = 0.0, *, wrap: Sequence[str] = ()
) -> Started:
    argv = [*wrap, PY, "-m", "geoprobe.keyrelease.relay", listen, upstream]
    argv += ["--rtt-ms", str(rtt_ms), "--jitter-ms", str(jitter_ms), "--seconds", "900"]
    return Started(argv, r"^ready (\S+)")


# --- the benchmark -----------------------------------------------------------------------


def _world(root: Path, bound: str, listen: str) -> tuple[Any, Path, str]:
    """A server config that logs to release.jsonl, and the world to write client configs from."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.keyrelease.world import add_server, make_world

    w = make_world(root)
    spec = add_server(
        w, "ks-bench", os.urandom(32), bound=bound, listen=listen, extra='log = "release.jsonl"\n'
    )
    return w, spec.config_path, spec.server_id


def _client_config(world: Any, addr: str, timeout_ms: int = 500) -> Path:
    path: Path = world.client_config({"ks-bench": addr}, timeout_ms=timeout_ms, attempts=1)
    return path


def _load_loop(cfg_path: str, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from geoprobe.keyrelease import client, config

    cfg = config.load_client(cfg_path)
    me = client.Identity.load(cfg)
    ref = next(iter(cfg.servers.values()))
    n = fails = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            client.fetch(ref, me, "vault", timeout_s=0.5, attempts=1)
            n += 1
        except client.ReleaseError:
            fails += 1
    out.put((n, fails))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pid(started: Started) -> int:
    """The python server under taskset/ip netns exec (they exec, so the pid is the same)."""
    return started.proc.pid


def bench_throughput(seconds: float, clients: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root, cfg, _ = _world(Path(tmp), "bound_ms = 50.0", "127.0.0.1:0")
        with start_server(cfg, cpu=0) as srv:
            ccfg = _client_config(root, srv.address)
            pid = _server_pid(srv)
            cpu0 = _cpu_seconds(pid)
            q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            procs = [
                multiprocessing.Process(target=_load_loop, args=(str(ccfg), seconds, q))
                for _ in range(clients)
            ]
            t0 = time.monotonic()
            for p in procs:
                p.start()
            results = [q.get(timeout=seconds + 60) for _ in procs]
            for p in procs:
                p.join(30)
            wall = time.monotonic() - t0
            cpu = _cpu_seconds(pid) - cpu0
        released = sum(r[0] for r in results)
        failed = sum(r[1] for r in results)
    return {
        "released": released,
        "failed": failed,
        "wall_s": wall,
        "server_cpu_s": cpu,
        "per_wall_s": released / wall,
        "per_cpu_s": released / cpu if cpu > 0 else float("nan"),
    }


def bench_latency(count: int) -> dict[str, float]:
    """Server-measured RTT minus the client's own answer time, per release, on loopback.

    The server is not pinned here: pinning it to a core that other work also uses only adds
    that work's time slices to the figure."""
    from geoprobe.keyrelease import client, config, seal, server, wire

    with tempfile.TemporaryDirectory() as tmp:
        root, cfg, sid = _world(Path(tmp), "bound_ms = 50.0", "127.0.0.1:0")
        with start_server(cfg) as srv:
            ccfg = config.load_client(_client_config(root, srv.address))
            me = client.Identity.load(ccfg)
            ref = ccfg.servers[sid]
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            pub = Ed25519PublicKey.from_public_bytes(ref.pubkey)
            host, port = ref.host, ref.port
            added: list[float] = []
            rtts: list[float] = []
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((host, port))
            sock.settimeout(1.0)
            sock.setsockopt(socket.SOL_SOCKET, server.SO_TIMESTAMPNS, 1)
            space = socket.CMSG_SPACE(16)
            for _ in range(count):
                rid = os.urandom(wire.REF_LEN)
                sock.send(wire.build_request(rid, me.client_id, "vault"))
                data, anc, _, _ = sock.recvmsg(wire.MAX_DATAGRAM, space)
                # the client's own time starts when its kernel had the challenge: waiting for a
                # core on the client's side is the client's time, not the server's
                ta = time.time_ns() - server.kernel_age(anc, time.time_ns())
                chal = wire.parse_challenge(data)
                signed = wire.answer_signed_bytes(chal.challenge, "vault", sid, me.client_id)
                msg = wire.build_answer(chal.challenge, me.sign_key.sign(signed))
                tb = time.time_ns()
                sock.send(msg)
                rel = wire.parse_release(sock.recv(wire.MAX_DATAGRAM))
                seal.verify_server(pub, rel.signature, rel.signed)
                rtts.append(rel.rtt_ns / 1e6)
                added.append((rel.rtt_ns - (tb - ta)) / 1e6)
            sock.close()
    added.sort()
    return {
        "count": count,
        "rtt_median_ms": statistics.median(rtts),
        "added_median_ms": statistics.median(added),
        "added_p99_ms": added[int(0.99 * (len(added) - 1))],
        "added_max_ms": added[-1],
    }


def bench_jitter(
    attempts: int, rtt_ms: float, jitter_ms: float, bound_ms: float
) -> dict[str, object]:
    why_not = Topology.available()
    with tempfile.TemporaryDirectory() as tmp:
        if why_not is None:
            topo = Topology.named(f"b{os.getpid()}")
            ctx = topo.up()
        else:
            topo = None
            ctx = _null()
        with ctx:
            listen = f"{topo.server_addr}:7208" if topo else "127.0.0.1:0"
            root, cfg, _ = _world(Path(tmp), f"bound_ms = {bound_ms}", listen)
            srv_wrap = topo.wrap(topo.srv, []) if topo else []
            with start_server(cfg, wrap=srv_wrap) as srv:
                rly_listen = f"{topo.relay_addr}:7208" if topo else "127.0.0.1:0"
                rly_wrap = topo.wrap(topo.rly, []) if topo else []
                with start_relay(rly_listen, srv.address, rtt_ms, jitter_ms, wrap=rly_wrap) as rly:
                    ccfg = _client_config(root, rly.address, timeout_ms=1000)
                    argv = [
                        PY,
                        "-m",
                        "benchmarks.keyserver",
                        "--attempt-loop",
                        str(ccfg),
                        str(attempts),
                    ]
                    cwd = Path(__file__).resolve().parents[1]
                    out = subprocess.run(
                        topo.wrap(topo.cli, argv) if topo else argv,
                        capture_output=True,
                        text=True,
                        timeout=attempts * 2 + 60,
                        check=False,
                        cwd=cwd,
                    )
                    if out.returncode != 0:
                        raise RuntimeError(out.stderr.strip()[-500:])
                    result = json.loads(out.stdout)
            records = [
                json.loads(x)
                for x in (root.root / "ks-bench" / "release.jsonl").read_text().splitlines()
            ]
    rtts = [float(r["rtt_ms"]) for r in records if "rtt_ms" in r]
    result.update(
        where="separate network namespaces" if topo else f"loopback ({why_not})",
        server_releases=sum(1 for r in records if r["event"] == "release"),
        server_refusals=sum(1 for r in records if r["event"] == "refuse"),
        min_rtt_ms=round(min(rtts), 3) if rtts else None,
        median_rtt_ms=round(statistics.median(rtts), 3) if rtts else None,
    )
    return result


@contextmanager
def _null() -> Iterator[None]:
    yield None


def attempt_loop(cfg_path: str, attempts: int) -> None:
    """Inside the client namespace: ask ``attempts`` times, print released/refused/silent counts."""
    from geoprobe.keyrelease import client, config

    cfg = config.load_client(cfg_path)
    me = client.Identity.load(cfg)
    ref = next(iter(cfg.servers.values()))
    counts = {"released": 0, "refused": 0, "silent": 0}
    for _ in range(attempts):
        try:
            client.fetch(ref, me, "vault", timeout_s=cfg.timeout_ms / 1000, attempts=1)
            counts["released"] += 1
        except client.Refused:
            counts["refused"] += 1
        except client.ReleaseError:
            counts["silent"] += 1
    print(json.dumps(counts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--latency", type=int, default=1000, help="releases timed for added latency")
    ap.add_argument("--jitter", type=int, default=1000, help="attempts at 6 ms against 5 ms")
    ap.add_argument("--attempt-loop", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attempt_loop:
        attempt_loop(args.attempt_loop[0], int(args.attempt_loop[1]))
        return 0

    print(f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    t = bench_throughput(args.seconds, args.clients)
    ok = t["per_cpu_s"] >= 1000
    print(
        f"throughput: {t['released']:.0f} releases in {t['wall_s']:.1f} s with {args.clients}"
        f" client processes ({t['failed']:.0f} failed): {t['per_wall_s']:.0f}/s wall,"
        f" {t['per_cpu_s']:.0f} per second of server CPU on one core"
        f" (target >= 1000: {'met' if ok else 'MISSED'})"
    )
    lat = bench_latency(args.latency)
    ok = lat["added_p99_ms"] <= 1.0
    print(
        f"added latency over {lat['count']} releases: median {lat['added_median_ms']:.3f} ms,"
        f" p99 {lat['added_p99_ms']:.3f} ms, max {lat['added_max_ms']:.3f} ms"
        f" (server RTT median {lat['rtt_median_ms']:.3f} ms; target p99 <= 1 ms:"
        f" {'met' if ok else 'MISSED'})"
    )
    j = bench_jitter(args.jitter, rtt_ms=6.0, jitter_ms=2.0, bound_ms=5.0)
    ok = j["released"] == 0 and j["server_releases"] == 0
    print(
        f"jitter: {args.jitter} attempts at 6 ms (+0-2 ms jitter) against a 5 ms bound, "
        f"{j['where']}:"
        f" {j['released']} released, {j['refused']} refused, {j['silent']} unanswered;"
        f" server log {j['server_releases']} releases, {j['server_refusals']} refusals;"
        f" measured RTT min {j['min_rtt_ms']} ms, median {j['median_rtt_ms']} ms"
        f" (target: zero releases: {'met' if ok else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
