"""The chart keeps the token signing key where a lost data volume cannot take it: in a Secret of
its own (given, or generated at install and reused on upgrades), kept by `helm uninstall`, and
mounted read-only where the signing_key_file setting points (tests/helm/test_chart.py covers
the chart as a whole; no helm binary here, so the template's logic is checked as text)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ops import keys
from tests.helm.test_chart import CHART, kind, values


def test_the_signing_key_is_generated_into_its_own_secret_by_default() -> None:
    secrets = values()["secrets"]
    assert secrets["signingKey"] == "" and secrets["generateSigningKey"] is True
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    owns = helpers.split('define "sqlfleet.ownsSigningKey"')[1].split("{{- end }}")[0]
    assert ".Values.secrets.generateSigningKey" in owns and ".Values.secrets.signingKey" in owns
    has = helpers.split('define "sqlfleet.hasSigningKey"')[1].split("{{- end }}")[0]
    assert 'include "sqlfleet.ownsSigningKey"' in has

    template = (CHART / "templates" / "signing-key-secret.yaml").read_text()
    assert 'genPrivateKey "ed25519"' in template  # generated once ...
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template  # ... and reused on upgrades
    secret = kind("Secret", "signing-key-secret.yaml")
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}  # outlives uninstall
    assert "signing-key.pem" in secret["data"]
    assert "signing-key.pem" not in (kind("Secret", "secret.yaml").get("stringData") or {})


def test_the_secret_is_mounted_where_the_setting_points() -> None:
    spec: dict[str, Any] = kind("StatefulSet")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = PurePosixPath(env["SQLFLEET_SIGNING_KEY_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["keys"]["readOnly"] is True and PurePosixPath(mounts["keys"]["mountPath"]) == path.parent
    (volume,) = [v for v in spec["volumes"] if v["name"] == "keys"]
    assert volume["secret"]["items"] == [{"key": "signing-key.pem", "path": path.name}]
    assert volume["secret"]["defaultMode"] == 0o440
    statefulset = (CHART / "templates" / "statefulset.yaml").read_text()
    assert 'secretName: {{ include "sqlfleet.signingKeySecretName" . }}' in statefulset


def test_the_key_helm_generates_is_one_the_server_loads(tmp_path: Path) -> None:
    # Sprig's genPrivateKey "ed25519" writes a PKCS#8 "PRIVATE KEY" PEM block
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    (tmp_path / "signing-key.pem").write_bytes(pem)
    loaded = keys.signing_key(tmp_path / "signing-key.pem", tmp_path / "data")
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert loaded.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)
