"""Validates deploy/k8s against the Kubernetes schemas (tests/deploy.rs runs this in a venv
with a pinned kubernetes-validate).

Every document of every YAML file is checked, strictly (unknown fields refused), against each
Kubernetes version given. kubernetes-validate has no schema for custom resources and would only
warn about them; here a kind without a schema is an error, except:
* ServiceMonitor (Prometheus Operator): checked against tests/k8s/servicemonitor.schema.json;
* Kustomization (kustomize, not a cluster object): its `resources` must be files of the folder.

Prints {"documents": [...], "errors": [...]} as JSON (the documents for the Rust test's own
checks) and exits 1 when there are errors.

    python validate.py DEPLOY_K8S_DIR SERVICEMONITOR_SCHEMA VERSION...
"""

import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml


def main(folder, monitor_schema_path, versions):
    with open(monitor_schema_path) as f:
        monitor_schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(monitor_schema)
    monitor = jsonschema.Draft202012Validator(monitor_schema)
    documents, errors = [], []
    files = sorted(n for n in os.listdir(folder) if n.endswith((".yaml", ".yml")))
    for name in files:
        with open(os.path.join(folder, name)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            errors.append(f"{name}: no document")
        for doc in docs:
            kind = doc.get("kind")
            where = f"{name}: {kind}/{doc.get('metadata', {}).get('name')}"
            documents.append({"file": name, "document": doc})
            if kind == "Kustomization":
                for resource in doc.get("resources", []):
                    if not os.path.isfile(os.path.join(folder, resource)):
                        errors.append(f"{where}: resource {resource} is not a file here")
            elif kind == "ServiceMonitor":
                for e in monitor.iter_errors(doc):
                    errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            else:
                for version in versions:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        errors.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
                    except kubernetes_validate.SchemaNotFoundError as e:
                        errors.append(f"{where}: {e.message}")
    print(json.dumps({"documents": documents, "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
