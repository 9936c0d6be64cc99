#!/usr/bin/env python3
"""Render every kustomization under deploy/ with `kubectl kustomize` and validate each object
offline: Kubernetes' own kinds against the API's schemas (`kubernetes-validate`, strict: unknown
fields refused), the Gateway API Inference Extension's InferencePool and the Gateway API's
HTTPRoute against deploy/schemas/. A kind with no schema fails. Then a few properties the
manifests must keep (probes on /health and /ready, a grace period longer than the shutdown
timeout, the router reading /ready).

Usage: validate.py KUBECTL [KUBERNETES_VERSION]
Prints a cargo-style "test result:" line; exit status 1 on any failure.
"""
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBECTL = sys.argv[1]
VERSION = sys.argv[2] if len(sys.argv) > 2 else "1.37.0"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy")
SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1.json",
}


def render(variant):
    out = subprocess.run([KUBECTL, "kustomize", os.path.join(ROOT, variant)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize deploy/{variant}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(obj):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in SCHEMAS:
        with open(os.path.join(ROOT, "schemas", SCHEMAS[key])) as f:
            jsonschema.validate(obj, json.load(f))
        return
    # Raises ValidationError on a violation, SchemaNotFoundError for a kind it does not know.
    kubernetes_validate.validate(obj, VERSION, strict=True)


def by(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def properties(variant, objs):
    dep = by(objs, "Deployment", "suanli")
    pod = dep["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "suanli")
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    timeout = next(int(a.split("=", 1)[1]) for a in c["args"] if a.startswith("--shutdown-timeout="))
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > timeout + pause, "grace period too short"
    assert pod["initContainers"][0]["args"][0] == "pull"
    assert by(objs, "PodDisruptionBudget", "suanli")["spec"]["selector"] == dep["spec"]["selector"]
    if variant == "router":
        args = by(objs, "Deployment", "suanli-router")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--health-check-endpoint=/ready" in args
        assert "--service-discovery" in args
    if variant == "gateway":
        pool = by(objs, "InferencePool", "suanli")
        assert pool["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        assert pool["spec"]["targetPorts"][0]["number"] == c["ports"][0]["containerPort"]
        by(objs, "Service", pool["spec"]["extensionRef"]["name"])


def main():
    passed = failed = 0
    for variant in ["base", "router", "gateway"]:
        try:
            objs = render(variant)
            for o in objs:
                what = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
                try:
                    validate(o)
                except kubernetes_validate.SchemaNotFoundError:
                    raise AssertionError(f"{what}: no schema for {o.get('apiVersion')} {o.get('kind')}")
                except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
                    where = "/".join(str(p) for p in getattr(e, "path", []))
                    raise AssertionError(f"{what}: {where}: {getattr(e, 'message', e)}")
            properties(variant, objs)
            kinds = sorted({o["kind"] for o in objs})
            print(f"deploy/{variant}: {len(objs)} objects valid ({', '.join(kinds)})")
            passed += 1
        except Exception as e:  # noqa: BLE001 - any failure is reported by variant
            failed += 1
            print(f"deploy/{variant}: FAILED: {e}")
    print(f"test result: {'ok' if failed == 0 else 'FAILED'}. {passed} passed; {failed} failed; "
          f"0 ignored; 0 measured; 0 filtered out (Kubernetes manifests, offline)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
