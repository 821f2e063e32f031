"""A private PostgreSQL server for the tests: initdb and pg_ctl on a temp dir and a free loopback
port, stopped also on failure. Under root, the server runs as the `postgres` user (it refuses to
run as root). Standard library only.

As a module: `PostgresServer()` (start() in the constructor; stop() or a `with` block).
As a command: `python3 postgres.py run -- CMD ARGS...` starts a server, runs CMD with
MAYHEM_TEST_POSTGRES_URL set to it, stops the server and exits with CMD's exit code (ctest
wraps the store unit tests this way).
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def bindir():
    """The directory of the newest installed server's programs (initdb, pg_ctl, pgbench)."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb into a fresh temp dir, pg_ctl start on a free port; stop() removes it all."""

    def __init__(self, password=None, start=True):
        self.bindir = bindir()
        self.as_postgres = os.geteuid() == 0
        self.port = _free_port()
        self.password = password
        # In /tmp itself: a test's own temp dir is private to root, and the server runs as
        # `postgres`.
        self.dir = tempfile.mkdtemp(prefix="mayhem-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.started = False
        try:
            self._initdb()
            if start:
                self.start()
        except BaseException:
            self.stop()
            raise

    def _run(self, prog, *args, check=True, timeout=120):
        cmd = [os.path.join(self.bindir, prog)] + [str(a) for a in args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (prog, r.returncode, r.stdout, r.stderr))
        return r

    def _initdb(self):
        args = ["-D", self.data, "-U", "postgres", "--no-sync", "--auth-local=trust",
                "-E", "UTF8", "--locale=C"]
        if self.password:
            pwfile = os.path.join(self.dir, "pw")
            with open(pwfile, "w") as f:
                f.write(self.password + "\n")
            if self.as_postgres:
                shutil.chown(pwfile, "postgres", "postgres")
            args += ["--auth-host=scram-sha-256", "--pwfile", pwfile]
        else:
            args += ["--auth-host=trust"]
        self._run("initdb", *args)

    def start(self):
        opts = ("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s "
                "-c fsync=off -c full_page_writes=off -c max_connections=100 "
                "-c shared_buffers=64MB" % (self.port, self.dir))
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "60",
                  "start")
        self.started = True

    def stop(self, mode="fast"):
        """Stops the server (`immediate`: a crash, recovered at the next start)."""
        if self.started:
            self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop",
                      check=False)
            self.started = False

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    @property
    def url(self):
        if self.password:
            return "postgresql://postgres:%s@127.0.0.1:%d/postgres" % (self.password, self.port)
        return "postgresql://postgres@127.0.0.1:%d/postgres" % self.port

    def psql(self, sql):
        """Runs `sql` with psql (unaligned, tuples only); returns stdout stripped."""
        env = dict(os.environ, PGPASSWORD=self.password or "")
        r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", "postgres", "-c", sql],
                           capture_output=True, text=True, timeout=60, env=env)
        if r.returncode != 0:
            raise RuntimeError("psql failed: %s" % r.stderr)
        return r.stdout.strip()

    def scalar(self, sql):
        return self.psql(sql)


def _main(argv):
    if len(argv) < 3 or argv[1] != "run" or "--" not in argv:
        print("usage: postgres.py run -- CMD ARGS...", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1:]
    server = PostgresServer()
    # ctest's timeout and Ctrl-C end the command; the server is stopped either way.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        env = dict(os.environ, MAYHEM_TEST_POSTGRES_URL=server.url)
        return subprocess.call(cmd, env=env)
    finally:
        server.remove()


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
