"""--retention (README "Store", "Retention"): a worker deletes finished requests and restarts
older than the retention from a real SQLite file and a real PostgreSQL database (a private
server, postgres.py), and keeps what is in flight or unfinished. Observed through the rows and
mayhem_store_pruned_total."""

import os
import re
import subprocess
import unittest

import harness
from harness import Harness, MAYHEM, free_port, http_get, json_log_lines, wait_until

FAST = ["--save-latency", "0", "--restart-latency", "0", "--status-interval", "0",
        "--log-format", "json"]
N = 40
OLD = 1_000_000  # ms since the epoch: 1970, long before any retention


def pruned(base):
    """mayhem_store_pruned_total by table, from /metrics ({} when nothing answers)."""
    code, body = http_get(base + "/metrics")
    if code != 200:
        return {}
    return {m.group(1): int(float(m.group(2))) for m in
            re.finditer(r'^mayhem_store_pruned_total\{table="(\w+)"\} (\S+)$', body, re.M)}


class Retention(Harness):
    def requests(self):
        r = subprocess.run([MAYHEM, "publish", "--output", "-", "--count", str(N), "--seed", "7"],
                           capture_output=True, text=True, check=True)
        path = os.path.join(self.tmp, "in.ndjson")
        with open(path, "w") as f:
            f.write(r.stdout)
        f = open(path)
        self.addCleanup(f.close)
        return f

    # Rows the pass must keep, however old: a message in flight (no outcome) whose restart
    # finished long ago, and an acked message whose restart never finished (its worker died).
    KEEP = [
        "INSERT INTO messages (message_id, instance, hostname, first_seen) "
        "VALUES ('in-flight', 'i', 'h1', %d)" % OLD,
        "INSERT INTO restarts (message_id, attempt, hostname, started, finished, result) "
        "VALUES ('in-flight', 1, 'h1', %d, %d, 'ok')" % (OLD, OLD),
        "INSERT INTO messages (message_id, instance, hostname, first_seen, outcome, completed_at) "
        "VALUES ('unfinished', 'i', 'h2', %d, 'acked', %d)" % (OLD, OLD),
        "INSERT INTO restarts (message_id, attempt, hostname, started) "
        "VALUES ('unfinished', 1, 'h2', %d)" % OLD,
    ]

    def run_and_prune(self, store_args, count, seed_rows):
        """A first worker restarts N hosts (no retention); rows the pass must keep are added;
        a second worker with --retention 1s prunes. Returns its stderr."""
        code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate",
                                       "--retention", "0", *store_args, *FAST,
                                       stdin=self.requests())
        self.assertEqual((code, s and s["acked"]), (0, N), err[-2000:])
        self.assertEqual(count("SELECT count(*) FROM messages"), N)
        self.assertEqual(count("SELECT count(*) FROM restarts"), N)
        seed_rows()

        port = free_port()
        base = "http://127.0.0.1:%d" % port
        w = self.worker("--source", "stdin", "--restarter", "simulate", "--retention", "1s",
                        "--metrics-addr", "127.0.0.1:%d" % port, *store_args, *FAST,
                        stdin=subprocess.PIPE)
        wait_until(lambda: pruned(base) == {"messages": N, "restarts": N}, timeout=60,
                   what="mayhem_store_pruned_total to reach %d per table" % N)
        self.assertEqual(count("SELECT count(*) FROM messages"), 2)
        self.assertEqual(count("SELECT count(*) FROM restarts"), 2)
        self.assertEqual(count("SELECT count(*) FROM messages WHERE message_id IN "
                               "('in-flight', 'unfinished')"), 2)
        w.proc.stdin.close()
        code, _, err = w.wait()
        self.assertEqual(code, 0, err[-2000:])
        lines = [l for l in json_log_lines(err) if l.get("msg") == "retention: pruned finished requests"]
        self.assertTrue(lines, err[-2000:])
        self.assertEqual(sum(l["messages"] for l in lines), N)
        self.assertEqual(sum(l["restarts"] for l in lines), N)
        return err

    def test_a_short_retention_prunes_a_sqlite_file_and_keeps_what_is_unfinished(self):
        db = os.path.join(self.tmp, "mayhem.db")

        def count(sql):
            return harness.query_db(db, sql)[0][0]

        def seed():
            import sqlite3
            c = sqlite3.connect(db)
            for sql in self.KEEP:
                c.execute(sql)
            c.commit()
            c.close()

        self.run_and_prune(["--store", "sqlite", "--db", db], count, seed)

    def test_a_short_retention_prunes_a_postgres_database_and_keeps_what_is_unfinished(self):
        pg = self.postgres()

        def count(sql):
            return int(pg.scalar(sql))

        def seed():
            pg.psql("; ".join(self.KEEP))

        self.run_and_prune(["--store", "postgres", "--postgres-url", pg.url], count, seed)


if __name__ == "__main__":
    unittest.main()
