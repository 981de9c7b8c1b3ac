"""After training: model artifacts (export), compression, and the inference server.

``artifact`` writes and reads the model directory (safetensors weights + JSON); ``inputs``
turns request bodies into arrays (pure); ``batching`` groups concurrent requests into one
forward pass; ``server`` is the HTTP front end.
"""
