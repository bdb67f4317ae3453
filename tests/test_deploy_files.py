"""The deployment files in deploy/ (issue 8, static part): they parse, name one image, agree on
ports with each other and with the code, and the Grafana dashboard only queries series that the
real exporter (orchestrator.metrics.SweepMetrics) serves over HTTP."""
from __future__ import annotations

import json
import re
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = "circuitry:0.2.0"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "circuitry.json"
KUBERAY = DEPLOY / "kuberay"


def docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kube(kind: str, name: str | None = None) -> dict:
    for p in sorted(KUBERAY.glob("*.yaml")):
        for d in docs(p):
            if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
                return d
    raise AssertionError(f"no {kind} {name or ''} in deploy/kuberay")


def walk(x):
    yield x
    if isinstance(x, dict):
        for v in x.values():
            yield from walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from walk(v)


def images(d) -> list[str]:
    return [n["image"] for n in walk(d) if isinstance(n, dict) and isinstance(n.get("image"), str)]


def containers(d) -> list[dict]:
    return [c for n in walk(d) if isinstance(n, dict) for c in n.get("containers", []) if isinstance(c, dict)]


def default_metrics_port() -> int:
    from circuitry.orchestrator.spec import SWEEP_FIELDS

    return SWEEP_FIELDS["metrics_port"][1]


# ---------------------------------------------------------------- parsing, image


def test_every_yaml_file_parses():
    assert len(YAML_FILES) >= 8, YAML_FILES
    for p in YAML_FILES:
        parsed = docs(p)
        assert parsed, f"{p}: empty"
        assert all(isinstance(d, dict) for d in parsed), p
    for p in KUBERAY.glob("*.yaml"):
        for d in docs(p):
            assert {"apiVersion", "kind", "metadata"} <= d.keys(), f"{p}: {d.get('kind')}"


def test_one_image_name_everywhere():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert IMAGE == f"circuitry:{version}"
    ours = [i for p in YAML_FILES for i in images(docs(p)) if "circuitry" in i]
    assert ours and set(ours) == {IMAGE}, set(ours)
    compose = docs(COMPOSE)[0]
    for name in ("ray-head", "ray-worker", "mlflow"):
        assert compose["services"][name]["image"] == IMAGE, name
    for kind in ("RayCluster", "RayJob", "Deployment"):
        assert set(images(kube(kind))) == {IMAGE}, kind
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM ${PYTHON_IMAGE}" in dockerfile and "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert "-c /tmp/constraints-no-torch.txt ." in dockerfile and "ARG TORCH_SPEC=" in dockerfile
    assert f"-t {IMAGE}" in dockerfile
    for env in ("RAY_USAGE_STATS_ENABLED=0", "MLFLOW_DISABLE_TELEMETRY=true"):
        assert env in dockerfile


# ---------------------------------------------------------------- ports


def test_circuitry_metrics_port_is_the_code_default_everywhere():
    """The driver's endpoint is scraped directly on the head (no relay): it binds 0.0.0.0 there
    through CIRCUITRY_METRICS_HOST (compose, KubeRay) or --metrics-host (the RayJob)."""
    port = default_metrics_port()
    compose = docs(COMPOSE)[0]["services"]
    assert "metrics-relay" not in compose and "socat" not in COMPOSE.read_text()
    assert compose["ray-head"]["environment"]["CIRCUITRY_METRICS_HOST"] == "0.0.0.0"
    assert kube("ConfigMap", "circuitry-env")["data"]["CIRCUITRY_METRICS_HOST"] == "0.0.0.0"
    head = kube("RayCluster")["spec"]["headGroupSpec"]
    assert [c["name"] for c in containers(head)] == ["ray-head"]  # no sidecar
    assert {"containerPort": port, "name": "circuitry-metr"} in containers(head)[0]["ports"]
    entry = kube("RayJob")["spec"]["entrypoint"].split()
    assert entry[entry.index("--metrics-host") + 1] == "0.0.0.0"
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in kube("Service", "circuitry-metrics")["spec"]["ports"]}
    assert svc_ports == {"circuitry": (port, port), "ray-metrics": (8080, 8080)}
    scrape = {j["job_name"]: j for j in docs(PROMETHEUS)[0]["scrape_configs"]}
    assert scrape["circuitry"]["static_configs"][0]["targets"] == [f"ray-head:{port}"]
    assert f"metrics_port = {port}" in (DEPLOY / "sweep.toml").read_text()
    assert "socat" not in (DEPLOY / "Dockerfile").read_text()


def test_metrics_host_option_and_env():
    from click.testing import CliRunner

    from circuitry.orchestrator import cli as cli_mod
    from circuitry.orchestrator.spec import SWEEP_FIELDS, SpecError, parse_spec

    assert SWEEP_FIELDS["metrics_host"][1] == "127.0.0.1"
    cli_mod._register_commands()
    run = cli_mod.cli.commands["run"]
    opt = next(p for p in run.params if "--metrics-host" in p.opts)
    assert opt.envvar == "CIRCUITRY_METRICS_HOST"
    base = '[sweep]\nname = "h"\n{}[train]\ntask = "independence"\nregime = "bimt"\nsteps = 1\n'
    assert parse_spec(base.format("")).metrics_host == "127.0.0.1"
    assert parse_spec(base.format('metrics_host = "0.0.0.0"\n')).metrics_host == "0.0.0.0"
    with pytest.raises(SpecError, match="sweep.metrics_host"):
        parse_spec(base.format('metrics_host = "a b"\n'))
    r = CliRunner().invoke(cli_mod.cli, ["run", "nope.toml", "--metrics-host", "a b"])
    assert r.exit_code == 2
    for cmd in ("run", "submit"):  # the only-the-driver-writes and relative-root rules are in the help
        assert "only the driver" in " ".join(CliRunner().invoke(cli_mod.cli, [cmd, "--help"]).output.lower().split())


def test_taken_metrics_port_warns_in_one_line(capfd):
    from circuitry.orchestrator.metrics import SweepMetrics

    first, second = SweepMetrics("one"), SweepMetrics("two")
    port = first.serve(0)
    try:
        assert port and second.serve(port) is None
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "in use" in err[0]
        assert "metrics_port" in err[0] and "0 = any free port" in err[0]
    finally:
        first.close()


def test_submit_forwards_ray_auth_mode_only_when_user_set(monkeypatch):
    from circuitry.orchestrator import cli as cli_mod

    captured = {}

    class FakeClient:
        def __init__(self, address):
            pass

        def submit_job(self, entrypoint, runtime_env, metadata):
            captured.update(entrypoint=entrypoint, env=runtime_env["env_vars"])
            return "raysubmit_x"

    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    spec = ROOT / "examples" / "quickstart.toml"
    for user_env, forwarded in ((None, None), ("token", "token")):
        if user_env is None:
            monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        else:
            monkeypatch.setenv("RAY_AUTH_MODE", user_env)
        # unset: the cluster's own setting applies, so submit must not forward anything
        cli_mod.main(["submit", str(spec), "--address", "http://127.0.0.1:1", "--root", "rel/sweeps"])
        assert captured["env"].get("RAY_AUTH_MODE") == forwarded
        assert "--root rel/sweeps" in captured["entrypoint"]  # unchanged: resolved on the head
        assert "CIRCUITRY_SPEC_TOML" in captured["env"]
    from circuitry.orchestrator import cli_common
    monkeypatch.setattr(cli_common, "USER_SET_ENV", None)


def test_ray_ports_agree():
    compose = docs(COMPOSE)[0]["services"]
    head_cmd = compose["ray-head"]["command"]
    for flag in ("--port=6379", "--dashboard-port=8265", "--ray-client-server-port=10001",
                 "--metrics-export-port=8080", "--dashboard-host=0.0.0.0"):
        assert flag in head_cmd
    assert "--metrics-export-port=8080" in compose["ray-worker"]["command"]
    assert "--address=ray-head:6379" in compose["ray-worker"]["command"]
    assert "127.0.0.1:8265:8265" in compose["ray-head"]["ports"]
    scrape = {j["job_name"]: j for j in docs(PROMETHEUS)[0]["scrape_configs"]}
    assert scrape["ray-head"]["static_configs"][0]["targets"] == ["ray-head:8080"]
    assert scrape["ray-workers"]["dns_sd_configs"][0]["port"] == 8080

    rc = kube("RayCluster")["spec"]
    head = rc["headGroupSpec"]
    ports = {p["name"]: p["containerPort"] for p in containers(head)[0]["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080,
                     "circuitry-metr": default_metrics_port()}
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    groups = {g["groupName"]: g for g in rc["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert g["rayStartParams"]["metrics-export-port"] == "8080"
    gpu = containers(groups["gpu"])[0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in containers(groups["cpu"])[0]["resources"]["limits"]



def test_only_the_head_mounts_the_sweep_volume():
    """Only the driver (on the head) writes sweep folders; workers return results through Ray's
    object store, so they mount no volume, and the head's is an ordinary ReadWriteOnce one."""
    root = tomllib.loads((DEPLOY / "sweep.toml").read_text())["sweep"]["root"]
    compose = docs(COMPOSE)[0]
    assert f"sweeps:{root}" in compose["services"]["ray-head"]["volumes"]
    assert "volumes" not in compose["services"]["ray-worker"]
    rc = kube("RayCluster")["spec"]
    head = containers(rc["headGroupSpec"])[0]
    assert root in {m["mountPath"] for m in head["volumeMounts"]}
    for g in rc["workerGroupSpecs"]:
        spec = g["template"]["spec"]
        assert [v for v in spec["volumes"] if "persistentVolumeClaim" in v] == [], g["groupName"]
        assert {m["mountPath"] for m in containers(g)[0]["volumeMounts"]} == {"/dev/shm"}, g["groupName"]
    claims = [v["persistentVolumeClaim"]["claimName"] for n in walk(rc) if isinstance(n, dict)
              for v in n.get("volumes", []) if "persistentVolumeClaim" in v]
    assert claims == ["circuitry-sweeps"]
    assert kube("PersistentVolumeClaim", "circuitry-sweeps")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "ReadWriteMany" not in (KUBERAY / "raycluster.yaml").read_text()


def test_mlflow_port_and_tracking_uri_agree():
    compose = docs(COMPOSE)[0]["services"]
    ml = compose["mlflow"]
    cmd = " ".join(ml["command"])
    for part in ("--port 5000", "--host 0.0.0.0", "--serve-artifacts", "--artifacts-destination", "--workers 1",
                 "--backend-store-uri"):
        assert part in cmd
    assert ml["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert ml["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "mlflow:*" in ml["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "127.0.0.1:5000:5000" in ml["ports"]
    for name in ("ray-head", "ray-worker"):
        assert compose[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert compose["grafana"]["volumes"]

    dep = kube("Deployment", "mlflow")
    c = containers(dep)[0]
    args = c["args"]
    assert args[args.index("--port") + 1] == "5000" and args[args.index("--workers") + 1] == "1"
    assert "--serve-artifacts" in args and "--artifacts-destination" in args
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert args[args.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert c["readinessProbe"]["httpGet"]["port"] == 5000
    svc = kube("Service", "mlflow")["spec"]["ports"][0]
    assert svc["port"] == 5000 and svc["targetPort"] == 5000
    assert kube("ConfigMap", "circuitry-env")["data"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_rayjob_runs_the_mounted_spec():
    job = kube("RayJob")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": kube("RayCluster")["metadata"]["name"]}
    entry = job["entrypoint"].split()
    assert entry[:3] == ["circuitry", "run", "/specs/sweep.toml"]
    assert entry[entry.index("--address") + 1] == "auto"
    assert entry[entry.index("--tracking-uri") + 1] == "$MLFLOW_TRACKING_URI"
    head = kube("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    specs = next(v for v in head["volumes"] if v["name"] == "specs")
    assert specs["configMap"]["name"] == "circuitry-sweep"
    cm = kube("ConfigMap", "circuitry-sweep")
    text = cm["data"]["sweep.toml"]
    assert text == (DEPLOY / "sweep.toml").read_text()

    from circuitry.orchestrator.spec import parse_spec

    spec = parse_spec(text, "circuitry-sweep ConfigMap")
    assert spec.metrics_port == default_metrics_port() and spec.jobs


def test_cli_has_the_options_the_deploy_files_use():
    from circuitry.orchestrator import cli as cli_mod

    cli_mod._register_commands()
    group = cli_mod.cli
    for name in ("run", "submit"):
        opts = {o for p in group.commands[name].params for o in getattr(p, "opts", [])}
        assert {"--address", "--tracking-uri"} <= opts, (name, opts)


# ---------------------------------------------------------------- Grafana against the real exporter

PROMQL_WORDS = {
    # functions and aggregations the dashboard may use
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "rate", "irate",
    "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs", "ceil",
    "floor", "round", "label_replace", "label_join", "vector", "scalar", "time", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "last_over_time", "absent", "sort", "sort_desc",
    # keywords
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
}


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, legend text)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors ($__rate_interval, 5m)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    words = set(re.findall(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", e))
    return {w for w in words if w not in PROMQL_WORDS}


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.9, sum by (le, kind) (rate(a_bucket{kind="x"}[5m])))') == {"a_bucket"}
    assert metric_names("sum by (method) (rate(b_total[$__rate_interval])) / on (x) c") == {"b_total", "c"}


def scrape_exporter() -> set[str]:
    from circuitry.orchestrator.metrics import SweepMetrics

    m = SweepMetrics("deploy-test")
    port = m.serve(0)
    assert port, "could not start the exporter on 127.0.0.1"
    try:
        m.set_total(3)
        for kind in ("train", "discover"):
            m.move(kind, None, "queued")
            m.move(kind, "queued", "running")
            m.retried(kind)
            m.finished(kind, 1.5, 10_000_000)
            m.move(kind, "running", "finished")
        m.train_progress("independence", 100, 6400)
        m.edges_evaluated("acdc", 42)
        m.worker_rss(12345, 50_000_000)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            text = r.read().decode()
    finally:
        m.close()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def test_dashboard_queries_only_exported_series():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
    assert len(exprs) >= 8
    used = set().union(*(metric_names(e) for e in exprs))
    exported = scrape_exporter()
    assert {"circuitry_edges_evaluated_total", "circuitry_train_steps_total", "circuitry_jobs",
            "circuitry_job_duration_seconds_bucket", "circuitry_job_peak_memory_bytes",
            "circuitry_worker_rss_bytes"} <= used
    unknown = sorted(used - exported)
    assert not unknown, f"dashboard uses series the exporter does not serve: {unknown}"
    assert any("histogram_quantile" in e and "circuitry_job_duration_seconds_bucket" in e for e in exprs)
    assert any("rate(circuitry_edges_evaluated_total" in e for e in exprs)
    # the provisioned datasource is the one every panel names
    ds = docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds["uid"]}
    prov = docs(DEPLOY / "grafana" / "provisioning" / "dashboards" / "circuitry.yml")[0]["providers"][0]
    mounts = docs(COMPOSE)[0]["services"]["grafana"]["volumes"]
    assert f"../grafana/circuitry.json:{prov['options']['path']}/circuitry.json:ro" in mounts


def test_the_deploy_readme_names_only_files_that_exist():
    """Every file path deploy/README.md shows in backquotes (relative to deploy/ or to the
    repository) exists; a path with a placeholder (SWEEP, <id>) or a URL is no file."""
    text = (DEPLOY / "README.md").read_text()
    named = set(re.findall(r"`([A-Za-z0-9_./-]+/[A-Za-z0-9_.-]+\.[a-z]+)`", text))
    assert "compose/docker-compose.yml" in named  # the pattern finds the paths it is meant to
    missing = [p for p in sorted(named) if not (DEPLOY / p).exists() and not (ROOT / p).exists()
               and not p.startswith(("http", "SWEEP", "/"))]
    assert not missing, missing


def test_metrics_linger_outlasts_two_scrapes_of_the_shipped_prometheus():
    """A sweep is a batch job: its endpoint stays up long enough after the last job for the shipped
    Prometheus to scrape the final figures twice."""
    from circuitry.orchestrator.spec import SWEEP_FIELDS, SpecError, parse_spec

    def seconds(d: str) -> float:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", d)
        return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]

    prom = docs(PROMETHEUS)[0]
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "circuitry")
    interval = seconds(job.get("scrape_interval", prom["global"]["scrape_interval"]))
    assert SWEEP_FIELDS["metrics_linger"][1] >= 2 * interval
    base = '[sweep]\nname = "h"\n{}[train]\ntask = "independence"\nregime = "bimt"\nsteps = 1\n'
    assert parse_spec(base.format("")).metrics_linger == SWEEP_FIELDS["metrics_linger"][1]
    assert parse_spec(base.format("metrics_linger = 0\n")).metrics_linger == 0
    assert parse_spec(base.format('pushgateway = "http://pg:9091"\n')).pushgateway == "http://pg:9091"
    for bad, field in (("metrics_linger = -1", "sweep.metrics_linger"), ('pushgateway = "a b"', "sweep.pushgateway")):
        with pytest.raises(SpecError, match=field) as e:
            parse_spec(base.format(bad + "\n"))
        assert "\n" not in str(e.value)


def test_final_figures_are_pushed_to_a_pushgateway():
    """push_to_gateway's PUT, received by a plain HTTP server in Pushgateway's place: the body is
    the registry's exposition, under /metrics/job/circuitry/sweep/<name>."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from prometheus_client.parser import text_string_to_metric_families

    from circuitry.orchestrator.metrics import SweepMetrics

    got = {}

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self):
            got[self.path] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        m = SweepMetrics("pushed")
        m.set_total(3)
        m.move("train", None, "cached", 1)
        m.move("train", None, "queued", 2)
        m.move("train", "queued", "running", 2)
        m.move("train", "running", "finished", 2)
        assert m.push(f"http://127.0.0.1:{server.server_port}") is None
        body = got["/metrics/job/circuitry/sweep/pushed"]
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for fam in text_string_to_metric_families(body) for s in fam.samples}
        assert values[("circuitry_jobs", (("kind", "train"), ("state", "finished")))] == 2
        assert values[("circuitry_jobs", (("kind", "train"), ("state", "cached")))] == 1
        assert values[("circuitry_job_events_total", (("event", "submitted"), ("kind", "train")))] == 2
        assert values[("circuitry_sweep_jobs", (("sweep", "pushed"),))] == 3
    finally:
        server.shutdown()
        server.server_close()
    # no gateway there: one line saying why, not an exception
    reason = m.push(f"http://127.0.0.1:{server.server_port}")
    assert reason and "\n" not in reason


# ---------------------------------------------------------------- safe as shipped (issue 15)

SECRETS = ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


def pod_specs(d) -> list[dict]:
    """Every pod spec in a manifest (a dict with a `containers` list)."""
    return [n for n in walk(d) if isinstance(n, dict) and isinstance(n.get("containers"), list)]


def kube_docs() -> list[dict]:
    return [d for p in sorted(KUBERAY.glob("*.yaml")) for d in docs(p)]


def test_token_auth_on_in_both_stacks():
    compose = docs(COMPOSE)[0]["services"]
    for name in ("ray-head", "ray-worker"):
        env = compose[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name
    assert kube("ConfigMap", "circuitry-env")["data"]["RAY_AUTH_MODE"] == "token"
    ray_containers = containers(kube("RayCluster")) + containers(kube("RayJob"))
    assert len(ray_containers) == 4  # head, cpu and gpu workers, the RayJob's submitter
    for c in ray_containers:
        assert {"configMapRef": {"name": "circuitry-env"}} in c["envFrom"], c["name"]
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "circuitry-ray-auth",
                                                                      "key": "auth_token"}, c["name"]


def test_compose_refuses_to_start_without_its_secrets():
    """Every use of a secret is `${VAR:?message}` (compose stops with the message when it is unset
    or empty); none has a default, and .env.example leaves them empty."""
    text = COMPOSE.read_text()
    for var in SECRETS:
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, var
        assert all(u.startswith(":?") and len(u) > 10 for u in uses), (var, uses)
    assert not re.search(r"\$\{RAY_AUTH_MODE", text)  # not even overridable to disabled
    assert not re.search(r"\$\{\w*(PASSWORD|TOKEN)\w*:?-", text)  # no defaults for any secret
    example = dict(line.split("=", 1) for line in (DEPLOY / "compose" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert all(example[var] == "" for var in SECRETS), example
    grafana = docs(COMPOSE)[0]["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_no_secret_in_the_kubectl_apply_path():
    """`kubectl apply -f deploy/kuberay/` (-R too) applies *.yaml, *.yml and *.json: none of them
    may hold a Secret; the example keeps its shape under a name kubectl skips."""
    applied = [p for p in KUBERAY.rglob("*") if p.suffix in (".yaml", ".yml", ".json")]
    for p in applied:
        for d in docs(p):
            assert d.get("kind") != "Secret", p
    example = KUBERAY / "secrets.yaml.example"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs(example)}
    assert kinds == {("Secret", "circuitry-ray-auth"), ("Secret", "mlflow-db")}
    refs = {n["secretKeyRef"]["name"] for d in kube_docs() for n in walk(d)
            if isinstance(n, dict) and "secretKeyRef" in n}
    assert refs == {"circuitry-ray-auth", "mlflow-db"}


def test_only_the_ray_head_reaches_mlflow():
    mlflow_labels = kube("Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in kube_docs() if d["kind"] == "NetworkPolicy"
                and d["spec"]["podSelector"]["matchLabels"].items() <= mlflow_labels.items()]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert "Ingress" in spec["policyTypes"]
    cluster = kube("RayCluster")["metadata"]["name"]
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, peer  # no namespaceSelector, no ipBlock
            assert peer["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster, "ray.io/node-type": "head"}
    # compose: PostgreSQL only with MLflow; MLflow only with the Ray head (the driver)
    services = docs(COMPOSE)[0]["services"]
    nets = {name: set(s.get("networks", [])) for name, s in services.items()}
    assert all(nets.values()), nets  # nobody on the default network, where everyone meets
    assert [n for n in nets if nets[n] & nets["postgres"]] == ["postgres", "mlflow"]
    assert sorted(n for n in nets if nets[n] & nets["mlflow"] and n != "mlflow") == ["postgres", "ray-head"]


def test_ray_and_mlflow_run_unprivileged():
    pods = [p for kind in ("RayCluster", "RayJob", "Deployment") for p in pod_specs(kube(kind))]
    assert len(pods) == 5  # head, cpu, gpu, submitter, mlflow
    for pod in pods:
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["fsGroup"] == 1000, sc
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, c["name"]
            assert csc["capabilities"]["drop"] == ["ALL"], c["name"]
    assert "useradd --create-home --uid 1000" in (DEPLOY / "Dockerfile").read_text()
    services = docs(COMPOSE)[0]["services"]
    for name in ("ray-head", "ray-worker", "mlflow"):
        s = services[name]
        assert s["cap_drop"] == ["ALL"] and "no-new-privileges:true" in s["security_opt"], name
        assert s["user"].split(":")[0] not in ("0", "root"), name


def third_party_images() -> set[str]:
    found = {i for p in YAML_FILES for i in images(docs(p)) if i != IMAGE}
    found.add(re.search(r"ARG PYTHON_IMAGE=(\S+)", (DEPLOY / "Dockerfile").read_text()).group(1))
    return found


def test_third_party_images_are_pinned_or_listed_for_a_pin():
    """Digests cannot be checked here (no registry): an image is either pinned by digest in the
    files or listed in deploy/README.md's table of images that need a pin -- and the table lists
    only images the files use."""
    text = (DEPLOY / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|[^\n]*\| needs a pin \|$", text, re.M))
    used = third_party_images()
    assert {"postgres:16-alpine", "python:3.11-slim"} <= used
    for image in used:
        assert re.search(r"@sha256:[0-9a-f]{64}$", image) or image in listed, image
    assert listed <= used, listed - used
    assert "crane digest" in text and "docker buildx imagetools inspect" in text
