"""The chart's backup encryption keys: a Secret key mounted read-only as a file, and the
setting pointing at that very file (tests/helm/test_chart.py covers the chart as a whole)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from tests.helm.test_chart import CHART, kind, values


def test_the_key_file_is_mounted_from_the_secret_where_the_setting_points() -> None:
    spec: dict[str, Any] = kind("StatefulSet")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = PurePosixPath(env["SQLFLEET_BACKUP_ENCRYPTION_KEY_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["backup-keys"]["readOnly"] is True
    assert PurePosixPath(mounts["backup-keys"]["mountPath"]) == path.parent
    (volume,) = [v for v in spec["volumes"] if v["name"] == "backup-keys"]
    assert volume["secret"]["items"] == [{"key": "backup-encryption-keys", "path": path.name}]
    assert volume["secret"]["defaultMode"] == 0o440  # not world-readable
    assert "backup-encryption-keys" in kind("Secret", "secret.yaml")["stringData"]


def test_encryption_is_off_unless_keys_are_given() -> None:
    secrets = values()["secrets"]
    assert secrets["backupEncryptionKeys"] == "" and secrets["existingSecretHasBackupEncryptionKeys"] is False
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert ".Values.secrets.backupEncryptionKeys" in helpers.split('define "sqlfleet.hasSecret"')[1]
    statefulset = (CHART / "templates" / "statefulset.yaml").read_text()
    assert statefulset.count('include "sqlfleet.hasBackupKeys"') == 3  # env, mount, volume
