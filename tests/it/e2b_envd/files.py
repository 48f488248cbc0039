"""files: write/read/list/watch/rename/remove/make_dir/exists, owners and modes, signed URLs,
gzip, octet-stream uploads."""

import gzip as gz
import io
import time

from e2b import FileType, FilesystemEventType
from e2b.exceptions import NotFoundException

import sdk

sbx = sdk.sandbox()
fs = sbx.files

info = fs.write("notes/a.txt", "alpha")  # relative: the user's home
assert info.path == "/home/user/notes/a.txt" and info.name == "a.txt", info
assert fs.read("/home/user/notes/a.txt") == "alpha"
assert fs.read("notes/a.txt", format="bytes") == b"alpha"

entry = fs.get_info("notes/a.txt")
assert entry.type == FileType.FILE and entry.size == 5, entry
assert (entry.owner, entry.group, entry.mode, entry.permissions) == (
    "user", "user", 0o644, "-rw-r--r--"), entry
assert entry.modified_time is not None
d = fs.get_info("notes")
assert d.type == FileType.DIR and d.owner == "user" and d.permissions == "drwxr-xr-x", d

r = fs.write("/tmp/owned-by-root", "x", user="root")
assert fs.get_info("/tmp/owned-by-root").owner == "root"

# Several files at once: each part's filename is its path, directories kept.
fs.write_files([
    {"path": "/tmp/multi/one.txt", "data": "1"},
    {"path": "/tmp/multi/deep/two.txt", "data": "22"},
])
names = [(e.name, e.type) for e in fs.list("/tmp/multi", depth=2)]
assert names == [("deep", FileType.DIR), ("two.txt", FileType.FILE), ("one.txt", FileType.FILE)], names

assert fs.exists("notes/a.txt") and not fs.exists("notes/missing")
assert fs.make_dir("/tmp/made/inner") is True
assert fs.make_dir("/tmp/made/inner") is False
assert fs.get_info("/tmp/made").owner == "user"
moved = fs.rename("notes/a.txt", "notes/b.txt")
assert moved.path == "/home/user/notes/b.txt" and not fs.exists("notes/a.txt"), moved
fs.remove("notes/b.txt")
assert not fs.exists("notes/b.txt")
try:
    fs.read("notes/b.txt")
    raise AssertionError("read a removed file")
except NotFoundException:
    pass

# Symbolic links report their target.
sbx.commands.run("ln -s /tmp/multi/one.txt /tmp/link")
link = fs.get_info("/tmp/link")
assert link.symlink_target == "/tmp/multi/one.txt", link

# gzip both ways: compressed download, octet-stream upload with Content-Encoding gzip.
fs.write("/tmp/big.txt", "z" * 100_000)
assert fs.read("/tmp/big.txt", gzip=True) == "z" * 100_000
fs.write("/tmp/gz-upload.txt", "compressed upload", gzip=True)
assert fs.read("/tmp/gz-upload.txt") == "compressed upload"
fs.write("/tmp/stream-upload.bin", io.BytesIO(b"\x00\x01binary"))  # file-like: octet-stream
assert fs.read("/tmp/stream-upload.bin", format="bytes") == b"\x00\x01binary"
assert fs.get_info("/tmp/stream-upload.bin").owner == "user"

# The polled watcher (sync SDK: CreateWatcher / GetWatcherEvents / RemoveWatcher).
fs.make_dir("/tmp/watched")
w = fs.watch_dir("/tmp/watched")
fs.write("/tmp/watched/new.txt", "hello")
fs.rename("/tmp/watched/new.txt", "/tmp/watched/renamed.txt")
fs.remove("/tmp/watched/renamed.txt")
seen = []
deadline = time.monotonic() + 30
want = {("new.txt", FilesystemEventType.CREATE), ("new.txt", FilesystemEventType.WRITE),
        ("new.txt", FilesystemEventType.RENAME), ("renamed.txt", FilesystemEventType.REMOVE)}
while time.monotonic() < deadline and not want <= {(e.name, e.type) for e in seen}:
    seen += w.get_new_events()
    time.sleep(0.2)
assert want <= {(e.name, e.type) for e in seen}, seen
w.stop()

# Signed URLs: the SDK's signature opens the file without the header; a forged one does not.
fs.write("/tmp/signed.txt", "signed content")
url = sbx.download_url("/tmp/signed.txt")
assert "signature=v1_" in url, url
assert sdk.fetch(url) == (200, b"signed content")
url = sbx.download_url("/tmp/signed.txt", use_signature_expiration=600)
assert sdk.fetch(url) == (200, b"signed content")
forged = url.replace("signature=v1_", "signature=v1_A")
status, _ = sdk.fetch(forged)
assert status == 401, "a forged signature was accepted"
# A signature for another path does not open this one.
other = sbx.download_url("/tmp/big.txt").replace("%2Fbig.txt", "%2Fsigned.txt")
status, _ = sdk.fetch(other)
assert status == 401, "a signature for another path was accepted"
up = sbx.upload_url("/tmp/uploaded-by-url.txt")
boundary = "sbxboundary"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\nvia url\r\n--{boundary}--\r\n").encode()
status, _ = sdk.fetch(up, "POST", body,
                      {"Content-Type": f"multipart/form-data; boundary={boundary}"})
assert status == 200, status
assert fs.read("/tmp/uploaded-by-url.txt") == "via url"
print("files ok")
