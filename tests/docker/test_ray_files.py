"""The Ray Serve config and the KubeRay RayService manifest in docker/ray: what the settings generate, valid for
Ray Serve's config schema and for KubeRay's CRD (nothing here runs Kubernetes)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from ray.serve.schema import ServeDeploySchema

from service.cluster.deployments import build_app
from service.cluster.serve_config import app_args, rayservice_manifest, serve_config, to_yaml
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "docker" / "ray" / "serve-config.yaml"
RAYSERVICE = ROOT / "docker" / "ray" / "rayservice.yaml"
CRD = Path(__file__).parent / "schemas" / "ray.io_rayservices.yaml.gz"


def rayservice_schema() -> dict:
    crd = yaml.safe_load(gzip.decompress(CRD.read_bytes()))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


# in a pod the Serve port must be reachable from the Kubernetes Service: the committed files bind every interface
POD_HOST = "0.0.0.0"


def print_config(*options: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", *options],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout


def test_committed_files_are_what_the_default_settings_generate_for_a_pod():
    settings = Settings(host=POD_HOST)
    assert SERVE_CONFIG.read_text() == to_yaml(serve_config(settings))
    assert RAYSERVICE.read_text() == to_yaml(rayservice_manifest(settings))


def test_print_config_writes_the_committed_files():
    for kind, path in (("serve", SERVE_CONFIG), ("kuberay", RAYSERVICE)):
        assert print_config("--host", POD_HOST, "--print-config", kind) == path.read_text()


def test_print_config_binds_the_host_asked_for():
    for options in (["--host", "127.0.0.1"], []):  # the default host is 127.0.0.1 too
        config = yaml.safe_load(print_config(*options, "--print-config", "serve"))
        assert config["http_options"]["host"] == "127.0.0.1"
        manifest = yaml.safe_load(print_config(*options, "--print-config", "kuberay"))
        assert yaml.safe_load(manifest["spec"]["serveConfigV2"])["http_options"]["host"] == "127.0.0.1"
    config = yaml.safe_load(print_config("--host", "10.1.2.3", "--print-config", "serve"))
    assert config["http_options"]["host"] == "10.1.2.3"


def test_serve_config_follows_ray_serves_schema_and_names_every_deployment():
    config = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text()))
    (app,) = config.applications
    assert app.import_path == "service.cluster.deployments:app_builder"
    names = {deployment.name for deployment in app.deployments}
    assert names == {"ingress", *(f"variant-{v.name}" for v in Settings().variants)}


def test_the_application_the_config_builds_has_the_configs_deployments():
    settings = Settings()
    application = build_app(app_args(settings))
    ingress = application._bound_deployment
    assert ingress.name == "ingress"
    variants = ingress.init_args[1]
    assert {name: bound._bound_deployment.name for name, bound in variants.items()} == {
        v.name: f"variant-{v.name}" for v in settings.variants
    }


def test_on_a_joined_cluster_the_token_goes_to_the_ingress_environment_not_its_arguments():
    settings = Settings(admin_token="s3cret")
    application = build_app(app_args(settings, portable=False), {"BLOCKDROP_ADMIN_TOKEN": "s3cret"})
    ingress = application._bound_deployment
    assert ingress.ray_actor_options["runtime_env"] == {"env_vars": {"BLOCKDROP_ADMIN_TOKEN": "s3cret"}}
    assert "s3cret" not in repr(ingress.init_args)
    for variant in ingress.init_args[1].values():
        assert "s3cret" not in repr(variant._bound_deployment.init_args)
        assert "BLOCKDROP_ADMIN_TOKEN" not in repr(variant._bound_deployment.ray_actor_options)


def test_rayservice_manifest_follows_kuberays_crd_and_embeds_the_serve_config():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    jsonschema.validate(manifest, rayservice_schema())
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == yaml.safe_load(SERVE_CONFIG.read_text())
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"


def test_an_invalid_manifest_is_caught_by_the_schema():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "many"
    try:
        jsonschema.validate(manifest, rayservice_schema())
    except jsonschema.ValidationError as error:
        assert "many" in error.message
    else:
        raise AssertionError("the schema accepted a string replica count")


def test_the_manifests_image_is_one_the_dockerfile_builds_with_ray():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG EXTRAS=" in dockerfile and 'pip install ".${EXTRAS}"' in dockerfile
    assert "--build-arg EXTRAS=[ray]" in dockerfile
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"} in head["env"]
    # HAProxy runs through the shim, the console script the package installs on the image's PATH
    shim = next(e["value"] for e in head["env"] if e["name"] == "RAY_SERVE_HAPROXY_BINARY_PATH")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'{Path(shim).name} = "service.cluster.haproxy_shim:main"' in pyproject
    assert shim.startswith("/usr/local/bin/") and "FROM python:" in dockerfile


def test_secrets_stay_out_of_the_generated_files():
    settings = Settings(admin_token="s3cret")
    assert "s3cret" not in to_yaml(serve_config(settings)) + to_yaml(rayservice_manifest(settings))
    assert "admin_token" not in app_args(settings)
    assert "admin_token" not in app_args(settings, portable=False)  # nor in what `serve --ray` deploys
