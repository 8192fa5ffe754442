"""The fast data plane: HTTP/1.1 on raw asyncio protocols with llhttp (httptools) parsers.

`listener.RawListener` and `forwarder.RawForwarder` implement the same narrow interfaces as the aiohttp I/O
ends (`interfaces.py`); the engine, decisions and telemetry do not know which one runs.
"""
