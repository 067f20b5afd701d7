"""``mamba-asr serve``: live streaming over WebSocket, an OpenAI-compatible transcription API and
a browser page, on Starlette and uvicorn (``pip install "mamba-asr[serve]"``).

``app.create_app(engine, config)`` is the ASGI app, ``app.run`` serves it; ``engine.Engine``
wraps a PyTorch or onnxruntime model; ``scheduler.Scheduler`` decodes the open streams
together; ``protocol`` is the WebSocket protocol and ``openai_api`` the HTTP one. See
docs/serving.md.
"""
