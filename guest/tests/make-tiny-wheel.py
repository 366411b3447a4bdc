"""Writes a tiny pure-Python wheel, fcm_tiny 1.0, into the directory given
as the first argument, and prints its path. Built with zipfile, so nothing
is fetched from a package index: the guest-image checks install it with
`pip install --no-index` (scripts/test-guest-boot.sh, tests/guest.rs)."""

import base64
import hashlib
import sys
import zipfile

out = sys.argv[1] + "/fcm_tiny-1.0-py3-none-any.whl"
files = {
    "fcm_tiny/__init__.py": "def hello():\n    return 'fcm-wheel-ok'\n",
    "fcm_tiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: fcm-tiny\nVersion: 1.0\n",
    "fcm_tiny-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: fcm-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
        z.writestr(name, data)
    record.append("fcm_tiny-1.0.dist-info/RECORD,,")
    z.writestr("fcm_tiny-1.0.dist-info/RECORD", "\n".join(record) + "\n")
print(out)
