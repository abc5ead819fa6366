"""The security package stands alone: every module imports, and its cores work, in a Python
where Flask, its extensions, werkzeug, the web package and torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import REPO

BLOCKED = ("flask", "flask_cors", "flask_limiter", "werkzeug", "web", "torch")

SCRIPT = """
import importlib, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker let {name} through")

import security

modules = sorted(m.name for m in pkgutil.walk_packages(security.__path__, "security."))
for name in modules:
    importlib.import_module(name)

from limits.storage import MemoryStorage

from security.abuse import BanList, Gatekeeper
from security.audit import AuditLog, client_label
from security.headers import security_headers

identity = Gatekeeper(default_limit="5 per minute").identify({}, "2001:db8::1")
bans = BanList(MemoryStorage(), after=1, window_s=60, ban_s=60)
assert bans.strike(identity.subject) and bans.retry_after(identity.subject) is not None
assert client_label("198.51.100.7", "truncated", b"") == "198.51.100.0"
AuditLog().emit(request_id="r1", client="198.51.100.7", method="GET", path="/", status=200,
                latency_s=0.001)
headers = security_headers("/kiosk", "text/html")
assert "camera=(self)" in headers["Permissions-Policy"]
loaded = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
print(json.dumps({"modules": modules, "subject": identity.subject, "loaded": loaded}))
"""


def test_security_imports_and_works_without_flask_web_or_torch():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *audit, report = done.stdout.splitlines()
    result = json.loads(report)
    assert {"security.abuse", "security.audit", "security.headers"} <= set(result["modules"])
    assert "security.api_keys" in result["modules"] and "security.uploads" in result["modules"]
    assert result["subject"] == "ip:2001:db8::/64"
    assert result["loaded"] == []
    assert json.loads(audit[0])["client"] == "198.51.100.0"
