"""The server's tests need its packages (the ``serve`` extra); without them they skip."""

import pytest

pytest.importorskip("uvicorn", reason='the server needs pip install "mamba-asr[serve]"')
pytest.importorskip("websockets", reason='the server needs pip install "mamba-asr[serve]"')
pytest.importorskip("starlette", reason='the server needs pip install "mamba-asr[serve]"')
