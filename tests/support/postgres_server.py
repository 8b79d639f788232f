"""A throwaway PostgreSQL server for tests and benchmarks, started from the machine's binaries.

``initdb`` creates a cluster under a directory of the caller's choosing, ``pg_ctl`` starts it on
127.0.0.1 at a free port with password (scram-sha-256) authentication, and stops it again. The
settings trade durability for speed (no fsync, no synchronous commit, no full page writes): the
data is disposable.

PostgreSQL refuses to run as root. When the tests run as root, ``initdb`` and ``pg_ctl`` run as
the system user ``postgres``, which then owns the cluster's directories; the directories above
them get search permission for others (``o+x``, not read) so that user can reach its data.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import urllib.parse
from pathlib import Path

from tests.support.local_server import free_port

SERVICE_USER = "postgres"  # the system account PostgreSQL runs as when the tests run as root
SEARCH_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")

# Settings for a disposable cluster: fast writes and bulk loads, nothing durable.
TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'1h'",
    "shared_buffers": "'256MB'",
    "max_connections": "200",
    "log_checkpoints": "off",
}


class PostgresError(RuntimeError):
    """The local PostgreSQL server could not be set up, started or stopped."""


class PostgresNotFoundError(PostgresError):
    """The PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) are not installed."""


def find_postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: the one on ``PATH`` first,
    then the usual install locations (the newest version first)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    for pattern in SEARCH_DIRS:
        candidates.extend(Path(p) for p in sorted(glob.glob(pattern), reverse=True))
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresNotFoundError(
        "PostgreSQL server binaries not found: initdb, pg_ctl and postgres must be on PATH or in "
        "/usr/lib/postgresql/<version>/bin (Debian/Ubuntu: apt-get install postgresql)"
    )


def postgres_unavailable_reason() -> str | None:
    """Why a :class:`LocalPostgres` cannot be started on this machine, or None when it can.

    Meant for a skip message: ``pytest.skip(reason)`` when it returns a reason.
    """
    try:
        find_postgres_bin()
    except PostgresNotFoundError as exc:
        return str(exc)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root and there is no system user {SERVICE_USER!r} to run PostgreSQL as"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


class LocalPostgres:
    """A PostgreSQL cluster under ``root``, listening on 127.0.0.1 only.

    ``root`` receives ``data/`` (the cluster), ``socket/`` (its unix socket) and
    ``postgres.log``. The cluster's superuser ``user`` logs in with ``password`` over TCP;
    :meth:`url` gives SQLAlchemy URIs for it. A stopped cluster starts again on the same port
    with its data. The password is kept by this object only, so one object serves one root.

    Args:
        root: directory for the cluster, its socket and its log.
        user: name of the superuser role.
        password: the role's password; a random one when not given.
    """

    def __init__(self, root: Path | str, user: str = "mlflow", password: str | None = None) -> None:
        self.root = Path(root).absolute()
        self.user = user
        self.password = secrets.token_urlsafe(24) if password is None else password
        self.port = free_port()
        self.host = "127.0.0.1"
        self.running = False
        self._bin_dir: Path | None = None

    def __repr__(self) -> str:
        return f"LocalPostgres(root={str(self.root)!r}, port={self.port}, user={self.user!r})"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", driver: str | None = "psycopg2") -> str:
        """SQLAlchemy URI of ``database`` on this server, password included.

        The driver is named because SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3,
        while the test environment has psycopg2; ``driver=None`` leaves it out.
        """
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        user = urllib.parse.quote(self.user, safe="")
        password = urllib.parse.quote(self.password, safe="")
        database = urllib.parse.quote(database, safe="")
        return f"{scheme}://{user}:{password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """A psycopg2 connection to ``database`` as the superuser."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """Create database ``name``, owned by :attr:`user`; returns the name, for :meth:`url`."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return name

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """Create the cluster unless it exists, start the server and wait until it accepts
        connections."""
        if self.running:
            return self
        bin_dir = self._bin_dir = find_postgres_bin()
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._run(
            [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
             "-t", str(int(timeout)), "-o", f"-p {self.port}", "-s", "start"],
            "start",
            timeout + 10,
        )
        self.running = True
        atexit.register(self.stop)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server (fast shutdown: open connections are closed). The data stays."""
        if not self.running:
            return
        atexit.unregister(self.stop)
        self._run(
            [str((self._bin_dir or find_postgres_bin()) / "pg_ctl"), "-D", str(self.data_dir),
             "-m", "fast", "-w", "-t", str(int(timeout)), "-s", "stop"],
            "stop",
            timeout + 10,
        )
        self.running = False

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _service_account(self) -> pwd.struct_passwd | None:
        """The account PostgreSQL runs as when this process is root, else None (run as self)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise PostgresError(
                f"PostgreSQL cannot run as root and there is no system user {SERVICE_USER!r}"
            ) from None

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.log_path.touch(mode=0o600, exist_ok=True)
        account = self._service_account()
        if account is None:
            return
        for path in (self.data_dir, self.socket_dir, self.log_path):
            os.chown(path, account.pw_uid, account.pw_gid)
        # The service account must reach root/data through every directory above it; search
        # permission is enough (pytest's own temporary directories are 0700).
        for directory in (self.root, *self.root.parents):
            info = directory.stat()
            if info.st_uid != account.pw_uid and not info.st_mode & stat.S_IXOTH:
                os.chmod(directory, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)

    def _initdb(self, bin_dir: Path) -> None:
        account = self._service_account()
        pwfile = self.socket_dir / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        try:
            self._run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale",
                 "--no-sync", "--no-instructions"],
                "initdb",
                120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "'{}'".format(str(self.socket_dir).replace("'", "''")),
            **TEST_SETTINGS,
        }
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# disposable test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _run(self, argv: list[str], what: str, timeout: float) -> None:
        """Run a PostgreSQL command (as the service account when root); raise with its output
        and the server log's tail when it fails."""
        account = self._service_account()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict = {}
        if account is not None:
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            env["HOME"] = account.pw_dir
        try:
            result = subprocess.run(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=timeout,
                                    start_new_session=True, **kwargs)
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"PostgreSQL {what} did not finish within {timeout:.0f}s"
                                f"{self._log_tail()}") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise PostgresError(f"PostgreSQL {what} failed with exit code {result.returncode}: "
                                f"{output}{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(text) if text else ""
