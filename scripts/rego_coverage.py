"""Fail when `opa test --coverage` of rego/ is below a threshold. Usage: rego_coverage.py OPA MIN"""

import json
import subprocess
import sys

opa, minimum = sys.argv[1], float(sys.argv[2])
out = subprocess.run(
    [opa, "test", "rego/", "--coverage", "--format", "json"],
    capture_output=True,
    text=True,
    check=True,
)
report = json.loads(out.stdout)
total = float(report.get("coverage", 0.0))
for name, f in sorted(report.get("files", {}).items()):
    if not name.endswith("_test.rego"):
        print(f"  coverage {f.get('coverage', 0):6.2f}%  {name}")
print(f"rego coverage {total:.2f}% (minimum {minimum:.0f}%)")
sys.exit(0 if total >= minimum else 1)
