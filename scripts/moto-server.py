"""moto's S3-protocol server, with its conditional writes made atomic as S3's are.

The replicated staging server orders its shared log with conditional creates (`If-None-Match: *`)
and holds its leader lease with conditional updates (`If-Match`). S3, GCS and Azure decide each
such write atomically. moto checks the condition, then writes, in one of its request threads:
two creates of one key can both succeed when a thread switch falls between the check and the
write (measured: a few positions in a hundred accepted two creates with frequent switches). That
would lose a log entry in the tests, through the test server and not the staging server.

This launcher serialises moto's conditional writes (any `PUT` or multipart completion that
carries `If-None-Match` or `If-Match`), then runs moto's own command line unchanged:

    python scripts/moto-server.py -H 127.0.0.1 -p 0

Unconditional requests run concurrently, as before.
"""

import sys
import threading

try:
    from moto.s3.responses import S3Response
    from moto.server import main
except ImportError as e:  # pragma: no cover - reported to the test that starts it
    sys.exit(f"COMPONENT MISSING: moto[server] is not importable by {sys.executable}: {e}")

_CONDITIONAL = threading.Lock()


def _atomic(method):
    def run(self, *args, **kwargs):
        if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
            with _CONDITIONAL:
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    return run


for _name in ("put_object", "_key_response_post"):
    if not callable(getattr(S3Response, _name, None)):
        sys.exit(f"COMPONENT MISSING: this moto has no S3Response.{_name} to make atomic")
    setattr(S3Response, _name, _atomic(getattr(S3Response, _name)))

if __name__ == "__main__":
    main(sys.argv[1:])
