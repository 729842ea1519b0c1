"""Private servers for fault injection: a PostgreSQL cluster and a Redis server on spare ports, each started
by the test that breaks it and stopped or killed by its own process id, and gunicorn in front of them."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import redis

from tests.reliability.ledger import http_json
from tests.support.processes import REPO, free_port, start_process, stop_process, wait_until

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OWNER = "postgres"  # initdb refuses to run as root: the cluster belongs to this user when the tests run as root
BIN = Path(sys.executable).parent


def missing_binaries() -> list[str]:
    """The server programs these tests need that this machine lacks (the tests skip, naming them)."""
    wanted = [PG_BIN / "initdb", PG_BIN / "pg_ctl", PG_BIN / "postgres"]
    missing = [str(path) for path in wanted if not path.exists()]
    return missing if shutil.which("redis-server") else [*missing, "redis-server"]


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OWNER, "--", *args] if os.geteuid() == 0 else args


def _owned_tmpdir(prefix: str) -> Path:
    """A fresh directory under /tmp that the cluster's owner can use (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(folder, PG_OWNER, PG_OWNER)
    return folder


_MIGRATE_AND_CREATE_KEY = (
    "from django.core.management import call_command; call_command('migrate', interactive=False, verbosity=0); "
    "from recommendations.services.api_keys import api_key_create; "
    "print(api_key_create(name='reliability', scopes=['admin'])[1])"
)


class PrivatePostgres:
    """A PostgreSQL 15 cluster of the test's own: initdb'd (or copied from a prepared cluster), on a spare port,
    its socket in its own folder. `stop(mode="immediate")` is a crash: the server exits without a checkpoint and
    the next start replays the WAL."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = free_port()
        self.api_key: str | None = None

    @classmethod
    def initdb(cls) -> "PrivatePostgres":
        server = cls(_owned_tmpdir("recsite-pg-"))
        server._run(PG_BIN / "initdb", "-D", server.data, "--auth=trust", "--username=postgres", "--no-sync")
        return server

    @classmethod
    def copy_of(cls, template: "PrivatePostgres") -> "PrivatePostgres":
        """A new cluster whose data directory is a copy of a stopped `template` (faster than initdb + migrate)."""
        assert not template.running, "copy a stopped cluster only"
        server = cls(_owned_tmpdir("recsite-pg-"))
        _checked(["cp", "-a", str(template.data), str(server.data)])  # as root: keeps the owner and modes
        server.api_key = template.api_key
        return server

    def url(self, database: str = "recsite") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (its first line of postmaster.pid)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=60"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected and the server shuts down cleanly; `immediate`: a crash."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str = "recsite") -> str:
        self._run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def migrate(self, name: str = "recsite") -> None:
        """Create database `name`, apply the project's migrations to it as a deployment would, and create an API
        key with the admin scope (which includes the others) in it: `self.api_key`, also valid in copies."""
        url = self.create_database(name)
        # One process for both: Django's start-up is most of the time of either.
        output = _checked(
            [sys.executable, "manage.py", "shell", "--command", _MIGRATE_AND_CREATE_KEY],
            cwd=REPO,
            env={**os.environ, "DATABASE_URL": url},
        )
        self.api_key = output.strip().splitlines()[-1]

    @contextmanager
    def cursor(self, database: str = "recsite"):
        """A DB-API cursor on `database` (autocommit), for checking what the server stored."""
        connection = psycopg2.connect(self.url(database))
        connection.autocommit = True
        try:
            yield connection.cursor()
        finally:
            connection.close()

    def destroy(self) -> None:
        """Kill the postmaster by its pid (its backends exit with it) and remove the folder."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
            wait_until(lambda: not _alive(pid), 30, message=f"postgres {pid} to exit")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, *args) -> None:
        _checked(_as_owner([str(arg) for arg in args]), cwd=self.folder)


def _checked(args: list[str], **kwargs) -> str:
    """The command's output; an error showing its output if it fails (CalledProcessError hides it)."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode:
        raise RuntimeError(
            f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result.stdout


@contextmanager
def postgres_copy(template: PrivatePostgres):
    """A running copy of the stopped cluster `template`, destroyed on exit."""
    server = PrivatePostgres.copy_of(template)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


class PrivateRedis:
    """redis-server on a spare port, without persistence, stopped or killed by its own pid."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            shutil.which("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
        ]
        self.process = start_process(args, self.folder / f"redis-{self.port}.log")
        wait_until(self.answers, 15, message="redis-server")

    def answers(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash or an OOM kill."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


class Gunicorn:
    """The web process as Procfile starts it (gunicorn, 2 workers) on a spare port and the given database and
    Redis, started once /api/v1/health answers 200."""

    def __init__(self, folder: Path, *, database_url: str, redis_url: str | None = None, workers: int = 2, **env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"gunicorn-{self.port}.log"
        extra = {"DATABASE_URL": database_url, "DEBUG": "false", **env}
        if redis_url is not None:
            extra["REDIS_URL"] = redis_url
        args = [
            str(BIN / "gunicorn"),
            "recsite.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--access-logfile",
            "-",
        ]
        self.process = start_process(args, self.log, **extra)

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            return http_json(f"{self.base}/api/v1/health")[0] == 200

        wait_until(healthy, timeout, message="gunicorn's /api/v1/health")

    @property
    def worker_pids(self) -> set[int]:
        """The master's children: unchanged across a fault means no worker was restarted."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def stop(self) -> str:
        stop_process(self.process)
        return self.log.read_text(errors="replace")


@contextmanager
def gunicorn_running(folder: Path, **kwargs):
    """A healthy Gunicorn(folder, **kwargs), stopped on exit; its log's tail is printed (pytest shows it when
    the test fails)."""
    web = Gunicorn(folder, **kwargs)
    try:
        web.wait_healthy()
        yield web
    finally:
        print(f"--- gunicorn :{web.port} log (tail) ---\n{web.stop()[-3000:]}")
