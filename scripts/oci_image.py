#!/usr/bin/env python3
"""Assembles one container image archive from a dynamically linked binary, without a daemon.

The image holds the binary, the shared libraries `ldd` names (copied from this machine, at the
paths `ldd` prints), a CA bundle, /etc/passwd and /etc/group naming the user the image runs as,
/etc/nsswitch.conf and a world-writable /tmp. For every Debian package those files come from, its
copyright file and its dpkg record (/var/lib/dpkg/status.d/<package>, the layout of the distroless
images, which image scanners read) go in too, with this machine's /etc/os-release.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also carries a
docker-archive manifest.json, as `docker save` writes it, so that `docker load` (old and new),
`podman load`, `ctr images import` and `skopeo copy oci-archive:...` all read it. It is
reproducible: every mtime is --created (default SOURCE_DATE_EPOCH, else 0), every owner numeric,
entries sorted, JSON canonical, gzip without a name or time; the same inputs give the same digest.

Called by scripts/build-images.sh, which knows what each vault-dr image runs; this file knows the
format. Standard library only. Prints the manifest digest (what a registry names the image by).
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# ELF e_machine -> OCI architecture, for the binaries vault-dr is built for.
ELF_ARCH = {62: "amd64", 183: "arm64"}
CA_BUNDLE_IN_IMAGE = "etc/ssl/certs/ca-certificates.crt"
# The Debian package that generates /etc/ssl/certs/ca-certificates.crt.
CA_PACKAGE = "ca-certificates"


def die(message):
    print(f"oci_image.py: {message}", file=sys.stderr)
    sys.exit(1)


class HashingWriter:
    """A write-only file that passes bytes on and keeps their sha256 and count."""

    def __init__(self, inner):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def tell(self):
        return self.size

    def flush(self):
        self.inner.flush()

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def canonical(obj):
    """The one serialisation of a JSON document, so that equal documents have equal digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def architecture(binary):
    with open(binary, "rb") as f:
        header = f.read(20)
    if header[:4] != b"\x7fELF":
        die(f"{binary} is not an ELF executable")
    order = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], order)
    if machine not in ELF_ARCH:
        die(f"{binary}: ELF machine {machine} is not one of {sorted(ELF_ARCH)}")
    return ELF_ARCH[machine]


def shared_libraries(binary):
    """(path in the image, file on this machine) for every library the loader maps."""
    run = subprocess.run(["ldd", binary], capture_output=True, text=True)
    text = run.stdout + run.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if run.returncode != 0:
        die(f"ldd {binary} failed: {text.strip()}")
    libs = []
    for line in run.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            die(f"ldd {binary}: {line}")
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
        # the vDSO ("linux-vdso.so.1 (0x...)") is the kernel's, not a file.
        m = re.match(r"^(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append((m.group(1).lstrip("/"), os.path.realpath(m.group(1))))
    if not libs:
        die(f"ldd {binary} named no library: {text.strip()}")
    return libs


def debian_package(path):
    """The Debian package owning `path` (as ldd printed it, or its real path), or None."""
    if not shutil.which("dpkg-query"):
        return None
    for candidate in dict.fromkeys([path, os.path.realpath(path)]):
        run = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if run.returncode == 0:
            # "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"
            return run.stdout.split(":", 1)[0].strip()
    return None


class TarTree:
    """Files and directories by path, written as one deterministic tar (the image's root file
    system, and the archive around it)."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def directory(self, path, mode=0o755, uid=0, gid=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self.entries.setdefault(parent, ("dir", 0o755, 0, 0, None))
        self.entries[path.strip("/")] = ("dir", mode, uid, gid, None)

    def file(self, path, mode, source=None, data=None):
        """A root-owned file, its content from `source` (a path here) or `data` (bytes)."""
        path = path.strip("/")
        if "/" in path:
            self.directory(os.path.dirname(path))
        content = source if source is not None else data
        if path in self.entries and self.entries[path][4] != content:
            die(f"two different files for /{path}")
        self.entries[path] = ("file", mode, 0, 0, content)

    def write(self, out):
        """Writes the tar to `out` and returns (diff_id, size) of the uncompressed stream."""
        raw = HashingWriter(out)
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, uid, gid, content = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = self.mtime
                info.mode = mode
                info.uid, info.gid = uid, gid
                # Numeric owners only: an unpacking tool must not map names through its own
                # /etc/passwd.
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif isinstance(content, bytes):
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    info.size = os.path.getsize(content)
                    with open(content, "rb") as f:
                        tar.addfile(info, f)
        return raw.digest(), raw.size


def root_filesystem(args, mtime):
    layer = TarTree(mtime)
    uid, gid = (int(x) for x in args.user.split(":"))
    # root keeps its name for whatever looks uid 0 up (kubectl debug's tools, a copied-in shell).
    layer.file("etc/passwd", 0o644, data=(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"{args.user_name}:x:{uid}:{gid}:{args.user_name}:/nonexistent:/sbin/nologin\n").encode())
    layer.file("etc/group", 0o644, data=f"root:x:0:\n{args.user_name}:x:{gid}:\n".encode())
    # glibc resolves names through NSS: files (the pod's /etc/hosts) then DNS (its resolv.conf).
    layer.file("etc/nsswitch.conf", 0o644, data=b"passwd: files\ngroup: files\nhosts: files dns\n")
    layer.directory("tmp", mode=0o1777)
    layer.file(args.install_path, 0o755, source=os.path.realpath(args.binary))

    packages = set()
    for in_image, on_host in shared_libraries(args.binary):
        layer.file(in_image, 0o755, source=on_host)
        pkg = debian_package("/" + in_image)
        if pkg:
            packages.add(pkg)
    if not os.path.isfile(args.ca_bundle):
        die(f"no CA bundle at {args.ca_bundle} (install ca-certificates, or pass --ca-bundle)")
    layer.file(CA_BUNDLE_IN_IMAGE, 0o644, source=os.path.realpath(args.ca_bundle))

    if shutil.which("dpkg-query"):
        run = subprocess.run(["dpkg-query", "-W", CA_PACKAGE], capture_output=True)
        # Debian's bundle is generated by its package (dpkg -S does not know the file); a bundle
        # of your own is no package's.
        debian_bundle = os.path.realpath("/" + CA_BUNDLE_IN_IMAGE)
        if run.returncode == 0 and os.path.realpath(args.ca_bundle) == debian_bundle:
            packages.add(CA_PACKAGE)
        for pkg in sorted(packages):
            status = subprocess.run(["dpkg-query", "-s", pkg], capture_output=True, check=True).stdout
            layer.file(f"var/lib/dpkg/status.d/{pkg}", 0o644, data=status)
            copyright = f"/usr/share/doc/{pkg}/copyright"
            if os.path.isfile(copyright):
                layer.file(f"usr/share/doc/{pkg}/copyright", 0o644, source=os.path.realpath(copyright))
        if packages and os.path.isfile("/etc/os-release"):
            layer.file("etc/os-release", 0o644, source=os.path.realpath("/etc/os-release"))
    else:
        print("oci_image.py: no dpkg here: the image carries no package records or copyright "
              "files of its libraries", file=sys.stderr)
    return layer


def blob(digest):
    """A blob's path in the layout."""
    return "blobs/sha256/" + digest.split(":", 1)[1]


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="the executable the image runs")
    p.add_argument("--install-path", required=True, help="where it goes, e.g. /usr/local/bin/vault-dr")
    p.add_argument("--ref", required=True, help="full reference, e.g. ghcr.io/vault-dr/vault-dr:0.1.0")
    p.add_argument("--out", required=True, help="the archive to write")
    p.add_argument("--user", required=True, help="UID:GID the image runs as")
    p.add_argument("--user-name", required=True, help="its name in /etc/passwd and /etc/group")
    p.add_argument("--port", action="append", default=[], help="exposed port, e.g. 8300/tcp")
    p.add_argument("--cmd", action="append", default=[], help="one default argument (repeat)")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeat)")
    p.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    p.add_argument("--created", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="seconds since the epoch for every timestamp [SOURCE_DATE_EPOCH, else 0]")
    p.add_argument("--gzip-level", type=int, default=6)
    args = p.parse_args()

    if not re.fullmatch(r"\d+:\d+", args.user):
        die(f"--user {args.user}: expected UID:GID")
    if not re.fullmatch(r"[^:/]+(?::\d+)?(?:/[^:]+)*:[\w][\w.-]{0,127}", args.ref):
        die(f"--ref {args.ref}: expected REGISTRY/REPOSITORY:TAG")
    labels = {}
    for kv in args.label:
        key, sep, value = kv.partition("=")
        if not sep:
            die(f"--label {kv}: expected KEY=VALUE")
        labels[key] = value
    created = rfc3339(args.created)
    arch = architecture(args.binary)
    layer = root_filesystem(args, args.created)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".oci-") as work:
        layer_path = os.path.join(work, "layer.tar.gz")
        with open(layer_path, "wb") as f:
            compressed = HashingWriter(f)
            # No file name, mtime 0: the gzip header holds nothing but the data's own bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                               compresslevel=args.gzip_level) as gz:
                diff_id, _ = layer.write(gz)
        layer_digest, layer_size = compressed.digest(), compressed.size

        run_config = {
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/" + CA_BUNDLE_IN_IMAGE],
            "Entrypoint": ["/" + args.install_path.strip("/")],
            "ExposedPorts": {port: {} for port in args.port},
            "WorkingDir": "/",
            "Labels": labels,
        }
        if args.cmd:
            run_config["Cmd"] = args.cmd
        config = canonical({
            "architecture": arch,
            "os": "linux",
            "created": created,
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "scripts/build-images.sh"}],
        })
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = canonical({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
        })
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = canonical({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
                # The full reference in both: podman and skopeo read the OCI one as the image's
                # name (a bare tag would become repository "localhost/<tag>"), containerd its own.
                "annotations": {
                    "io.containerd.image.name": args.ref,
                    "org.opencontainers.image.ref.name": args.ref,
                },
            }],
        })
        # docker load before 25.0 reads only this file; it names blobs by path, like docker save.
        docker_manifest = canonical([{
            "Config": blob(config_digest),
            "RepoTags": [args.ref],
            "Layers": [blob(layer_digest)],
        }])

        archive = TarTree(args.created)
        archive.file("oci-layout", 0o644, data=canonical({"imageLayoutVersion": "1.0.0"}))
        archive.file("index.json", 0o644, data=index)
        archive.file("manifest.json", 0o644, data=docker_manifest)
        archive.file(blob(config_digest), 0o644, data=config)
        archive.file(blob(manifest_digest), 0o644, data=manifest)
        archive.file(blob(layer_digest), 0o644, source=layer_path)
        partial = os.path.join(work, "image.tar")
        with open(partial, "wb") as f:
            archive.write(f)
        os.replace(partial, args.out)
    print(manifest_digest)


if __name__ == "__main__":
    main()
