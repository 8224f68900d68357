"""Validates an SBOM with its format's own validator; exit 0 when valid, 1
with the validator's messages when not, 2 on bad usage.

  sbom_validate.py spdx FILE        spdx-tools: parse, then validate_full_spdx_document (SPDX 2.3)
  sbom_validate.py cyclonedx FILE   cyclonedx-python-lib: the CycloneDX 1.5 JSON schema, strict

Run with the interpreter of the virtual environment contrib/install-deps.sh
makes (IMGFORGE_SBOM_TOOLS, default /var/cache/imgforge/sbom-tools).
"""
import sys


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("spdx", "cyclonedx"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "spdx":
        from spdx_tools.spdx.parser.parse_anything import parse_file
        from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

        try:
            doc = parse_file(path)
        except Exception as e:  # the parser's own refusal is a finding too
            print(f"{path}: not parsed as SPDX: {e}")
            return 1
        messages = [m.validation_message for m in validate_full_spdx_document(doc)]
    else:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator

        with open(path, encoding="utf-8") as f:
            error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(f.read())
        messages = [str(error)] if error else []
    for m in messages:
        print(f"{path}: {m}")
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main())
