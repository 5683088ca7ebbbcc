from setuptools import setup

setup(
    name="mc",
    version="0.1.0",
    description="Meeting Controller: hosts the meetings a Global Controller assigns",
    python_requires=">=3.10",
    packages=["mc", "mc.proto", "mc.gc", "mc.redis", "mc.participants", "mc.ops", "mc.mh",
              "mc.ac", "mc.testing",
              "twisted.plugins"],
    package_data={"mc.redis": ["lua/*.lua"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.3",
        # Exact minor: mc/redis/connection.py subclasses its factories and reads the
        # private Sentinel internals of 1.6.
        "txredisapi~=1.6.0",
        # Generated modules check grpcio >= the generator's version.
        "grpcio>=1.85.1,<2",
        "protobuf>=7.35.1,<8",
        "psutil>=5.9",
        "zope.interface>=6",
        # The /metrics exposition format, without reimplementing it.
        "prometheus_client>=0.20",
        # A C reply parser for txredisapi: the store's round trips are the hot path.
        "hiredis>=2",
        # QUIC, TLS 1.3 and HTTP/3 with WebTransport, sans-I/O: the reactor drives it.
        # Pinned exactly: mc/participants/engine.py reads its private attributes
        # (checked at start-up); bench/results.md says why not qh3.
        "aioquic==1.7.2",
        # Meeting tokens: JWS signature and claim checks, EdDSA and ES256 via cryptography.
        "PyJWT[crypto]>=2.8",
        "cryptography>=42",
        # W3C trace context (issue 20): the propagator parses and writes
        # traceparent/tracestate instead of a hand parser, the SDK gives the
        # MC span ids of its own (the API alone only passes the caller's on),
        # and the OTLP/gRPC exporter sends spans when OTEL_EXPORTER_OTLP_ENDPOINT
        # is set (over the grpcio already used).
        "opentelemetry-api>=1.30,<2",
        "opentelemetry-sdk>=1.30,<2",
        "opentelemetry-exporter-otlp-proto-grpc>=1.30,<2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2",
            # Property tests for hostile input and fencing interleavings.
            "hypothesis>=6.100",
            # Must match the grpcio that the committed modules were generated for.
            "grpcio-tools==1.85.1",
            "ruff",
            # Self-signed certificates for the TLS tests.
            "cryptography",
            # deploy/kubernetes/ checked offline: it ships the Kubernetes API's JSON schemas.
            "kubernetes-validate>=1.30",
        ],
        # qh3 2.x: its compiled QUIC core drives the participant benchmark's load
        # generators (MC_QUIC_ENGINE=qh3), and the MC on it is measured side by side.
        "bench": ["redis>=5", "pyinstrument", "py-spy", "qh3==2.1.0"],
    },
    # The drain helper by its full path (<prefix>/bin/mc-drain): the preStop hook and
    # upgrades need no python on the PATH.
    entry_points={"console_scripts": ["mc-drain = mc.ops.drain:main"]},
    # The tac file, beside the virtualenv's bin/: twistd -ny <prefix>/share/mc/mc.tac
    data_files=[("share/mc", ["tac/mc.tac"])],
    zip_safe=False,
)
