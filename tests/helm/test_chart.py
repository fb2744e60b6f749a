"""The Helm chart without a cluster (and without the helm binary): every file parses, every
value a template uses exists and is documented, the probes hit routes the app serves, every
SQLFLEET_* variable is a real setting, the dashboard only uses exported metric names."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ops.settings import Settings
from router.app import SYSTEM_ROUTES
from tests.support.app import InProcess

CHART = Path(__file__).resolve().parents[2] / "helm" / "sqlfleet"
TEMPLATES = sorted((CHART / "templates").glob("*.yaml"))
ACTION = re.compile(r"\{\{-?.*?-?\}\}", re.S)
SETTINGS = {f"SQLFLEET_{f.name.upper()}" for f in fields(Settings)}


def without_actions(text: str) -> str:
    """Lines holding only template actions go; inline actions become a placeholder scalar."""
    kept = [line for line in text.splitlines() if line.strip() and ACTION.sub("", line).strip()]
    return ACTION.sub("PLACEHOLDER", "\n".join(kept))


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in TEMPLATES:
        for doc in yaml.safe_load_all(without_actions(path.read_text())):
            if doc:
                docs.append((path.name, doc))
    return docs


def kind(name: str, file: str | None = None) -> dict[str, Any]:
    (doc,) = [d for f, d in documents() if d.get("kind") == name and file in (None, f)]
    return doc


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def test_every_file_parses_and_has_the_parts_the_issue_lists() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "sqlfleet" and chart["version"]
    values()
    json.loads((CHART / "dashboards" / "sqlfleet.json").read_text())
    kinds = sorted(d["kind"] for _, d in documents())
    expected = "ConfigMap ConfigMap PodDisruptionBudget Secret Secret Service Service ServiceMonitor"
    expected += " StatefulSet"  # the second Secret: the token signing key's own (signing-key-secret.yaml)
    assert kinds == sorted(expected.split())
    for name, doc in documents():
        assert doc["apiVersion"] and doc["metadata"]["name"], name
    assert (CHART / "templates" / "_helpers.tpl").exists() and (CHART / "README.md").exists()
    assert (CHART.parents[1] / "Dockerfile").exists()


def test_every_value_a_template_uses_exists_and_is_documented() -> None:
    tree = values()
    lines = (CHART / "values.yaml").read_text().splitlines()
    used = set()
    for path in [*TEMPLATES, CHART / "templates" / "_helpers.tpl", CHART / "templates" / "NOTES.txt"]:
        used |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", path.read_text()))
    assert len(used) > 30
    for ref in sorted(used):
        node: Any = tree
        for part in ref.strip(".").split("."):
            assert isinstance(node, dict) and part in node, f".Values{ref} is not in values.yaml"
            node = node[part]
    # every key in values.yaml has a comment line right above it (or above its first sibling list)
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):", line)
        if match:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#"), f"values.yaml line {i + 1} ({match.group(2)}) has no comment"


def test_every_value_is_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()

    def walk(node: Any, prefix: str) -> list[str]:
        if not isinstance(node, dict) or not node or prefix in ("settings", "dashboard.labels"):
            return [prefix]
        return [k for key, child in node.items() for k in walk(child, f"{prefix}.{key}" if prefix else key)]

    for key in walk(values(), ""):
        assert f"`{key}`" in readme, key


def test_probes_point_at_routes_the_app_serves() -> None:
    routes = {r.path for r in SYSTEM_ROUTES}
    (container,) = kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    probes = {
        name: container[name]["httpGet"]["path"]
        for name in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    assert set(probes.values()) <= routes
    assert kind("ServiceMonitor")["spec"]["endpoints"][0]["path"] in routes


def test_the_chart_only_sets_real_settings() -> None:
    env = set(kind("ConfigMap", "configmap.yaml")["data"]) | {
        f"SQLFLEET_{k.upper()}" for k in values()["settings"]
    }
    (container,) = kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    text = (CHART / "templates" / "statefulset.yaml").read_text()
    env |= {e["name"] for e in container["env"]} | set(re.findall(r"SQLFLEET_[A-Z_]+", text))
    env |= set(re.findall(r"SQLFLEET_[A-Z_]+", (CHART / "templates" / "secret.yaml").read_text()))
    # SQLFLEET_PLACEHOLDER is the ConfigMap's range over .Values.settings, checked through its keys
    ours = {e for e in env if e.startswith("SQLFLEET_") and e != "SQLFLEET_PLACEHOLDER"}
    assert ours - SETTINGS == set()
    assert {"SQLFLEET_DATA_DIR", "SQLFLEET_SHUTDOWN_TIMEOUT", "SQLFLEET_ADMIN_KEY"} <= ours
    docker = re.findall(r"SQLFLEET_[A-Z_]+", (CHART.parents[1] / "Dockerfile").read_text())
    assert set(docker) <= SETTINGS


def test_shutdown_fits_in_the_grace_period_and_the_pod_is_locked_down() -> None:
    v = values()
    assert v["shutdownTimeout"] < v["terminationGracePeriodSeconds"]
    assert v["shutdownTimeout"] == Settings.load(environ={}).shutdown_timeout
    spec = kind("StatefulSet")["spec"]
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = spec["template"]["spec"]["containers"]
    assert {m["name"] for m in container["volumeMounts"]} >= {"data", "tmp"}
    assert v["securityContext"]["readOnlyRootFilesystem"] is True
    assert v["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert v["podSecurityContext"]["runAsNonRoot"] is True and v["podSecurityContext"]["runAsUser"] != 0


def exported_names(app: InProcess) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(app.client.get("/metrics").text):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }.get(family.type, ("",))
        names |= {family.name + s for s in suffixes} | {s.name for s in family.samples}
    return names


def test_the_dashboard_uses_only_metrics_the_server_exports(app: InProcess) -> None:
    app.create("acme")
    assert app.query("acme", "select 1").status_code == 200
    exported = exported_names(app)
    dashboard = json.loads((CHART / "dashboards" / "sqlfleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bsqlfleet_[a-z0-9_]+", e)}
    assert len(used) >= 20
    assert used - exported == set()
    # and every sqlfleet family is on the dashboard
    families = {
        n for n in exported if n.startswith("sqlfleet_") and not n.endswith(("_created", "_sum", "_count"))
    }
    shown = {re.sub(r"_(bucket|total)$", "", n) for n in used}
    missing = {re.sub(r"_(bucket|total)$", "", n) for n in families} - shown
    assert missing == set()


def test_cluster_mode_makes_each_pod_a_node_and_refuses_what_it_cannot_run() -> None:
    """Without the helm binary: the StatefulSet's cluster variables (rendered when
    cluster.enabled) name each pod and reach it through the headless Service, and the chart
    fails to render without etcd, an S3 replica, a shared admin key or a shared signing key."""
    (container,) = kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["SQLFLEET_NODE_ID"]["value"] == "$(POD_NAME)"
    assert env["SQLFLEET_NODE_URL"]["value"].startswith("http://$(POD_NAME).PLACEHOLDER-headless.")
    assert {
        "SQLFLEET_CLUSTER_ETCD",
        "SQLFLEET_CLUSTER_NAME",
        "SQLFLEET_CLUSTER_LEASE_TTL",
        "SQLFLEET_CLUSTER_TAKEOVER_GRACE",
    } <= set(env)
    defaults = {f.name: f.default for f in fields(Settings)}
    assert values()["cluster"]["takeoverGrace"] == defaults["cluster_takeover_grace"]
    checks = (CHART / "templates" / "_helpers.tpl").read_text().split('define "sqlfleet.clusterChecks"')[1]
    for needed in ("etcdEndpoints", "s3://", "adminKey", "hasSigningKey"):
        assert needed in checks
    assert checks.count("fail ") == 4
