"""Ed25519 signatures on detector bundles: checksums catch accidents, signatures catch adversaries.

A bundle's ``SHA256SUMS`` lists the hash of every file that decides a verdict (the manifest,
with the threshold, the configurations and the feature names; the model file; the reference
images and the LR surrogate when there are any). ``SIGNATURE`` signs exactly those bytes, after a domain prefix, so
changing any file, or rewriting ``SHA256SUMS`` to match, breaks the signature.

Keys are files: ``raydetect keygen --out KEY`` writes the private key (PKCS#8 PEM, mode 0600)
to ``KEY`` and the public key (SubjectPublicKeyInfo PEM) to ``KEY.pub``. A public key may also
be given as the base64 of its 32 raw bytes. ``RAYDETECT_TRUSTED_KEYS`` names a file of trusted
public keys (PEM blocks, or one base64 key a line, ``#`` comments allowed); several files are
separated by ``os.pathsep``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raydetect.errors import RaydetectError

SIGNATURE = "SIGNATURE"
DOMAIN = b"raydetect-detector-bundle-signature-v1\n"
TRUSTED_KEYS_ENV = "RAYDETECT_TRUSTED_KEYS"
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)

PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike[str]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


def generate_key(path: str | os.PathLike[str], overwrite: bool = False) -> tuple[str, str, str]:
    """Write a new private key to ``path`` and its public key to ``path.pub``; returns (private, public, key id)."""
    priv_path = os.fspath(path)
    pub_path = priv_path + ".pub"
    if not overwrite:
        for p in (priv_path, pub_path):
            if os.path.exists(p):
                raise RaydetectError(f"{p} exists; refusing to overwrite a key (pass --force to replace it)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    parent = os.path.dirname(os.path.abspath(priv_path))
    os.makedirs(parent, exist_ok=True)
    if overwrite and os.path.exists(priv_path):
        os.remove(priv_path)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    with open(pub_path, "wb") as f:
        f.write(public)
    return priv_path, pub_path, key_id(key.public_key())


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (as ``raydetect keygen`` writes it)."""
    try:
        with open(os.fspath(path), "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RaydetectError(f"cannot read signing key {os.fspath(path)}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise RaydetectError(f"{os.fspath(path)} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RaydetectError(f"{os.fspath(path)} is not an Ed25519 key; make one with `raydetect keygen`")
    return key


def parse_public_keys(data: bytes, source: str = "key") -> list[Ed25519PublicKey]:
    """Every public key in ``data``: PEM blocks, else one base64 raw key a line."""
    keys: list[Ed25519PublicKey] = []
    blocks = _PEM.findall(data)
    try:
        for block in blocks:
            key = serialization.load_pem_public_key(block)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            keys.append(key)
        if not blocks:
            for line in data.decode("ascii").splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(line, validate=True)))
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error) as exc:
        raise RaydetectError(f"{source} holds no valid Ed25519 public key: {exc}") from None
    if not keys:
        raise RaydetectError(f"{source} holds no public key")
    return keys


def public_keys(items: Iterable[PublicKeyLike]) -> list[Ed25519PublicKey]:
    """Public keys from key objects, PEM/base64 bytes or files."""
    keys: list[Ed25519PublicKey] = []
    for item in items:
        if isinstance(item, Ed25519PublicKey):
            keys.append(item)
        elif isinstance(item, bytes):
            keys += parse_public_keys(item)
        else:
            path = os.fspath(item)
            try:
                with open(path, "rb") as f:
                    keys += parse_public_keys(f.read(), path)
            except OSError as exc:
                raise RaydetectError(f"cannot read trusted key {path}: {exc.strerror or exc}") from None
    return keys


def trusted_from_env() -> list[Ed25519PublicKey]:
    """The keys of the files ``RAYDETECT_TRUSTED_KEYS`` names ([] when unset)."""
    value = os.environ.get(TRUSTED_KEYS_ENV, "").strip()
    return public_keys([p for p in value.split(os.pathsep) if p]) if value else []


@dataclass(frozen=True)
class Signature:
    key_id: str
    public_key: Ed25519PublicKey
    signature: bytes


def sign(checksums: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``SIGNATURE`` file for a bundle whose ``SHA256SUMS`` holds ``checksums``."""
    pub = key.public_key()
    record = {
        "algorithm": "ed25519", "signs": "SHA256SUMS", "key_id": key_id(pub),
        "public_key": base64.b64encode(_raw(pub)).decode(), "signature": base64.b64encode(key.sign(DOMAIN + checksums)).decode(),
    }  # fmt: skip
    return (json.dumps(record, indent=2) + "\n").encode()


def read_signature(data: bytes, where: str) -> Signature:
    try:
        record = json.loads(data)
        if record.get("algorithm") != "ed25519":
            raise ValueError(f"algorithm {record.get('algorithm')!r}")
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(record["public_key"], validate=True))
        return Signature(str(record["key_id"]), pub, base64.b64decode(record["signature"], validate=True))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise RaydetectError(f"{where}: unreadable {SIGNATURE} file ({exc})") from None


def verify(checksums: bytes, signature: Signature, trusted: list[Ed25519PublicKey], where: str) -> str:
    """The id of the trusted key whose signature over ``checksums`` verifies; else a one-line error."""
    for key in trusted:
        try:
            key.verify(signature.signature, DOMAIN + checksums)
            return key_id(key)
        except InvalidSignature:
            continue
    ids = {key_id(k) for k in trusted}
    if key_id(signature.public_key) in ids:
        raise RaydetectError(f"{where}: the signature does not verify; the bundle's files changed after it was signed")
    raise RaydetectError(f"{where} is signed by key {signature.key_id}, which is not a trusted key ({', '.join(sorted(ids))})")


def self_consistent(checksums: bytes, signature: Signature) -> bool:
    """Whether the signature verifies against the key it names (no trust: it only catches accidents)."""
    try:
        signature.public_key.verify(signature.signature, DOMAIN + checksums)
        return True
    except InvalidSignature:
        return False
