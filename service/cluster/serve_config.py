"""The files that deploy the service on an existing Ray cluster, generated from the settings: a Ray Serve config
(``serve deploy``) and a KubeRay ``RayService`` manifest for Kubernetes. Neither needs Ray to be written.

Secrets stay out of both: the admin token reaches the replicas through their environment
(``BLOCKDROP_ADMIN_TOKEN``, e.g. from a Kubernetes Secret). Settings left at their defaults are left out, so that
the shipped checkpoints are found wherever the package is installed on the cluster's nodes.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from service.config import Settings, VariantSettings

IMPORT_PATH = "service.cluster.deployments:app_builder"
RAY_VERSION = "2.60.0"
SECRETS = {"admin_token"}
# the HAProxy shim (service/cluster/haproxy_shim.py) as the package's console script installs it in the image
IMAGE_HAPROXY_SHIM = "/usr/local/bin/blockdrop-ray-haproxy"
CLIENT_TIMEOUT_SLACK_S = 5


def app_args(settings: Settings, portable: bool = True) -> dict[str, Any]:
    """The settings as a Serve application's ``args``: only what differs from the defaults when ``portable``
    (for a config file), all of it when the service starts its own cluster; never a secret (those reach the
    replicas through their environment: ``BLOCKDROP_ADMIN_TOKEN``)."""
    return settings.model_dump(mode="json", exclude=SECRETS, exclude_defaults=portable)


def cluster_environment(settings: Settings, haproxy_shim: str = IMAGE_HAPROXY_SHIM) -> dict[str, str]:
    """What Ray Serve (and the HAProxy shim it runs) reads from the environment of the cluster's processes."""
    if not settings.ray.haproxy:
        return {}
    environment = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # how long a stopping ingress replica keeps answering while HAProxy learns to route around it
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{settings.ray.ingress_drain_s:g}",
        # Ray's HAProxy config binds its stats and metrics on every interface and leaves its admin socket
        # world-writable; the shim it runs as the binary fixes that (haproxy_shim.py)
        "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_shim,
        "BLOCKDROP_HAPROXY_RETRY_AFTER_S": str(settings.retry_after_s),
        # Ray sets no time for the headers, so HAProxy waited an hour (timeout client) for half a header
        "BLOCKDROP_HAPROXY_HEADER_TIMEOUT_S": f"{settings.header_timeout_s:g}",
        # and an hour of silence from a client (Ray's default): now a little more than a body may take, so that
        # the ingress's 408 for a body that stalls comes first (service/api/body_bounds.py) and the connection
        # closes soon after; idle kept-alive connections and a wait for the answer have timeouts of their own
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(math.ceil(settings.body_timeout_s) + CLIENT_TIMEOUT_SLACK_S),
    }
    if settings.ray.haproxy_metrics_port:
        environment["BLOCKDROP_HAPROXY_METRICS_BIND"] = f"{settings.host}:{settings.ray.haproxy_metrics_port}"
    return environment


def variant_deployment(variant: VariantSettings, settings: Settings) -> dict[str, Any]:
    """One variant's deployment options, as Ray Serve's config schema spells them."""
    scaling = variant.ray
    options: dict[str, Any] = {
        "name": f"variant-{variant.name}",
        "max_ongoing_requests": scaling.max_ongoing_requests,
        "max_queued_requests": scaling.max_queued_requests,
        "max_surge_percent": settings.ray.max_surge_percent,
        # the requests in flight finish before a replica stops (the ingress waits on them)
        "graceful_shutdown_timeout_s": settings.request_timeout_s + 2,
        "health_check_period_s": 2.0,
        "ray_actor_options": {
            "num_cpus": scaling.num_cpus,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(scaling.torch_threads)}},
        },
    }
    if scaling.max_replicas == scaling.min_replicas:
        options["num_replicas"] = scaling.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
            "look_back_period_s": scaling.look_back_period_s,
        }
    return options


def ingress_deployment(settings: Settings) -> dict[str, Any]:
    ray = settings.ray
    return {
        "name": "ingress",
        "num_replicas": ray.ingress_replicas,
        "max_ongoing_requests": ray.ingress_max_ongoing_requests,
        "max_surge_percent": ray.max_surge_percent,
        "graceful_shutdown_timeout_s": settings.request_timeout_s + 2,
        "ray_actor_options": {"num_cpus": ray.ingress_cpus},
    }


def serve_config(settings: Settings) -> dict[str, Any]:
    """A Ray Serve config (``serve deploy FILE``) for the service with ``settings``."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [
            {
                "name": settings.ray.app_name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": app_args(settings),
                "deployments": [
                    ingress_deployment(settings),
                    *(variant_deployment(v, settings) for v in settings.variants),
                ],
            }
        ],
    }


def rayservice_manifest(settings: Settings, image: str = "blockdrop-serving-ray:latest") -> dict[str, Any]:
    """A KubeRay ``RayService``: the Serve config above, on a head pod and an autoscaled group of worker pods
    running ``image`` (docker/Dockerfile built with ``--build-arg EXTRAS=[ray]``)."""
    port = settings.port

    def container(name: str, cpu: str, memory: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
        return {
            "name": name,
            "image": image,
            "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
            "ports": [{"name": port_name, "containerPort": number} for port_name, number in ports],
            "env": [
                {
                    "name": "BLOCKDROP_ADMIN_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "blockdrop-admin", "key": "token", "optional": True}},
                },
                *({"name": name, "value": value} for name, value in cluster_environment(settings).items()),
            ],
            # Ray keeps its object store in /dev/shm: a container's default is 64 MiB (Ray falls back to /tmp)
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        }

    def pod(container_spec: dict[str, Any]) -> dict[str, Any]:
        memory_volume = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
        return {"spec": {"containers": [container_spec], "volumes": [memory_volume]}}

    head_ports = [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001), ("serve", port), ("metrics", 8080)]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "blockdrop", "labels": {"app.kubernetes.io/name": "blockdrop-serving"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(settings), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # the head schedules no replicas: its CPUs go to the GCS, the controller and the proxy
                    "rayStartParams": {"num-cpus": "0", "metrics-export-port": "8080"},
                    "template": pod(container("ray-head", "2", "4Gi", head_ports)),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu-workers",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "rayStartParams": {"metrics-export-port": "8080"},
                        "template": pod(container("ray-worker", "2", "4Gi", [("serve", port), ("metrics", 8080)])),
                    }
                ],
            },
        },
    }


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False)
