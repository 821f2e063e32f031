"""The deploy files agree with the binary: the container image's runtime packages cover what
`build/mayhem` links, every file it copies exists, and the Kubernetes manifests parse and use
the probe paths, port and variables the worker serves and reads. (No container engine runs here:
the image itself is not built.)"""

import json
import os
import re
import shlex
import subprocess
import unittest

import yaml

import harness
from harness import Harness, http_get, free_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "deployment.yaml")
RULES = os.path.join(ROOT, "deploy", "prometheus", "mayhem.rules.yml")
RUNBOOK = os.path.join(ROOT, "deploy", "runbook.md")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "mayhem.json")


def stages(text):
    """The Dockerfile's stages as lists of instructions (continuation lines joined)."""
    lines, cur = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        cur += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if cur.strip():
                lines.append(cur.strip())
            cur = ""
    out = []
    for line in lines:
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def owning_package(path):
    """The Debian package that holds a shared library (usr-merged paths tried both ways)."""
    real = os.path.realpath(path)
    candidates = {path, real}
    for p in list(candidates):
        if p.startswith("/usr/lib/"):
            candidates.add(p[len("/usr"):])
        elif p.startswith("/lib/"):
            candidates.add("/usr" + p)
    for c in candidates:
        r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0]
    return None


class DeployTest(Harness):
    def test_the_image_copies_files_that_exist(self):
        for stage in stages(open(DOCKERFILE).read()):
            for line in stage:
                if line.upper().startswith("COPY ") and "--from=" not in line:
                    for src in shlex.split(line)[1:-1]:
                        self.assertTrue(os.path.exists(os.path.join(ROOT, src)), line)

    def test_the_runtime_image_has_every_library_the_binary_links(self):
        runtime = stages(open(DOCKERFILE).read())[-1]
        install = " ".join(l for l in runtime if "apt-get install" in l)
        packages = set(re.findall(r"\b(\w[\w.+-]*)", install))  # every word: zlib1g too
        ldd = subprocess.run(["ldd", harness.MAYHEM], capture_output=True, text=True, check=True)
        missing = []
        for line in ldd.stdout.splitlines():
            m = re.search(r"=> (\S+)", line)
            if not m:
                continue
            if re.search(r"lib(asan|ubsan|tsan)\.so", m.group(1)):
                continue  # a sanitizer build's runtime (make asan/tsan); the image builds without
            pkg = owning_package(m.group(1))
            self.assertIsNotNone(pkg, "no package holds %s" % m.group(1))
            if pkg.split(":")[0] not in packages:
                missing.append("%s (%s)" % (pkg, m.group(1)))
        self.assertEqual(missing, [], "runtime stage misses: %s" % ", ".join(missing))
        text = " ".join(runtime)
        self.assertIn("STOPSIGNAL SIGTERM", text)
        self.assertRegex(text, r"USER (?!root|0\b)\w+")
        self.assertIn("/healthz", text)
        # The exec restarter looks for its wrapper next to the binary.
        self.assertRegex(text, r"COPY --from=build \S*/mayhem \S*/mayhem-exec /usr/local/bin/")

    def test_the_manifest_matches_what_the_worker_serves_and_reads(self):
        docs = [d for d in yaml.safe_load_all(open(MANIFEST)) if d]
        kinds = {d["kind"] for d in docs}
        self.assertTrue({"Deployment", "PodDisruptionBudget", "ConfigMap"} <= kinds, kinds)
        dep = next(d for d in docs if d["kind"] == "Deployment")
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        args = c["args"]
        # The settings come from the ConfigMap, read whole as variables.
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        self.assertIn({"configMapRef": {"name": cm["metadata"]["name"]}}, c["envFrom"])
        settings = cm["data"]
        for name, value in settings.items():
            self.assertIsInstance(value, str, "%s: a ConfigMap value must be a string" % name)

        def setting(flag):
            if flag in args:
                return args[args.index(flag) + 1]
            return settings["MAYHEM_" + flag[2:].upper().replace("-", "_")]

        addr = setting("--metrics-addr")
        port = int(addr.rsplit(":", 1)[1])
        self.assertEqual([p["containerPort"] for p in c["ports"]], [port])
        paths = {c[p]["httpGet"]["path"]
                 for p in ("livenessProbe", "readinessProbe", "startupProbe")}
        self.assertEqual(paths, {"/healthz", "/readyz"})
        sc = c["securityContext"]
        self.assertTrue(sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        # The stop fits the grace period: --drain-timeout + the worker's 2 s margin.
        drain = setting("--drain-timeout")
        self.assertGreater(spec["terminationGracePeriodSeconds"], int(drain.rstrip("s")) + 2)
        # Every variable, of the ConfigMap or the container, is a flag the worker knows.
        help_text = subprocess.run([harness.MAYHEM, "worker", "--help"], capture_output=True,
                                   text=True).stdout
        names = list(settings) + [env["name"] for env in c.get("env", [])]
        for name in names:
            self.assertTrue(name.startswith("MAYHEM_"), name)
            flag = "--" + name[len("MAYHEM_"):].lower().replace("_", "-")
            self.assertRegex(help_text, r"(?<![\w-])%s(?![\w-])" % re.escape(flag), name)
        # The worker starts with the ConfigMap's values (it exits 2 on a bad one) and serves
        # the probe paths. What needs the cluster is replaced by flags, which win over
        # variables: a simulated source, the memory store, a restart command that runs nothing.
        p = free_port()
        w = self.worker("--source", "simulate", "--rate", "5", "--store", "memory",
                        "--allow-volatile-cooldown", "--dry-run",
                        "--restart-command", "true {hostname}",
                        "--metrics-addr", "127.0.0.1:%d" % p, "--status-interval", "0",
                        env=settings)
        for path in paths:
            wait_until(lambda: http_get("http://127.0.0.1:%d%s" % (p, path))[0] == 200
                       or not w.alive(), timeout=10, what=path)
            self.assertEqual(http_get("http://127.0.0.1:%d%s" % (p, path))[0], 200,
                             "%s: %s" % (path, w.stderr()[-2000:]))
        unknown = {l.get("variable") for l in harness.json_log_lines(w.stderr())
                   if "matches no flag" in l.get("msg", "")}
        self.assertEqual(unknown & set(settings), set())

    def test_every_alert_has_a_runbook_section_and_names_no_job(self):
        rules = [r for g in yaml.safe_load(open(RULES))["groups"] for r in g["rules"]
                 if "alert" in r]
        runbook = open(RUNBOOK).read()
        sections = dict(re.findall(r"(?ms)^## (\S+)\n(.*?)(?=^## |\Z)", runbook))
        self.assertEqual(sorted(sections), sorted(r["alert"] for r in rules),
                         "one runbook section per alert, and no other")
        for r in rules:
            name = r["alert"]
            # The anchor a Markdown renderer gives "## Name".
            self.assertEqual(r["annotations"].get("runbook_url"),
                             "deploy/runbook.md#" + name.lower(), name)
            for part in ("**What it means.**", "**What to check.**", "**What to do.**"):
                self.assertIn(part, sections[name], "%s: %s" % (name, part))
            # Annotation-based discovery names its own job: no rule may select one.
            self.assertNotRegex(r["expr"], r"\bjob\s*=", name)
        by_name = {r["alert"]: r for r in rules}
        self.assertIn("absent(", by_name["MayhemWorkersAbsent"]["expr"])
        self.assertIn("mayhem_restarts_paused", by_name["MayhemStuck"]["expr"])

    def test_the_dashboard_shows_the_rails_and_the_store(self):
        exprs = []

        def walk(node):
            if isinstance(node, dict):
                exprs.extend(v for k, v in node.items() if k == "expr")
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(json.load(open(DASHBOARD)))
        text = "\n".join(exprs)
        for metric in ("mayhem_restarts_paused", "mayhem_restart_breaker_state",
                       "mayhem_restarts_running", "mayhem_restarts_waiting",
                       "mayhem_store_healthy"):
            self.assertIn(metric, text)


if __name__ == "__main__":
    unittest.main()
