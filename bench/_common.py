"""Helpers shared by the benchmarks: a scratch PostgreSQL database, manage.py commands, API keys and a
real gunicorn server run as a subprocess. Nothing here knows about a particular benchmark."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
BENCH_SECRET_KEY = "bench-only-secret-key-for-throwaway-databases"


def database_url(base_url: str, name: str) -> str:
    """`base_url` with its database name replaced by `name`."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_connect(url: str, *, autocommit: bool = False):
    parts = urlsplit(url)
    connection = psycopg2.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        dbname=parts.path.lstrip("/") or "postgres",
    )
    connection.autocommit = autocommit
    return connection


def database_recreate(url: str) -> None:
    """Drop (disconnecting anyone still attached) and create the database named in `url`."""
    name = urlsplit(url).path.lstrip("/")
    if not name or name in ("postgres", "template0", "template1"):
        raise ValueError(f"refusing to recreate database {name!r}")
    connection = database_connect(database_url(url, "postgres"), autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        connection.close()


def database_drop(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    connection = database_connect(database_url(url, "postgres"), autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        connection.close()


def django_env(*, database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for manage.py and gunicorn: production-like (DEBUG off), with its own var dir so
    a benchmark never touches the developer's SQLite file, cache or broker folder."""
    (var_dir / "static").mkdir(parents=True, exist_ok=True)  # whitenoise warns on every start without it
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DEBUG="false",
        RECSITE_VAR_DIR=str(var_dir),
        DJANGO_SETTINGS_MODULE="recsite.settings",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("SECRET_KEY", BENCH_SECRET_KEY)  # DEBUG off needs one; a benchmark signs nothing that matters
    env.pop("REDIS_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `manage.py *args`; raises with the command's output when it fails."""
    process = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if process.returncode != 0:
        raise RuntimeError(
            f"manage.py {' '.join(args)} failed ({process.returncode}):\n{process.stdout}\n{process.stderr}"
        )
    return process


def api_key_create(*, name: str, scopes: str, env: dict[str, str]) -> str:
    """A new API key, from `create_api_key` (which prints the key alone on its last stdout line)."""
    return manage("create_api_key", name, "--scopes", scopes, env=env).stdout.strip().splitlines()[-1].strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_json(method: str, url: str, *, body=None, api_key: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Api-Key {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, {"body": payload.decode(errors="replace")[:500]}


def process_group_stop(process: subprocess.Popen, *, grace: float = 10) -> None:
    """SIGTERM the process group started with `start_new_session=True`, SIGKILL it after `grace` s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class GunicornServer:
    """`gunicorn recsite.wsgi:application` as a subprocess in its own process group; a context manager
    that stops the whole group on exit, whatever the exit (exception, Ctrl-C)."""

    def __init__(
        self, *, env: dict[str, str], port: int, workers: int = 2, log_path: Path, extra_args: tuple[str, ...] = ()
    ):
        self.env, self.port, self.workers, self.log_path, self.extra_args = env, port, workers, log_path, extra_args
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, health_path: str = "/api/v1/health", timeout: float = 60) -> GunicornServer:
        if not port_is_free(self.port):
            raise RuntimeError(f"port {self.port} is already in use; pick another with --port")
        command = [
            GUNICORN,
            "recsite.wsgi:application",
            "--workers", str(self.workers),
            "--bind", f"127.0.0.1:{self.port}",
            "--timeout", "120",
            "--log-level", "warning",
            *self.extra_args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the server runs
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_healthy(health_path, timeout=timeout)
        return self

    def wait_healthy(self, path: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http_json("GET", self.base_url + path, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer {path} with 200 within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            process_group_stop(self.process)
            self.process = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def interrupt_on_signals() -> None:
    """Make SIGTERM, and SIGINT even where the shell started us with it ignored (a background job),
    raise KeyboardInterrupt, so `finally` blocks and context managers stop the servers as on Ctrl-C."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- CPU accounting (Linux /proc), to tell the server's cost from a busy machine's noise ------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / _CLOCK_TICKS, sum(values) / _CLOCK_TICKS


class CpuMeter:
    """CPU seconds spent between `start()` and `stop()` by groups of processes (a callable per group lists
    them, asked again at every sample so processes started in between count) and by the whole machine.
    Samples every `interval` s, so a process that exits in between (a database connection recycled after
    CONN_MAX_AGE) still counts up to its last sample."""

    def __init__(self, *, interval: float = 0.5, **groups):
        self.groups, self.interval = groups, interval

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            seen = self.first[name]
            for pid in pids():
                seconds = process_cpu_seconds(pid)
                seen.setdefault(pid, 0.0 if self.started else seconds)
                self.last[name][pid] = max(seconds, self.last[name].get(pid, 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.first = {name: {} for name in self.groups}
        self.last = {name: {} for name in self.groups}
        self.started = False
        self._sample()
        self.started = True
        self.machine_before = machine_cpu_seconds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        (busy0, total0), (busy1, total1) = self.machine_before, machine_cpu_seconds()
        spent = {
            name: sum(seconds - self.first[name][pid] for pid, seconds in self.last[name].items())
            for name in self.groups
        }
        spent["machine_busy"], spent["machine_total"] = busy1 - busy0, total1 - total0
        return spent


class PostgresBackends:
    """Callable listing the server processes of everyone connected to one database (but its own), over
    one connection kept open, so that sampling does not itself fork backends. Each call also counts the
    backends then waiting for a lock: `lock_waits()` is their average over the calls."""

    def __init__(self, url: str):
        self.connection = database_connect(url, autocommit=True)
        self.samples = self.waiting = 0

    def __call__(self) -> list[int]:
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, wait_event_type = 'Lock' FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            rows = cursor.fetchall()
        self.samples += 1
        self.waiting += sum(1 for _, waits in rows if waits)
        return [pid for pid, _ in rows]

    def lock_waits(self) -> float:
        return self.waiting / self.samples if self.samples else 0.0

    def close(self) -> None:
        self.connection.close()


# --- Reporting and child processes shared by the newer benchmarks ------------------------------------


def step(message: str) -> None:
    """A progress line with the UTC time."""
    from datetime import datetime

    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def text_table(rows: list[list[str]], widths: list[int]) -> list[str]:
    """Rows of cells: the first column left-aligned, the sized ones right-aligned, any further one as is."""
    lines = []
    for cells in rows:
        sized = [f"{cells[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=False))]
        lines.append(" ".join(sized + list(cells[len(widths) :])).rstrip())
    return lines


class ResultProcess:
    """A child in its own process group that prints its figures as `RESULT {json}` on its last such line
    (a load generator, a profiler). A context manager: the group is stopped on exit, whatever the exit,
    so the caller can act (promote a model...) while the child runs, then collect `result()`."""

    def __init__(self, command: list[str], *, log_path: Path, env: dict[str, str] | None = None):
        self.command, self.log_path, self.env = command, log_path, env
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ResultProcess:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True
        )
        return self

    def result(self, *, timeout: float) -> dict:
        stdout, _ = self.process.communicate(timeout=timeout)
        lines = [line for line in stdout.decode().splitlines() if line.startswith("RESULT ")]
        if self.process.returncode != 0 or not lines:
            self._log.flush()
            raise RuntimeError(
                f"{' '.join(self.command[:3])} failed ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}"
            )
        return json.loads(lines[-1][len("RESULT ") :])

    def __exit__(self, *exc) -> None:
        process_group_stop(self.process)
        self._log.close()


def benchmark_run(main, load_main=None) -> None:
    """The entry point of a benchmark script: `main(argv)`, or `load_main(config)` when the script was
    started as its own load-generator process (`script.py _load '<json>'`). Ctrl-C exits with 130."""
    if load_main is not None and len(sys.argv) == 3 and sys.argv[1] == "_load":
        load_main(json.loads(sys.argv[2]))
        sys.exit(0)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
