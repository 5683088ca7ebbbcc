"""Helpers shared by the fake GC and GC client tests: tokens, valid requests,
a self-signed certificate and a Config pointing at a FakeGc."""

import datetime
import ipaddress

from twisted.internet import reactor

from mc import config as mc_config
from mc.ac.identity import StaticIdentity
from mc.gc.gcclient import GrpcGcClient
from mc.proto import gc_mc_pb2
from tests.configs import PARTICIPANT_ENV

TOKEN = "test-service-token"
OTHER_TOKEN = "second-accepted-token"


def register_request(**overrides):
    fields = dict(id="mc-test-1", region="us-east-1", grpc_endpoint="http://mc.example:50052",
                  webtransport_endpoint="https://mc.example:4433", max_meetings=10,
                  max_participants=100)
    fields.update(overrides)
    return gc_mc_pb2.RegisterMCRequest(**fields)


def capacity(**overrides):
    fields = dict(max_meetings=10, current_meetings=2, max_participants=100,
                  current_participants=7)
    fields.update(overrides)
    return gc_mc_pb2.ControllerCapacity(**fields)


def fast_request(controller_id="mc-test-1", **overrides):
    fields = dict(controller_id=controller_id, capacity=capacity(),
                  health=gc_mc_pb2.HEALTHY)
    fields.update(overrides)
    return gc_mc_pb2.FastHeartbeatRequest(**fields)


def comprehensive_request(controller_id="mc-test-1", **overrides):
    fields = dict(controller_id=controller_id, capacity=capacity(), health=gc_mc_pb2.DEGRADED,
                  cpu_usage_percent=12.5, memory_usage_percent=40.25)
    fields.update(overrides)
    return gc_mc_pb2.ComprehensiveHeartbeatRequest(**fields)


def self_signed_cert():
    """A throwaway (cert_pem, key_pem) valid for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-gc")])
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - Python 3.10
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def gc_config(gc_url, ca_file=None, token=TOKEN):
    """A Config for the MC whose GC is ``gc_url``, built the way the daemon builds it."""
    flags = {"gc-url": gc_url, "insecure-no-auth": True, "grpc-listen": "127.0.0.1:50052"}
    if ca_file is not None:
        flags["gc-ca-file"] = str(ca_file)
    return mc_config.load(flags, {"MC_SERVICE_TOKEN": token, **PARTICIPANT_ENV})


def static_client(config, **kw):
    """A GrpcGcClient sending the config's static service token."""
    return GrpcGcClient(config, StaticIdentity(config.service_token), reactor, **kw)
