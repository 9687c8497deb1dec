"""A real WebDAV server (wsgidav on cheroot) for the remote tests:

    python tests/webdav_server.py ROOT PORT USER PASSWORD
"""
import sys

from cheroot import wsgi
from wsgidav.wsgidav_app import WsgiDAVApp

root, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
app = WsgiDAVApp({
    "host": "127.0.0.1", "port": port, "provider_mapping": {"/": root}, "verbose": 1, "logging": {"enable": False},
    "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
    "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
})
server = wsgi.Server(("127.0.0.1", port), app)
print("serving", flush=True)
server.start()
