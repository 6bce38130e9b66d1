"""Validates deploy/compose.yaml against the Compose Specification's JSON schema (tests/deploy.rs
runs this in a venv with pinned jsonschema and PyYAML).

The schema, tests/compose/compose-spec.json, is vendored from github.com/compose-spec/compose-spec
(schema/compose-spec.json; see tests/compose/README.md for the commit). YAML merge keys (`<<`)
are resolved first, as Compose does. Compose interpolates `${VAR:-default}` before validating;
the only interpolated values here are strings, whose type interpolation does not change.

Prints {"compose": ..., "files": {...}, "errors": [...]} as JSON (the documents, for the Rust
test's own checks: the compose file and the other YAML files given) and exits 1 when there are
errors.

    python validate.py SCHEMA COMPOSE_FILE [OTHER_YAML...]
"""

import json
import sys

import jsonschema
import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping, as Compose's parser does
    (PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path):
    with open(path) as f:
        return yaml.load(f, Loader=UniqueKeyLoader)


def main(schema_path, compose_path, others):
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    compose = load(compose_path)
    for e in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.path))):
        errors.append(f"{compose_path}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
    files = {}
    for path in others:
        try:
            files[path] = load(path)
        except yaml.YAMLError as e:
            errors.append(f"{path}: {e}")
    print(json.dumps({"compose": compose, "files": files, "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
