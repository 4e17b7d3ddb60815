"""HTTP layers over ``service.dataplane``: v1 JSON routes, health, metrics and the Open Inference Protocol v2."""
