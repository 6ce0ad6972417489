"""A moto S3 server that handles one request at a time: `python -m tests.conformance.serial_moto PORT`.

moto's stock server is threaded and implements `If-None-Match: *` / `If-Match` as check-then-write without a
lock, so two racing conditional PUTs can both succeed — real S3 evaluates the condition atomically. Race tests
need S3's real semantics, so they run against this serialized server (same moto code, no request overlap).
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple

if __name__ == "__main__":
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=False, request_handler=MotoRequestHandler)
