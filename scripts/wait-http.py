#!/usr/bin/env python3
"""Wait (up to 3 minutes) until http://127.0.0.1:PORT/PATH answers with anything but 503; exit 1
if it never does. 503 means still loading (`suanli serve`'s `/ready` and API routes, and
llama-server's, answer it while the model loads). Used by the scripts that start `suanli serve`
or another server in the background."""
import sys
import time
import urllib.error
import urllib.request

port, path = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/health"
for _ in range(900):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError as e:
        if e.code != 503:
            sys.exit(0)  # it answers, if only with an error status
        time.sleep(0.2)
    except Exception:
        time.sleep(0.2)
sys.exit(f"nothing answered on port {port}")
