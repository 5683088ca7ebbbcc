from setuptools import setup

setup(
    name="mc",
    version="0.1.0",
    description="Meeting Controller: hosts the meetings a Global Controller assigns",
    python_requires=">=3.10",
    packages=["mc", "mc.proto", "mc.testing", "twisted.plugins"],
    package_data={"mc": ["lua/*.lua"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.3",
        "txredisapi>=1.4.10",
        # Generated modules check grpcio >= the generator's version.
        "grpcio>=1.85.1,<2",
        "protobuf>=7.35.1,<8",
        "psutil>=5.9",
        "zope.interface>=6",
        # The /metrics exposition format, without reimplementing it.
        "prometheus_client>=0.20",
        # A C reply parser for txredisapi: the store's round trips are the hot path.
        "hiredis>=2",
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
        ],
        "bench": ["redis>=5", "pyinstrument", "py-spy"],
    },
    zip_safe=False,
)
