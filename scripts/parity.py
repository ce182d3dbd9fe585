"""Compare two junit reports: the behaviour tests must have identical outcomes in both forms.

Usage: python scripts/parity.py RUNTIME.xml NATIVE.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def outcomes(path: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        result[name] = outcome
    return result


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2
    runtime, native = outcomes(sys.argv[1]), outcomes(sys.argv[2])
    problems = []
    for name in sorted(set(runtime) | set(native)):
        a, b = runtime.get(name, "absent"), native.get(name, "absent")
        if a != b:
            problems.append(f"  {name}: runtime={a} native={b}")
        elif a != "passed":
            problems.append(f"  {name}: {a} in both forms")
    passed = sum(1 for v in runtime.values() if v == "passed")
    if problems:
        print("parity: FAILED — the two forms differ or did not pass:")
        print("\n".join(problems))
        return 1
    print(f"parity: OK — {passed} behaviour tests passed in both forms, identical sets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
