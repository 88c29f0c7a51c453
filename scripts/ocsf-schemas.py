#!/usr/bin/env python3
"""Regenerate the vendored OCSF JSON Schemas the tests validate audit events against.

Run by hand from the repository root (not in CI; needs PyPI):

    python3 scripts/ocsf-schemas.py

It creates a throwaway venv, installs ocsf-json-schema==1.2.0 (whose wheel carries OCSF's
compiled schema exports), and writes one self-contained JSON Schema (Draft 2020-12, every
$ref local) per event class to tests/ocsf/1.8.0/<class_name>.json, generated with the
profiles in PROFILES below, plus OCSF's licence as the wheel ships it to tests/ocsf/LICENSE.
Output is pretty-printed with sorted keys, so a rerun gives the same bytes. After a change,
update tests/ocsf/README.md (date, profiles) and tests/support/ocsf.rs (the class list).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "ocsf-json-schema==1.2.0"
OCSF_VERSION = "1.8.0"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "ocsf"

# The profiles each class is generated with; the events must declare exactly these in
# metadata.profiles. Every class here applies host, security_control and container;
# network_proxy applies to the network classes only, and ai_model/message_context (the
# inference model and token counts) exist in api_activity only with ai_operation.
COMMON = ["container", "host", "security_control"]
PROFILES = {
    "network_activity": COMMON + ["network_proxy"],
    "http_activity": COMMON + ["network_proxy"],
    "ssh_activity": COMMON + ["network_proxy"],
    "process_activity": COMMON,
    "detection_finding": COMMON,
    "device_config_state_change": COMMON,
    "api_activity": ["ai_operation"] + COMMON,
}


def generate() -> None:
    """Write the schemas and the licence; runs inside the venv that has the package."""
    import ocsf_json_schema
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    export = get_ocsf_schema(OCSF_VERSION)
    schema = OcsfJsonSchemaEmbedded(export)
    for class_name, profiles in PROFILES.items():
        applicable = set(export["classes"][class_name]["profiles"])
        if not set(profiles) <= applicable:
            sys.exit(f"{class_name}: profiles {sorted(set(profiles) - applicable)} do not apply")
        class_schema = schema.get_class_schema(class_name, profiles)
        text = json.dumps(class_schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        path = OUT / OCSF_VERSION / f"{class_name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(text)} bytes, {class_schema['$id']}")

    licence = Path(ocsf_json_schema.__file__).parent / "ocsf" / "LICENSE.txt"
    (OUT / "LICENSE").write_bytes(licence.read_bytes())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--in-venv":
        generate()
        return
    with tempfile.TemporaryDirectory(prefix="ocsf-schemas-") as venv:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        python = Path(venv) / "bin" / "python"
        subprocess.run([python, "-m", "pip", "install", "--quiet", PACKAGE], check=True)
        subprocess.run([python, __file__, "--in-venv"], check=True)


if __name__ == "__main__":
    main()
