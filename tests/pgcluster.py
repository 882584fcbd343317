"""A throwaway PostgreSQL cluster for tests: Debian's initdb and pg_ctl, a temp
folder, 127.0.0.1 on a free port, trust authentication, stopped at the end.

PostgreSQL refuses to run as root (CI runs as root): then the cluster belongs
to the ``postgres`` user that Debian's package creates, and its programs run
through ``runuser``. ``postgres_url`` gives each test a database of its own.
Without PostgreSQL installed the tests skip, except in CI (``CI`` set), where
that is a failure: .ci/run installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from brokers import free_port


def _pg_bin(name: str) -> str | None:
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return found[-1] if found else shutil.which(name)


class PgCluster:
    """``initdb`` + ``pg_ctl start`` in a temp folder; ``url(db)`` to connect."""

    def __init__(self, *, fsync: bool = True) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError("initdb/pg_ctl not found: apt-get install postgresql")
        self._pg_ctl = pg_ctl
        self.folder = Path(tempfile.mkdtemp(prefix="ioconnect-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")  # KeyError: no Debian postgres user
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        self._options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
            f"-c max_connections=200 -c fsync={'on' if fsync else 'off'}"
        )
        self.resume()

    def _run(self, *cmd: str) -> None:
        # cwd: the postgres user may not enter the caller's folder (a clone under /root).
        done = subprocess.run(
            [*self._as, *cmd], capture_output=True, text=True, check=False, cwd=self.folder
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr or done.stdout}\n{log[-2000:]}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pause(self) -> None:
        """Stop the server (fast: clients are cut off); ``resume`` starts it again."""
        self._run(self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o",
                  self._options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [*self._as, self._pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            cwd=self.folder,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster()
    except (FileNotFoundError, KeyError) as err:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed in CI: {err!r}")
        pytest.skip(f"no PostgreSQL here ({err!r}): apt-get install postgresql")
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(pg_cluster: PgCluster) -> str:
    """A database of this test's own in the session's cluster."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """What ``--store`` takes, for each kind of store: the tests of the store rules
    run on both."""
    if request.param == "sqlite":
        return tmp_path / "relay.db"
    return str(request.getfixturevalue("postgres_url"))
