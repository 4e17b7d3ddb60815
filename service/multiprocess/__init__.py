"""Several API server processes in front of one batching model worker per variant, on one machine.

``blockdrop serve --api-servers N`` (N > 1) starts a supervisor (``supervisor.py``) that binds the HTTP port once,
starts one model server per variant replica (``model_server.py``: the model, the device and the micro-batcher)
and N API servers (``api_server.py``: HTTP, gRPC, decoding, routing, answering), and replaces either kind when it
dies or hangs. API servers hand images to the model servers through shared memory (``shared_memory.py``) and
small frames on Unix sockets (``frames.py``, ``model_client.py``); what every API server must see alike (metrics,
predictions awaiting feedback, operator changes) lives in the runtime folder (``shared_state.py``,
``shared_metrics.py``). ``backend.py`` gives an API server's data plane its executors from all this.
"""
