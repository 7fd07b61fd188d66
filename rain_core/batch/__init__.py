"""`rain batch` on Ray: the jobs file (`jobs`), the worker actor (`worker`), the driver (`driver`).

Ray is an optional extra (`pip install "comfyui-rain[cluster]"`): only `driver` imports it, when a batch starts.
"""
