"""Exit 1 with one line unless the pytest JUnit report names at least one GPU test that ran.

``make test-gpu`` uses it: a run where every gpu test skipped (no CUDA, no tensorrt) or none
was collected must not pass for a GPU check.
"""

import sys
import xml.etree.ElementTree as ET


def ran(report: str) -> tuple[int, int]:
    """(tests that ran, tests skipped) in a JUnit XML report."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError) as exc:
        raise SystemExit(f"make test-gpu: no readable test report {report} ({exc})") from None
    cases = list(root.iter("testcase"))
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    return len(cases) - skipped, skipped


if __name__ == "__main__":
    done, skipped = ran(sys.argv[1])
    if done == 0:
        print(f"make test-gpu: FAILED: no GPU test ran ({skipped} skipped; see the reasons "
              f"above)", file=sys.stderr)
        sys.exit(1)
    print(f"make test-gpu: {done} GPU tests ran, {skipped} skipped", file=sys.stderr)
