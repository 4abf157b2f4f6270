#!/usr/bin/env python3
"""deploy/validate's checks of deploy/kubernetes, run in its venv (see there).

    check_manifests.py DIR -k 1.30.0 [-k 1.37.0 …] [--binary PATH/klarna-stepup]

1. Every manifest against the Kubernetes JSON schemas of each version given, strictly (an
   unknown field is an error, and so is a kind with no schema), offline: kubernetes-validate
   ships the schemas. YAML with a repeated key is refused, as kubectl does.
2. kustomization.yaml lists every manifest but secret.yaml (placeholders, never applied by
   `apply -k`), and nothing that is missing.
3. The files agree with each other and with the proxy's configuration: selectors, port
   names, the config mount, every key's `env = "…"` mapped from the Secret, the listen and
   admin ports, terminationGracePeriodSeconds >= preStop + grace_period_secs + margin.
4. With --binary: `klarna-stepup check-config` on the ConfigMap's TOML, with only the
   environment the Deployment maps from the Secret (the placeholders) for the keys.
Exit status 1 with every problem listed, 0 when all hold.
"""

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

NOT_IN_KUSTOMIZATION = {"secret.yaml"}
MARGIN_SECS = 5  # terminationGracePeriodSeconds beyond preStop + grace_period_secs

problems = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with a repeated key (PyYAML keeps the last)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(path):
    try:
        return [d for d in yaml.load_all(path.read_text(), Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        fail(path.name, f"not valid YAML: {e}")
        return []


def schemas(files, versions):
    """{(kind, name): doc}, each doc checked against every version's schema."""
    found = {}
    for path in files:
        for doc in load(path):
            if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
                fail(path.name, "a document without apiVersion, kind and metadata")
                continue
            name = doc["metadata"].get("name", "?")
            where = f"{path.name} {doc['kind']}/{name}"
            if (doc["kind"], name) in found:
                fail(where, "defined twice")
            found[(doc["kind"], name)] = doc
            before = len(problems)
            for v in versions:
                try:
                    kv.validate(doc, v, strict=True)
                except kv.ValidationError as e:
                    at = ".".join(str(p) for p in e.absolute_path) or "(top)"
                    fail(f"{where} (Kubernetes {v})", f"{at}: {e.message}")
                except (kv.SchemaNotFoundError, kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
                    fail(f"{where} (Kubernetes {v})", e.message)
            if len(problems) == before:
                print(f"ok   {where}: schemas of Kubernetes {', '.join(versions)} (strict)")
    return found


def kustomization(directory, files):
    k = directory / "kustomization.yaml"
    if not k.exists():
        return
    docs = load(k)
    listed = set(docs[0].get("resources", [])) if docs else set()
    for r in sorted(listed):
        if not (directory / r).is_file():
            fail("kustomization.yaml", f"lists {r}, which does not exist")
    for f in files:
        if f.name not in listed and f.name not in NOT_IN_KUSTOMIZATION:
            fail("kustomization.yaml", f"does not list {f.name}")
        if f.name in listed and f.name in NOT_IN_KUSTOMIZATION:
            fail("kustomization.yaml", f"lists {f.name} (placeholders: apply -k must not overwrite the real one)")
    print("ok   kustomization.yaml: lists every manifest but " + ", ".join(sorted(NOT_IN_KUSTOMIZATION)))


def one(found, kind):
    docs = [d for (k, _), d in found.items() if k == kind]
    if len(docs) != 1:
        fail(kind, f"expected exactly one, found {len(docs)}")
        return None
    return docs[0]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def secret_values(secret):
    values = dict(secret.get("stringData") or {})
    for k, v in (secret.get("data") or {}).items():
        values[k] = base64.b64decode(v).decode()
    return values


def consistency(found):
    """Cross-checks; returns (toml text, {env var: value}) for check-config, or None."""
    dep, svc, cm, secret = (one(found, k) for k in ("Deployment", "Service", "ConfigMap", "Secret"))
    pdb, hpa = one(found, "PodDisruptionBudget"), one(found, "HorizontalPodAutoscaler")
    if None in (dep, svc, cm, secret, pdb, hpa):
        return None
    where = f"Deployment/{dep['metadata']['name']}"
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})

    def selects(what, selector):
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            fail(what, f"selector {selector} does not select the pod labels {labels}")

    selects(f"{where} spec.selector", dep["spec"]["selector"].get("matchLabels"))
    selects(f"Service/{svc['metadata']['name']}", svc["spec"].get("selector"))
    selects(f"PodDisruptionBudget/{pdb['metadata']['name']}", pdb["spec"]["selector"].get("matchLabels"))
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", dep["metadata"]["name"]):
        fail(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}", f"scales {target}, not the Deployment")

    spec = pod["spec"]
    c = spec["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for p in svc["spec"]["ports"]:
        if isinstance(p["targetPort"], str) and p["targetPort"] not in ports:
            fail(f"Service port {p['name']}", f"targetPort {p['targetPort']} is no container port")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get or get.get("path") != path or get.get("port") != "admin":
            fail(f"{where} {probe}", f"must be GET {path} on port admin")

    sc = c.get("securityContext", {})
    if not (spec.get("securityContext", {}).get("runAsNonRoot") or sc.get("runAsNonRoot")):
        fail(where, "runAsNonRoot is not set")
    if not sc.get("readOnlyRootFilesystem") or sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail(where, "the container needs readOnlyRootFilesystem and capabilities.drop [ALL]")

    # The configuration: mounted from the ConfigMap at the path `--config` names.
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    text = None
    for vol in spec.get("volumes", []):
        ref = vol.get("configMap")
        if not ref or ref["name"] != cm["metadata"]["name"]:
            continue
        for item in ref.get("items", []):
            if item["key"] not in cm.get("data", {}):
                fail(f"{where} volume {vol['name']}", f"ConfigMap has no key {item['key']}")
            elif f"{mounts.get(vol['name'])}/{item['path']}" == config_path:
                text = cm["data"][item["key"]]
    if text is None:
        fail(where, f"--config {config_path} is not the ConfigMap's mounted file")
        return None
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"ConfigMap/{cm['metadata']['name']}", f"not valid TOML: {e}")
        return None
    server = config.get("server", {})

    # Every `env = "…"` of the configuration, mapped from the Secret.
    named = [k["env"] for s in ("acquirer_return", "webhooks")
             if config.get(s, {}).get("enabled") for k in config[s].get("keys", [])]
    if "client_key_env" in server.get("upstream_tls", {}):
        named.append(server["upstream_tls"]["client_key_env"])
    values = secret_values(secret)
    mapped = {}
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            continue
        if ref["name"] != secret["metadata"]["name"] or ref["key"] not in values:
            fail(f"{where} env {e['name']}", f"Secret {ref['name']} has no key {ref['key']}")
        else:
            mapped[e["name"]] = values[ref["key"]]
    for var in named:
        if var not in mapped:
            fail(where, f"the configuration names env {var}, which no secretKeyRef provides")

    # Ports and shutdown timings.
    for key, port in (("listen", "http"), ("admin", "admin")):
        if key not in server:
            fail("configuration [server]", f"{key} is missing (container port {port})")
        elif not isinstance(server[key], str) or ":" not in server[key]:
            fail("configuration [server]", f"{key} = {server[key]!r} is not host:port")
        elif port_of(server[key]) != ports.get(port):
            fail("configuration [server]", f"{key} = {server[key]}, container port {port} = {ports.get(port)}")
    pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    grace = server.get("grace_period_secs", 5)
    budget = spec.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int):
        fail("configuration [server]", f"grace_period_secs = {grace!r} is not a number of seconds")
    elif budget < pre_stop + grace + MARGIN_SECS:
        fail(where, f"terminationGracePeriodSeconds {budget} < preStop {pre_stop} + "
                    f"grace_period_secs {grace} + margin {MARGIN_SECS}")
    print(f"ok   cross-references: selectors, ports, config mount, env {', '.join(named)} from the "
          f"Secret, shutdown {pre_stop}+{grace}+margin <= {budget} s")
    return text, mapped


def check_config(binary, text, env_from_secret):
    env = {k: v for k, v in os.environ.items() if k not in env_from_secret}
    env.update(env_from_secret)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        r = subprocess.run([binary, "check-config", f.name], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail("configuration (klarna-stepup check-config)", "\n" + r.stderr.rstrip())
    else:
        for line in r.stderr.splitlines():
            print(f"     {line}")
        print(f"ok   configuration: {binary} check-config accepts it")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("-k", "--kubernetes-version", action="append", required=True)
    ap.add_argument("--binary")
    a = ap.parse_args()
    files = sorted(p for p in a.directory.glob("*.y*ml") if p.name != "kustomization.yaml")
    if not files:
        fail(str(a.directory), "no manifests")
    found = schemas(files, a.kubernetes_version)
    kustomization(a.directory, files)
    checked = consistency(found)
    if a.binary and checked:
        check_config(a.binary, *checked)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
