"""The owner's policy: which jurisdictions are allowed and what to do when the VM leaves them.

A policy is a TOML file. It is validated in full when loaded, so a typo in the last action is
reported (one line naming the file, the entry and the field) before the first action could run::

    [jurisdiction]
    allow = ["DE", "EU"]          # ISO codes and groups, expanded by geoprobe.geo.groups

    [confidence]
    min_probability = 0.9          # a crossing below this is handled as `unknown`
    min_landmarks = 3

    [[on.confirmed_crossing]]
    action = "wipe"
    paths = ["/etc/secret.key"]
    timeout = 30                   # seconds, per action

Verdicts are ``suspected``, ``confirmed_crossing``, ``unknown`` and ``cleared`` (a suspicion
ended without a crossing: what ``suspected`` took reversibly is given back); each has a list of
actions. The actions and their fields are declared in ``ACTION_FIELDS``. They run by ``order``
(``delay`` 0, every other action 1 unless it says otherwise), ties in the order written: the hold
that buys time starts first, then the rest as the owner ranked them (``Policy.run_order``).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoprobe.errors import InputError

VERDICTS = ("suspected", "confirmed_crossing", "unknown", "cleared")
DEFAULT_MIN_PROBABILITY = 0.9
DEFAULT_MIN_LANDMARKS = 3
MAX_TIMEOUT_S = 3600.0
MAX_COUNT = 100  # wipe passes, webhook retries: more is a typo or an attack, not a policy
MAX_RATE = 1e9  # pages per second
MAX_SIZE = 1 << 44  # 16 TiB: no guest has more memory to dirty
MAX_ORDER = 100
MAX_POLICY_BYTES = 1 << 20  # a policy is a page of text; a larger file is refused before parsing

# Seconds each action may take unless the policy says otherwise: local, fast measures get
# little, network ones a little more (retries), the delay the time it is meant to buy.
DEFAULT_TIMEOUTS = {
    "hook": 30.0,
    "wipe": 60.0,
    "unmount": 30.0,
    "stop_units": 60.0,
    "start_units": 60.0,
    "signal_units": 10.0,  # a signal is delivered at once; the app drops its keys on its own
    "webhook": 15.0,
    "syslog": 5.0,
    "poweroff": 30.0,
    "delay": 10.0,  # time to *start* it; its own `duration` caps how long it runs
    "luks_suspend": 30.0,
    "luks_resume": 30.0,  # key release (retries included), then luksResume
}

_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SYSLOG_PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SYSLOG_FACILITIES = (
    "kern",
    "user",
    "daemon",
    "auth",
    "authpriv",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
)


class _FieldError(ValueError):
    """Raised by a field checker; the loader adds file, entry and field to it."""


@dataclass(frozen=True)
class ActionSpec:
    """One validated action of a verdict's list. ``options`` holds its checked fields."""

    action: str
    verdict: str
    index: int
    timeout: float
    options: Mapping[str, Any] = field(default_factory=dict)
    # Run order within the verdict (ascending, ties in file order): see ``default_order``.
    order: int = 1

    @property
    def where(self) -> str:
        return f"on.{self.verdict}[{self.index}]"

    def public_options(self) -> dict[str, Any]:
        """Options fit to print: header values (tokens) are redacted."""
        opts = dict(self.options)
        if "headers" in opts:
            opts["headers"] = {k: "***" for k in opts["headers"]}
        return opts

    def describe(self) -> str:
        """One line for summaries and --dry-run."""
        opts = ", ".join(f"{k}={v!r}" for k, v in self.public_options().items())
        return f"{self.action}({opts}) timeout={self.timeout:g}s order={self.order}"


def default_order(action: str) -> int:
    """The hold starts first: it returns as soon as its buffer is faulted in, and every second
    it keeps the migration in pre-copy is a second for the measures after it."""
    return 0 if action == "delay" else 1


def run_order(specs: Iterable[ActionSpec]) -> list[ActionSpec]:
    """The order a verdict's actions run in: ascending ``order``, then as written."""
    return sorted(specs, key=lambda s: (s.order, s.index))


@dataclass
class Policy:
    allow: set[str]
    allow_as_written: tuple[str, ...]
    min_probability: float = DEFAULT_MIN_PROBABILITY
    min_landmarks: int = DEFAULT_MIN_LANDMARKS
    actions: dict[str, list[ActionSpec]] = field(default_factory=lambda: {v: [] for v in VERDICTS})
    path: Path | None = None

    def actions_for(self, verdict: str) -> list[ActionSpec]:
        """The verdict's actions in the order they run (``run_order``)."""
        return run_order(self.actions.get(verdict, []))

    def summary(self) -> dict[str, Any]:
        """Machine-readable summary (``geoprobe policy check --json``)."""
        return {
            "file": str(self.path) if self.path else None,
            "allow": sorted(self.allow),
            "allow_as_written": list(self.allow_as_written),
            "min_probability": self.min_probability,
            "min_landmarks": self.min_landmarks,
            "actions": {
                v: [
                    {
                        "action": a.action,
                        "index": a.index,
                        "order": a.order,
                        "timeout": a.timeout,
                        **a.public_options(),
                    }
                    for a in run_order(specs)
                ]
                for v, specs in self.actions.items()
            },
            "warnings": self.warnings(),
        }

    def warnings(self) -> list[str]:
        """What is valid but probably not meant: a reversible measure taken on suspicion that
        nothing gives back, or one that cannot be given back at all."""
        from geoprobe.defend.reversible import policy_warnings

        return policy_warnings(self)


# --- field checkers ------------------------------------------------------------------------


def _str_list(value: Any, *, nonempty: bool = True) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _FieldError("must be a list of strings")
    if nonempty and not value:
        raise _FieldError("must not be empty")
    return list(value)


def _abs_paths(value: Any) -> list[str]:
    from geoprobe.defend.safepath import checked_path  # the rule the actions apply again

    try:
        return [checked_path(p) for p in _str_list(value)]
    except ValueError as exc:
        raise _FieldError(str(exc)) from None


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise _FieldError("must be an http:// or https:// URL")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _FieldError(f"must be an integer from 0 to {MAX_COUNT}")
    return value


def _finite(value: Any) -> bool:
    """A TOML number that is a real, finite one (TOML integers may be arbitrarily long)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _FieldError("must be true or false")
    return value


def _seconds(value: Any) -> float:
    if not _finite(value):
        raise _FieldError("must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise _FieldError(f"must be > 0 and <= {MAX_TIMEOUT_S:g} seconds")
    return float(value)


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise _FieldError("must be a number in (0, 1]")
    return float(value)


def _rate(value: Any) -> float:
    if not _finite(value) or not 0 < value <= MAX_RATE:
        raise _FieldError(f"must be a number of pages per second in (0, {MAX_RATE:g}]")
    return float(value)


def parse_size(value: Any) -> int:
    """Bytes from ``256M``, ``1GiB``, ``512MB`` or an integer: binary units, as free(1) shows."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and len(value) <= 64 and (m := _SIZE_RE.match(value)):
        x = float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
        n = int(x) if math.isfinite(x) and x <= MAX_SIZE else MAX_SIZE + 1
    else:
        raise _FieldError("must be a size such as 256M, 1G or a number of bytes")
    if not 0 < n <= MAX_SIZE:
        raise _FieldError(f"must be a positive size of at most {MAX_SIZE >> 40} TiB")
    return n


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _FieldError("must be a table of string values")
    return dict(value)


def _units(value: Any) -> list[str]:
    units = _str_list(value)
    for u in units:
        if not _UNIT_RE.match(u) or u.startswith("-"):
            raise _FieldError(f"{u!r} is not a systemd unit name")
    return units


def _luks(value: Any) -> list[str]:
    names = _str_list(value)
    for n in names:
        if "/" in n or n.startswith("-"):
            raise _FieldError(f"{n!r} is not a device-mapper name")
    return names


def _abs_path(value: Any) -> str:
    if not isinstance(value, str):
        raise _FieldError("must be an absolute path")
    return _abs_paths([value])[0]


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise _FieldError(f"must be one of {', '.join(options)}")
        return str(value)

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _FieldError("must be a string")
    return value


# Signals an application can take as "drop your keys" (or "load them again") and survive: the
# ones that end a process are refused, since stopping is what stop_units is for.
SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH")
_RT_SIGNAL = re.compile(r"^SIGRTMIN\+([0-9]{1,2})$")


def _signal(value: Any) -> str:
    """``USR1``, ``SIGUSR1`` or ``SIGRTMIN+N``, normalised to the SIG name systemctl takes."""
    if not isinstance(value, str):
        raise _FieldError("must be a signal name such as SIGUSR1")
    name = value.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    m = _RT_SIGNAL.match(name)
    if name in SIGNALS or (m and 0 <= int(m.group(1)) <= 15):
        return name
    raise _FieldError(
        f"{_show(value)} is not a signal an application survives "
        f"(one of {', '.join(SIGNALS)}, SIGRTMIN+0..15; to stop units use stop_units)"
    )


def _order(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ORDER:
        raise _FieldError(f"must be an integer from 0 to {MAX_ORDER}")
    return value


Checker = Callable[[Any], Any]

# action -> field -> (checker, required). `action` and `timeout` are common to all.
ACTION_FIELDS: dict[str, dict[str, tuple[Checker, bool]]] = {
    "hook": {"command": (_str_list, True), "env": (_headers, False)},
    "wipe": {
        "paths": (_abs_paths, True),
        "passes": (_positive_int, False),
        "recursive": (_bool, False),
    },
    "unmount": {"paths": (_abs_paths, False), "luks": (_luks, False), "lazy": (_bool, False)},
    "stop_units": {"units": (_units, True)},
    "start_units": {"units": (_units, True)},
    "signal_units": {
        "units": (_units, True),
        "signal": (_signal, True),
        "whom": (_choice(("main", "all")), False),
    },
    "webhook": {
        "url": (_url, True),
        "retries": (_positive_int, False),
        "headers": (_headers, False),
        "backoff": (_seconds, False),
    },
    "syslog": {
        "priority": (_choice(_SYSLOG_PRIORITIES), False),
        "facility": (_choice(_SYSLOG_FACILITIES), False),
        "address": (_text, False),
        "message": (_text, False),
    },
    "poweroff": {"force": (_bool, False)},
    "delay": {
        "memory": (parse_size, False),
        "cpu": (_fraction, False),
        "duration": (_seconds, False),
        "rate": (_rate, False),
        "content": (_choice(("random", "byte")), False),
    },
    # defend/luks.py: suspend takes the volume key out of the kernel; resume needs the key servers
    "luks_suspend": {"luks": (_luks, True), "header": (_abs_path, False)},
    "luks_resume": {
        "luks": (_luks, True),
        "secret": (_text, True),
        "config": (_abs_path, False),
        "header": (_abs_path, False),
    },
}


def _parse_action(
    raw: Any, verdict: str, index: int, default_timeout: float | None, file: str
) -> ActionSpec:
    entry = f"on.{verdict}[{index}]"
    if not isinstance(raw, dict):
        raise InputError(
            "must be a table ([[on.VERDICT]] with action = ...)", file=file, entry=entry
        )
    name = raw.get("action")
    if name is None:
        raise InputError("missing", file=file, entry=entry, field="action")
    if not isinstance(name, str):
        raise InputError(
            f"must be the name of an action (known: {', '.join(ACTION_FIELDS)})",
            file=file,
            entry=entry,
            field="action",
        )
    if name not in ACTION_FIELDS:
        raise InputError(
            f"unknown action {_show(name)} (known: {', '.join(ACTION_FIELDS)})",
            file=file,
            entry=entry,
            field="action",
        )
    schema = ACTION_FIELDS[name]
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("action", "timeout", "order"):
            continue
        if key not in schema:
            raise InputError(
                f"not a field of action {name!r} (fields: {', '.join(schema)}, timeout, order)",
                file=file,
                entry=entry,
                field=key,
            )
        try:
            options[key] = schema[key][0](value)
        except _FieldError as exc:
            raise InputError(str(exc), file=file, entry=entry, field=key) from None
    for key, (_, required) in schema.items():
        if required and key not in options:
            raise InputError("missing", file=file, entry=entry, field=key)
    if name == "unmount" and not options.get("paths") and not options.get("luks"):
        raise InputError("needs 'paths' or 'luks'", file=file, entry=entry, field="paths")
    try:
        timeout = (
            _seconds(raw["timeout"])
            if "timeout" in raw
            else default_timeout or DEFAULT_TIMEOUTS[name]
        )
    except _FieldError as exc:
        raise InputError(str(exc), file=file, entry=entry, field="timeout") from None
    try:
        order = _order(raw["order"]) if "order" in raw else default_order(name)
    except _FieldError as exc:
        raise InputError(str(exc), file=file, entry=entry, field="order") from None
    return ActionSpec(
        action=name, verdict=verdict, index=index, timeout=timeout, options=options, order=order
    )


def _expand(codes: Iterable[str]) -> set[str]:
    from geoprobe.geo.groups import expand  # groups such as EU and EEA

    return set(expand(codes))


def _check_keys(
    table: Mapping[str, Any], allowed: tuple[str, ...], file: str, entry: str | None
) -> None:
    for key in table:
        if key not in allowed:
            raise InputError(
                f"unknown key (known: {', '.join(allowed)})", file=file, entry=entry, field=key
            )


def parse_policy(raw: Mapping[str, Any], *, file: str | Path = "<policy>") -> Policy:
    """Validate a parsed TOML document in full; raise InputError at the first problem."""
    f = str(file)
    _check_keys(raw, ("jurisdiction", "confidence", "defaults", "on"), f, None)

    jur = raw.get("jurisdiction", {})
    if not isinstance(jur, dict):
        raise InputError("must be a table", file=f, entry="jurisdiction")
    _check_keys(jur, ("allow",), f, "jurisdiction")
    try:
        written = _str_list(jur.get("allow", []), nonempty=False)
    except _FieldError as exc:
        raise InputError(str(exc), file=f, entry="jurisdiction", field="allow") from None
    written = [c.strip().upper() for c in written]
    try:
        allow = _expand(written) if written else set()
    except InputError as exc:
        raise InputError(exc.message, file=f, entry="jurisdiction", field="allow") from None

    conf = raw.get("confidence", {})
    if not isinstance(conf, dict):
        raise InputError("must be a table", file=f, entry="confidence")
    _check_keys(conf, ("min_probability", "min_landmarks"), f, "confidence")
    min_p = conf.get("min_probability", DEFAULT_MIN_PROBABILITY)
    if not _finite(min_p) or not 0 <= min_p <= 1:
        raise InputError(
            "must be a number in [0, 1]", file=f, entry="confidence", field="min_probability"
        )
    min_l = conf.get("min_landmarks", DEFAULT_MIN_LANDMARKS)
    if isinstance(min_l, bool) or not isinstance(min_l, int) or not 1 <= min_l <= 100_000:
        raise InputError(
            "must be an integer from 1 to 100000",
            file=f,
            entry="confidence",
            field="min_landmarks",
        )

    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InputError("must be a table", file=f, entry="defaults")
    _check_keys(defaults, ("timeout",), f, "defaults")
    default_timeout = None
    if "timeout" in defaults:
        try:
            default_timeout = _seconds(defaults["timeout"])
        except _FieldError as exc:
            raise InputError(str(exc), file=f, entry="defaults", field="timeout") from None

    on = raw.get("on", {})
    if not isinstance(on, dict):
        raise InputError("must be a table of verdicts", file=f, entry="on")
    actions: dict[str, list[ActionSpec]] = {v: [] for v in VERDICTS}
    for verdict, items in on.items():
        if verdict not in VERDICTS:
            raise InputError(
                f"unknown verdict {_show(verdict)} (known: {', '.join(VERDICTS)})",
                file=f,
                entry=f"on.{verdict}",
            )
        if not isinstance(items, list):
            raise InputError(
                "must be an array of tables ([[on.VERDICT]])", file=f, entry=f"on.{verdict}"
            )
        actions[verdict] = [
            _parse_action(item, verdict, i, default_timeout, f) for i, item in enumerate(items)
        ]

    return Policy(
        allow=allow,
        allow_as_written=tuple(written),
        min_probability=float(min_p),
        min_landmarks=int(min_l),
        actions=actions,
        path=Path(file) if not f.startswith("<") else None,
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. Anything wrong raises InputError naming file and field.

    The read is capped (``MAX_POLICY_BYTES``), and what TOML parsing itself cannot survive
    (nesting thousands deep, integers past Python's conversion limit) is a one-line error too.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read policy: {exc.strerror or exc}", file=p) from None
    if len(data) > MAX_POLICY_BYTES:
        raise InputError(f"larger than {MAX_POLICY_BYTES >> 10} KiB: refused", file=p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start})", file=p) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {_one_line(exc)}", file=p) from None
    except RecursionError:
        raise InputError("not acceptable TOML: nested too deep", file=p) from None
    except ValueError as exc:  # an integer past the int-string conversion limit
        raise InputError(f"not acceptable TOML: {_one_line(exc)}", file=p) from None
    return parse_policy(raw, file=p)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _show(value: Any) -> str:
    """A bounded repr: a hostile value cannot make the one-line message huge."""
    try:
        text = repr(value)
    except ValueError:  # an int past the int-string conversion limit
        return "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."
