"""The service on a Ray cluster (``blockdrop serve --ray``, the optional extra ``.[ray]``).

An ingress deployment carries the same FastAPI app as the single-process service, with routing, A/B split,
stickiness, overrides and shadowing; each variant is a deployment of its own holding that variant's model and
micro-batcher, scaled by Ray on its own. What must be one across ingress replicas (predictions awaiting feedback,
operator changes, the metrics) lives in one named actor. Only ``deployments``, ``remote`` and ``state`` import Ray.
"""
